"""Temporary `make run`: random tiny HF models of each family -> convert -> parity table (< 1 min).

  python -m launch.demo

Builds one seeded random HF model per fixture of circuits/convert/fixtures.py (never downloads), saves it,
converts it with circuits.convert.from_hf and prints max |logit difference| and max |attention probability
difference| (HF eager attention vs our rows at every query position) in fp32. Library:
circuits.convert.parity.
"""
from __future__ import annotations

import os
import tempfile
import time

from circuits import cli


def main():
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  import transformers

  from circuits.convert import parity

  transformers.utils.logging.disable_progress_bar()
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    rows = parity.run_all(tmp)
  print(parity.table(rows, time.perf_counter() - t0))
  return 0 if all(parity.ok(r) for r in rows) else 1


if __name__ == "__main__":
  cli.run_plain(main)
