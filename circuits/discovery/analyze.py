"""Analyse a per-head table into <out>/summary.json and <out>/report.html (what `launch.analyze` runs).

    from circuits.discovery import analyze
    summary = analyze.run("runs/sweep", "runs/sweep/report", sel_threshold=30.0)

`table` is a table file (CSV/parquet), a sweep folder (<table>/revisions/*.csv) or a DataFrame. The fields
of summary.json are documented in docs/summary_fields.md; the parameters are those of
circuits.discovery.analysis.summarize (PARAMS lists them with their defaults).
"""

from __future__ import annotations

import json
from pathlib import Path

from circuits.files import atomic_write_text

# parameters of analysis.summarize exposed on the command line: (name, default, help)
PARAMS = (
    ("sel_threshold", 30.0, "classification / BOS threshold on selectivity"),
    ("induction_threshold", 50.0, "induction circuit: sel_induction >= this"),
    ("previous_threshold", 100.0, "previous-token circuit: best class previous and sel >= this"),
    ("pr_lead_k", 2.0, "PR rise: PR - 1 > k * (PR at first revision - 1)"),
    ("clamp_below_1b", False, "PR integral: count tokens < 1B as ln 1 = 0 (paper's Pythia code)"),
    ("baseline", "paper", "which selectivity baseline to analyse: paper or uniform"),
)


def define_flags() -> None:
  """Define the absl flags of PARAMS (for the binaries launch.analyze and launch.paperdata)."""
  from absl import flags
  for name, default, help_ in PARAMS:
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_)
    else:
      flags.DEFINE_enum(name, default, ["paper", "uniform"], help_)


def params_from_flags() -> dict:
  """The PARAMS values of the parsed absl flags (after define_flags())."""
  from absl import flags
  return {name: flags.FLAGS[name].value for name, _, _ in PARAMS}


def write_summary(summary: dict, out: Path) -> Path:
  """Atomically writes summary.json (sorted keys off: insertion order is the documented order)."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "summary.json"
  atomic_write_text(path, json.dumps(summary, indent=1, allow_nan=False) + "\n")
  return path


def run(table, out, ablations=None, sections=(), title="Attention-circuit discovery report", **params) -> dict:
  """Summarise `table` (path or DataFrame) and write summary.json and report.html (+ PNGs) to `out`.

  `ablations`: optional ablation table (CSV path or DataFrame). `sections`: extra report sections, or a
  callable summary -> sections. Returns the summary dict.
  """
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
