"""Discovery: per-revision measurement tables of every attention head, and their analysis.

Modules (imported lazily; import the one you need):
  table      the per-head table contract: column names, `validate`, atomic per-revision writes, `load_table`.
  analysis   pure pandas/numpy analyses of a table (classification, BOS fraction, milestones, recall,
             PR lead, null floor, PR integral) and `summarize`.
  report     report.html with PNG figures from a table (and an optional ablation table).
  paperdata  importer of the paper's published per-head CSVs into the table format.
"""
