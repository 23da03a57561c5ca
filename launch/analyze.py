"""Analyse a per-head table: writes <out>/summary.json and <out>/report.html (+ PNG figures).

  python -m launch.analyze --table T --out D [--ablations A] [--sel_threshold 30 ...]

T is a table file (CSV/parquet) or a sweep folder (<T>/revisions/*.csv). Fields of summary.json are
documented in docs/summary_fields.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("table", None, "per-head table: CSV/parquet file or sweep output folder")
flags.DEFINE_string("out", None, "output folder for summary.json, report.html and PNGs")
flags.DEFINE_string("ablations", None, "optional ablation table (CSV)")
flags.DEFINE_float("sel_threshold", 30.0, "classification / BOS threshold on selectivity")
flags.DEFINE_float("induction_threshold", 50.0, "induction circuit: sel_induction >= this")
flags.DEFINE_float("previous_threshold", 100.0, "previous-token circuit: best class previous and sel >= this")
flags.DEFINE_float("pr_lead_k", 2.0, "PR rise: PR - 1 > k * (PR at first revision - 1)")
flags.DEFINE_bool("clamp_below_1b", False, "PR integral: count tokens < 1B as ln 1 = 0 (paper's Pythia code)")
flags.DEFINE_enum("baseline", "paper", ["paper", "uniform"], "which selectivity baseline to analyse")


def params_from_flags() -> dict:
  return dict(sel_threshold=FLAGS.sel_threshold, induction_threshold=FLAGS.induction_threshold,
              previous_threshold=FLAGS.previous_threshold, pr_lead_k=FLAGS.pr_lead_k,
              clamp_below_1b=FLAGS.clamp_below_1b, baseline=FLAGS.baseline)


def write_summary(summary: dict, out: Path) -> Path:
  """Atomically writes summary.json (sorted keys off: insertion order is the documented order)."""
  out.mkdir(parents=True, exist_ok=True)
  path = out / "summary.json"
  tmp = out / "summary.json.tmp"
  tmp.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")
  os.replace(tmp, path)
  return path


def run(table, out, ablations=None, sections=(), title="Attention-circuit discovery report", **params) -> dict:
  """Library entry (also used by launch.paperdata): table may be a path or a DataFrame."""
  import pandas as pd
  from circuits.discovery import analysis, report
  from circuits.discovery import table as T
  df = T.load_table(table) if not isinstance(table, pd.DataFrame) else T.validate(table)
  abl = None
  if ablations is not None:
    abl = pd.read_csv(ablations, dtype={"revision": str}) if not isinstance(ablations, pd.DataFrame) else ablations
  summary = analysis.summarize(df, ablations=abl, **params)
  if callable(sections):
    sections = sections(summary)
  out = Path(out)
  write_summary(summary, out)
  report.write_report(df, out, summary=summary, ablations=abl, sections=sections, title=title)
  return summary


def main(argv):
  del argv
  if not FLAGS.table or not FLAGS.out:
    raise app.UsageError("--table and --out are required, e.g. "
                         "python -m launch.analyze --table runs/sweep --out runs/sweep/report")
  run(FLAGS.table, FLAGS.out, FLAGS.ablations, **params_from_flags())
  print(f"wrote {Path(FLAGS.out) / 'summary.json'} and {Path(FLAGS.out) / 'report.html'}")


if __name__ == "__main__":
  cli.run(main)
