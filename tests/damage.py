"""Damaging a committed Orbax checkpoint the ways a disk or a copy does (tests/test_faults.py, tests/test_cli.py).

    files = data_files(run / "checkpoints" / "6")      # the step's OCDBT data files, smallest first
    damage(files[-1], "flip")                           # flip | zero | truncate | delete
"""

from __future__ import annotations

import os

DAMAGES = ("flip", "zero", "truncate", "delete")


def data_files(step_dir) -> list[str]:
  """The OCDBT data files of one checkpoint step's train state, sorted by size (smallest first)."""
  d = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  return sorted((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize)


def damage(path, how: str) -> None:
  """flip: one byte in the middle inverted; zero: all but the first and last 64 bytes zeroed; truncate: cut
  to half; delete: removed."""
  if how not in DAMAGES:
    raise ValueError(f"damage {how!r}: expected one of {DAMAGES}")
  if how == "delete":
    os.remove(path)
    return
  with open(path, "rb") as f:
    data = bytearray(f.read())
  if how == "flip":
    data[len(data) // 2] ^= 0xFF
  elif how == "zero":
    data[64:-64] = bytes(len(data) - 128)
  else:
    data = data[: len(data) // 2]
  with open(path, "wb") as f:
    f.write(bytes(data))
