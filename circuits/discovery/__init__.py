"""Discovery: per-revision measurement tables of every attention head, and their analysis.

Modules (imported lazily; import the one you need):
  table      the per-head table contract: column names, `validate`, atomic per-revision writes, `load_table`.
  analysis   pure pandas/numpy analyses of a table (classification, BOS fraction, milestones, recall,
             PR lead, null floor, PR integral) and `summarize`.
  report     report.html with PNG figures from a table (and an optional ablation table).
  paperdata  importer of the paper's published per-head CSVs into the table format.
"""

# Measurement side (jax; loaded on first use): revisions, measure, ablate, sweep. `circuits.discovery.sweep`
# is the sweep module and is also callable: `circuits.discovery.sweep(revs, out, ...)` == sweep.sweep(...).
_LAZY = ("revisions", "measure", "ablate", "sweep")


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
