"""Atomic file writes: the one implementation every writer of the project uses.

    atomic_write_bytes(path, data)      temp file in the same folder + flush + fsync + os.replace
    atomic_write_text(path, text)       the same, UTF-8
    atomic_write_json(path, obj, ...)   json.dumps(obj, **kw) + "\n"

A reader sees the old file or the new one, never a half-written one; a killed write leaves at most a temp
file named `<name>.tmp-<random>` (TMP_MARK) beside it, which listings skip (circuits.discovery.table) and
the next write of the same file does not mind. The folder is created when missing.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

TMP_MARK = ".tmp-"


def atomic_write_bytes(path, data: bytes) -> Path:
  """Write `data` to `path` atomically (see the module docstring); returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f"{path.name}{TMP_MARK}{secrets.token_hex(4)}"
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open(path, "w")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def atomic_write_text(path, text: str) -> Path:
  return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, **dumps_kw) -> Path:
  """json.dumps(obj, **dumps_kw) + a newline, atomically."""
  return atomic_write_text(path, json.dumps(obj, **dumps_kw) + "\n")
