"""Importer of the paper's published per-head tables (arXiv 2606.02378) into our table format.

Source: `<shared>/paperdata/{selectivity,pr,integrals}.csv` (see its README.md). The default folder is
`../shared/paperdata` relative to the repository root, found from this file's location; pass another path
to read a copy elsewhere.

Conversion (`load_paperdata`), one table per model, `model` column kept:
  tokens      tokens_B x 1e9 (absolute tokens)
  step        parsed from the revision name: Pythia `step{N}`; OLMo/OLMoE `step{N}-tokens{X}B`
  sel_<c>     selectivity.csv `cls` mapped induction -> sel_induction, duplicate-token -> sel_duplicate,
              previous-token -> sel_previous, self -> sel_self, first-token -> sel_first, local -> sel_local
              (the paper code's baseline; fp16 for OLMo/OLMoE, fp32 for Pythia)
  sel_*_uniform, pr_classic   NaN (the paper did not publish them)
  pr          pr.csv (exp-entropy PR, N = 500)

`load_integrals` reads integrals.csv (the paper-code PR integrals). `PYTHIA_ROUNDED_TOKENS_B` is the
rounded token list (billions) of the paper's Pythia trajectory file, which its integrals used.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from circuits.discovery import table as T

MODELS = ("pythia1b", "olmo", "olmoe")
CLASS_MAP = {"induction": "sel_induction", "duplicate-token": "sel_duplicate",
             "previous-token": "sel_previous", "self": "sel_self", "first-token": "sel_first",
             "local": "sel_local"}
PYTHIA_ROUNDED_TOKENS_B = (0.002, 0.008, 0.033, 0.134, 0.536, 1.073, 6.291, 20.971, 79.691, 299.892)
"""Pythia token list (billions) of the paper's `pythia_1b_phase1_trajectory.json`, rounded to 3 decimals
(truncated, e.g. 79.691776 -> 79.691); the paper's Pythia PR integrals use it."""

_PYTHIA_REV = re.compile(r"^step(\d+)$")
_OLMO_REV = re.compile(r"^step(\d+)-tokens(\d+(?:\.\d+)?)B$")


def default_dir() -> Path:
  """`../shared/paperdata` relative to the repository root (located from this package)."""
  return Path(__file__).resolve().parents[2].parent / "shared" / "paperdata"


def parse_step(revision: str) -> int:
  """Training step from a revision name: `step143000` -> 143000; `step11000-tokens23B` -> 11000."""
  m = _PYTHIA_REV.match(revision) or _OLMO_REV.match(revision)
  if not m:
    raise ValueError(f"cannot parse a step from revision {revision!r}; expected 'step{{N}}' (Pythia) or "
                     "'step{N}-tokens{X}B' (OLMo, OLMoE)")
  return int(m.group(1))


def _dir(path) -> Path:
  p = Path(path) if path is not None else default_dir()
  if not (p / "selectivity.csv").is_file():
    raise FileNotFoundError(f"no selectivity.csv in {p}; pass the folder holding the paper's CSVs "
                            "(selectivity.csv, pr.csv, integrals.csv)")
  return p


def load_paperdata(path: Optional[Union[str, os.PathLike]] = None) -> dict:
  """{model: table} for pythia1b, olmo, olmoe, each validated, in canonical order, `model` kept."""
  d = _dir(path)
  sel = pd.read_csv(d / "selectivity.csv", dtype={"revision": str, "model": str, "cls": str})
  unknown = sorted(set(sel["cls"]) - set(CLASS_MAP))
  if unknown:
    raise ValueError(f"selectivity.csv has unknown class(es) {unknown}; known: {sorted(CLASS_MAP)}")
  sel["col"] = sel["cls"].map(CLASS_MAP)
  keys = ["model", "revision", "tokens_B", "layer", "head"]
  wide = sel.pivot_table(index=keys, columns="col", values="selectivity", aggfunc="first").reset_index()
  wide.columns.name = None
  pr = pd.read_csv(d / "pr.csv", dtype={"revision": str, "model": str})
  wide = wide.merge(pr[["model", "revision", "layer", "head", "pr"]], on=["model", "revision", "layer", "head"],
                    how="left", validate="one_to_one")
  wide[T.TOKENS] = wide["tokens_B"].astype(float) * 1e9
  wide[T.STEP] = wide[T.REVISION].map(parse_step).astype(np.int64)
  for c in T.SEL_UNIFORM_COLUMNS + (T.PR_CLASSIC,):
    wide[c] = np.nan
  wide = wide.drop(columns=["tokens_B"])
  out = {}
  for m, g in wide.groupby("model", sort=False):
    out[m] = T.canonical_order(T.validate(g))
  return {m: out[m] for m in MODELS if m in out} | {m: v for m, v in out.items() if m not in MODELS}


def load_integrals(path: Optional[Union[str, os.PathLike]] = None) -> pd.DataFrame:
  """integrals.csv: model, layer, head, integral (the paper-code PR integrals)."""
  return pd.read_csv(_dir(path) / "integrals.csv", dtype={"model": str})
