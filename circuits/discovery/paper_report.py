"""The paper's published per-head tables re-analysed (what `launch.paperdata` runs).

    from circuits.discovery import paper_report
    summary = paper_report.run("runs/paperdata")   # paperdata=None: ../shared/paperdata from the repo root

Writes <out>/tables/<model>.csv (our table format), <out>/summary.json, <out>/paper_claims.json (the
paper's text checked against its own data, circuits.discovery.paperdata.paper_claims) and <out>/report.html
with its PNGs (circuits.discovery.analyze.run).
"""

from __future__ import annotations

from pathlib import Path

from circuits.files import atomic_write_json


def claims_html(rows) -> tuple[str, str]:
  """(HTML of the rows that disagree or cannot be tested, HTML of all rows) of the claims table."""
  import pandas as pd
  df = pd.DataFrame(rows)
  bad = df[df["agrees"] != True]  # noqa: E712  (False and None)
  return ("<p>Rows where the data does not support the text (agrees = False) or cannot test it "
          "(agrees = None). Definitions are those of summary.json; nothing was tuned to agree.</p>"
          + bad.to_html(index=False, border=0, classes="t", na_rep="None"),
          "<p>All checks.</p>" + df.to_html(index=False, border=0, classes="t", na_rep="None"))


def run(out, paperdata=None, **params) -> dict:
  """Import the paper's tables from `paperdata`, analyse them with `params` (analyze.PARAMS), write `out`."""
  import pandas as pd
  from circuits.discovery import analyze
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
  atomic_write_json(out / "paper_claims.json", holder["claims"], indent=1)
  return summary
