"""The per-head table: one row per (revision, layer, head) [per model, when a `model` column is present].

Contract (a pandas DataFrame, stored as CSV; parquet is read when pandas has an engine for it):

  revision (str), step (int), tokens (float, absolute tokens seen), layer (int), head (int),
  sel_induction, sel_duplicate, sel_previous, sel_self, sel_first, sel_local   (paper-code baseline)
  the same six with suffix `_uniform`                                          (uniform baseline 1/(q+1))
  pr          exp-entropy participation ratio exp(-sum p log p), p = s^2 / sum s^2 (N = 500)
  pr_classic  (sum s^2)^2 / sum s^4
  optional: model (str), pr_2000, null_sel_p95, null_sel_p99, null_sel_max, detector scores, ...

Every contract column must be present; values may be NaN where not measured (the paper's tables have no
uniform-baseline or classic-PR values). Extra columns are kept and ignored by analyses that do not use them.

Writing is per revision and atomic (`write_revision`: temp file in the same folder + `os.replace`), so a
killed sweep leaves either a complete `<out>/revisions/<revision>.csv` or nothing (a stray temp file that
readers skip); resuming rewrites only missing revisions and `load_table` returns the same frame, in a
deterministic order (tokens, then revision, then layer, head), whatever order the revisions were written in.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import pandas as pd

from circuits import files
from circuits.errors import CircuitsError

CLASSES = ("induction", "duplicate", "previous", "self", "first", "local")
"""Head classes; `sel_<class>` is the class's selectivity (see METHODS.md for each class's target)."""

REVISION, STEP, TOKENS, LAYER, HEAD = "revision", "step", "tokens", "layer", "head"
MODEL = "model"
ID_COLUMNS = (REVISION, STEP, TOKENS, LAYER, HEAD)
SEL_COLUMNS = tuple(f"sel_{c}" for c in CLASSES)
UNIFORM_SUFFIX = "_uniform"
SEL_UNIFORM_COLUMNS = tuple(f"{c}{UNIFORM_SUFFIX}" for c in SEL_COLUMNS)
PR, PR_CLASSIC = "pr", "pr_classic"
NULL_COLUMNS = ("null_sel_p95", "null_sel_p99", "null_sel_max")
REQUIRED_COLUMNS = ID_COLUMNS + SEL_COLUMNS + SEL_UNIFORM_COLUMNS + (PR, PR_CLASSIC)
NUMERIC_COLUMNS = (TOKENS,) + SEL_COLUMNS + SEL_UNIFORM_COLUMNS + (PR, PR_CLASSIC)
INT_COLUMNS = (STEP, LAYER, HEAD)

REVISIONS_DIR = "revisions"
_TMP_MARK = files.TMP_MARK
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+=-]+$")

PathLike = Union[str, os.PathLike]


class TableError(CircuitsError, ValueError):
  """A table does not follow the contract; the message names the problem and the fix."""


def sel_columns(baseline: str = "paper") -> tuple:
  """The six selectivity columns of a baseline: 'paper' (paper-code baseline) or 'uniform'."""
  if baseline == "paper":
    return SEL_COLUMNS
  if baseline == "uniform":
    return SEL_UNIFORM_COLUMNS
  raise ValueError(f"baseline must be 'paper' or 'uniform', got {baseline!r}")


def key_columns(df: pd.DataFrame) -> list:
  """Columns that identify a row: [model,] revision, layer, head."""
  return ([MODEL] if MODEL in df.columns else []) + [REVISION, LAYER, HEAD]


def validate(df: pd.DataFrame) -> pd.DataFrame:
  """Checks `df` against the contract and returns it with canonical dtypes (a copy).

  Raises TableError naming missing columns, non-numeric values, duplicate (revision, layer, head) rows,
  or revisions whose step/tokens are not constant.
  """
  if not isinstance(df, pd.DataFrame):
    raise TableError(f"expected a pandas DataFrame, got {type(df).__name__}")
  missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
  if missing:
    raise TableError(
        f"table is missing column(s) {missing}. Every contract column must be present "
        f"(see circuits/discovery/table.py); add unmeasured ones filled with NaN, e.g. "
        f"df[{missing[0]!r}] = float('nan').")
  if df.empty:
    raise TableError("table has no rows")
  out = df.copy()
  out[REVISION] = out[REVISION].astype(str)
  if MODEL in out.columns:
    out[MODEL] = out[MODEL].astype(str)
  for c in INT_COLUMNS:
    v = pd.to_numeric(out[c], errors="coerce")
    if v.isna().any() or not np.all(np.mod(v, 1) == 0):
      raise TableError(f"column {c!r} must hold integers; found {out[c][v.isna() | (np.mod(v.fillna(0), 1) != 0)].head(3).tolist()}")
    out[c] = v.astype(np.int64)
  for c in NUMERIC_COLUMNS:
    v = pd.to_numeric(out[c], errors="coerce")
    bad = v.isna() & out[c].notna()
    if bad.any():
      raise TableError(f"column {c!r} must be numeric (NaN allowed); found {out[c][bad].head(3).tolist()}")
    out[c] = v.astype(np.float64)
  if out[TOKENS].isna().any():
    raise TableError("column 'tokens' has NaN; every revision needs its absolute token count")
  keys = key_columns(out)
  dup = out.duplicated(keys, keep=False)
  if dup.any():
    raise TableError(f"duplicate rows for {keys}: {out.loc[dup, keys].head(3).values.tolist()}; "
                     "one row per (revision, layer, head) is allowed")
  group = ([MODEL] if MODEL in out.columns else []) + [REVISION]
  per_rev = out.groupby(group)[[STEP, TOKENS]].nunique()
  bad = per_rev[(per_rev[STEP] > 1) | (per_rev[TOKENS] > 1)]
  if len(bad):
    raise TableError(f"step/tokens differ within revision(s) {bad.index.tolist()[:3]}; "
                     "each revision has one step and one token count")
  return out


def canonical_order(df: pd.DataFrame) -> pd.DataFrame:
  """Rows sorted by [model,] tokens, revision, layer, head; contract columns first, extras after, in
  their given order; a fresh RangeIndex."""
  lead = [MODEL] if MODEL in df.columns else []
  cols = lead + list(REQUIRED_COLUMNS)
  cols += [c for c in df.columns if c not in cols]
  sort = lead + [TOKENS, REVISION, LAYER, HEAD]
  return df[cols].sort_values(sort, kind="mergesort").reset_index(drop=True)


def _to_csv_bytes(df: pd.DataFrame) -> bytes:
  return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
  files.atomic_write_bytes(path, data)  # the project's one atomic writer (same temp marker)


def revision_path(out_dir: PathLike, revision: str) -> Path:
  """`<out_dir>/revisions/<revision>.csv`; the revision name must be a safe file name."""
  if not _SAFE_NAME.match(revision) or revision in (".", ".."):
    raise TableError(f"revision name {revision!r} is not a safe file name "
                     "(letters, digits and . _ + = - only); rename it before writing")
  return Path(out_dir) / REVISIONS_DIR / f"{revision}.csv"


def write_revision(df: pd.DataFrame, out_dir: PathLike) -> Path:
  """Atomically writes one revision's rows to `<out_dir>/revisions/<revision>.csv` and returns the path.

  `df` must hold exactly one revision (and at most one model). The bytes depend only on the rows, not on
  their order or on when they were written.
  """
  df = validate(df)
  revs = df[REVISION].unique()
  if len(revs) != 1:
    raise TableError(f"write_revision takes one revision's rows, got {len(revs)}: {list(revs)[:5]}")
  if MODEL in df.columns and df[MODEL].nunique() > 1:
    raise TableError("write_revision takes one model's rows; write each model to its own out_dir")
  path = revision_path(out_dir, revs[0])
  _atomic_write_bytes(path, _to_csv_bytes(canonical_order(df)))
  return path


def completed_revisions(out_dir: PathLike) -> list:
  """Revisions with a complete file under `<out_dir>/revisions/` (temp files of killed writes skipped),
  sorted by name. A sweep skips these when it resumes."""
  d = Path(out_dir) / REVISIONS_DIR
  if not d.is_dir():
    return []
  return sorted(p.name[:-4] for p in d.iterdir()
                if p.is_file() and p.name.endswith(".csv") and _TMP_MARK not in p.name)


def _read_one(path: Path) -> pd.DataFrame:
  if path.suffix == ".parquet":
    try:
      return pd.read_parquet(path)
    except ImportError as e:
      raise TableError(f"reading {path} needs a parquet engine (pyarrow); store the table as CSV "
                       "instead (table.write_table(df, 'table.csv'))") from e
  return pd.read_csv(path, dtype={REVISION: str, MODEL: str})


def load_table(path: PathLike) -> pd.DataFrame:
  """Loads a table from a CSV/parquet file, or from a sweep folder (`<dir>/revisions/*.csv`, or `*.csv`
  directly in `<dir>`), validated and in canonical order (tokens, then revision, layer, head)."""
  path = Path(path)
  if path.is_file():
    frames = [_read_one(path)]
  elif path.is_dir():
    d = path / REVISIONS_DIR if (path / REVISIONS_DIR).is_dir() else path
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".csv", ".parquet")
                   and _TMP_MARK not in p.name)
    if not files:
      raise TableError(f"no table files (*.csv) in {d}; pass a table file or a sweep output folder")
    frames = [_read_one(p) for p in files]
  else:
    raise TableError(f"table {path} does not exist; pass a CSV file or a sweep output folder")
  return canonical_order(validate(pd.concat(frames, ignore_index=True)))


def write_table(df: pd.DataFrame, path: PathLike) -> Path:
  """Atomically writes a whole table (validated, canonical order) as one CSV file."""
  path = Path(path)
  _atomic_write_bytes(path, _to_csv_bytes(canonical_order(validate(df))))
  return path


def revisions_in_order(df: pd.DataFrame) -> list:
  """Revision names ordered by tokens (then name)."""
  r = df[[REVISION, TOKENS]].drop_duplicates().sort_values([TOKENS, REVISION], kind="mergesort")
  return r[REVISION].tolist()


def split_models(df: pd.DataFrame) -> dict:
  """{model name: rows} when a `model` column is present, else {'table': df}; ordered by name."""
  if MODEL not in df.columns:
    return {"table": df}
  return {m: g.reset_index(drop=True) for m, g in sorted(df.groupby(MODEL, sort=True), key=lambda x: x[0])}
