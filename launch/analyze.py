"""Analyse a per-head table: writes <out>/summary.json and <out>/report.html (+ PNG figures).

  python -m launch.analyze --table T --out D [--ablations A] [--sel_threshold 30 ...]

T is a table file (CSV/parquet) or a sweep folder (<T>/revisions/*.csv). Fields of summary.json are
documented in docs/summary_fields.md. Library: circuits.discovery.analyze.run.
"""
from __future__ import annotations

from pathlib import Path

from absl import app, flags

from circuits import cli
from circuits.discovery import analyze

FLAGS = flags.FLAGS
flags.DEFINE_string("table", None, "per-head table: CSV/parquet file or sweep output folder")
flags.DEFINE_string("out", None, "output folder for summary.json, report.html and PNGs")
flags.DEFINE_string("ablations", None, "optional ablation table (CSV)")
analyze.define_flags()


def main(argv):
  del argv
  if not FLAGS.table or not FLAGS.out:
    raise app.UsageError("--table and --out are required, e.g. "
                         "python -m launch.analyze --table runs/sweep --out runs/sweep/report")
  analyze.run(FLAGS.table, FLAGS.out, FLAGS.ablations, **analyze.params_from_flags())
  print(f"wrote {Path(FLAGS.out) / 'summary.json'} and {Path(FLAGS.out) / 'report.html'}")


if __name__ == "__main__":
  cli.run(main)
