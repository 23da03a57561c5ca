"""Import the paper's published per-head tables and run the analyses and the report on all three models.

  python -m launch.paperdata --out D [--paperdata PATH]

Writes D/tables/<model>.csv (our table format), D/summary.json, D/paper_claims.json (the paper's text
checked against its own data) and D/report.html with its PNGs. Library: circuits.discovery.paper_report.
"""
from __future__ import annotations

from pathlib import Path

from absl import app, flags

from circuits import cli
from circuits.discovery import analyze, paper_report

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "output folder")
flags.DEFINE_string("paperdata", None, "folder with the paper's CSVs (default ../shared/paperdata from the repo root)")
analyze.define_flags()


def main(argv):
  del argv
  if not FLAGS.out:
    raise app.UsageError("--out is required, e.g. python -m launch.paperdata --out runs/paperdata")
  paper_report.run(FLAGS.out, FLAGS.paperdata, **analyze.params_from_flags())
  print(f"wrote {Path(FLAGS.out) / 'report.html'}")


if __name__ == "__main__":
  cli.run(main)
