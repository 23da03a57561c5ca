"""Import the paper's published per-head tables and run the analyses and the report on all three models.

  python -m launch.paperdata --out D [--paperdata PATH]

Writes D/tables/<model>.csv (our table format), D/summary.json, D/paper_claims.json (the paper's text
checked against its own data) and D/report.html with its PNGs.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from absl import app, flags

from launch import analyze

FLAGS = flags.FLAGS
flags.DEFINE_string("paperdata", None, "folder with the paper's CSVs (default ../shared/paperdata from the repo root)")


def claims_html(rows) -> str:
  import pandas as pd
  df = pd.DataFrame(rows)
  bad = df[df["agrees"] != True]  # noqa: E712  (False and None)
  return ("<p>Rows where the data does not support the text (agrees = False) or cannot test it "
          "(agrees = None). Definitions are those of summary.json; nothing was tuned to agree.</p>"
          + bad.to_html(index=False, border=0, classes="t", na_rep="None"),
          "<p>All checks.</p>" + df.to_html(index=False, border=0, classes="t", na_rep="None"))


def run(out, paperdata=None, **params) -> dict:
  import pandas as pd
  from circuits.discovery import paperdata as P
  from circuits.discovery import table as T
  out = Path(out)
  tables = P.load_paperdata(paperdata)
  for m, df in tables.items():
    T.write_table(df, out / "tables" / f"{m}.csv")
  integ = P.integral_check(tables, P.load_integrals(paperdata))
  holder = {}

  def sections(summary):
    rows = P.paper_claims(summary, integ)
    holder["claims"] = rows
    disagree, everything = claims_html(rows)
    return [("Where the paper's text and its data disagree", disagree),
            ("The paper's claims checked against its data", everything),
            ("PR integrals vs integrals.csv", integ.to_html(index=False, border=0, classes="t"))]

  summary = analyze.run(pd.concat(tables.values(), ignore_index=True), out, sections=sections,
                        title="The paper's published tables (arXiv 2606.02378), re-analysed", **params)
  (out / "paper_claims.json").write_text(json.dumps(holder["claims"], indent=1) + "\n", encoding="utf-8")
  return summary


def main(argv):
  del argv
  if not FLAGS.out:
    raise app.UsageError("--out is required, e.g. python -m launch.paperdata --out runs/paperdata")
  run(FLAGS.out, FLAGS.paperdata, **analyze.params_from_flags())
  print(f"wrote {Path(FLAGS.out) / 'report.html'}")


if __name__ == "__main__":
  cli.run(main)
