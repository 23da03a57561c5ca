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


# ------------------------------------------------------------------------- the paper's text vs its data

PAPER_BOS = {  # METHODS.md F2 / the paper's text: (model, revision) -> BOS fraction (b) in percent
    ("pythia1b", "step3000"): 10.9, ("pythia1b", "step38000"): 46.1, ("pythia1b", "step143000"): 57.8,
    ("olmo", "step56000-tokens117B"): 7.4, ("olmo", "step126000-tokens264B"): 70.3,
    ("olmo", "step1454000-tokens3048B"): 80.9,
    ("olmoe", "step5000-tokens20B"): 3.5, ("olmoe", "step1220000-tokens5117B"): 75.8,
}
PAPER_F3_TOKENS_B = {"olmo": (23, 264), "olmoe": (20, 419)}  # (induction circuit, 50% BOS)


def with_rounded_pythia_tokens(df: pd.DataFrame) -> pd.DataFrame:
  """A copy of the Pythia table with `tokens` replaced by the paper's rounded list x 1e9 (token order)."""
  revs = sorted(df[T.TOKENS].unique())
  if len(revs) != len(PYTHIA_ROUNDED_TOKENS_B):
    raise ValueError(f"expected {len(PYTHIA_ROUNDED_TOKENS_B)} Pythia revisions, got {len(revs)}")
  out = df.copy()
  out[T.TOKENS] = out[T.TOKENS].map(dict(zip(revs, np.array(PYTHIA_ROUNDED_TOKENS_B) * 1e9)))
  return out


def integral_check(tables: dict, integrals: pd.DataFrame) -> pd.DataFrame:
  """Per model: max |our PR integral - integrals.csv| with the paper's options (Pythia clamp_below_1b),
  from the table's tokens and, for Pythia, from the rounded token list."""
  from circuits.discovery import analysis as A
  rows = []
  for m, df in tables.items():
    ref = integrals[integrals["model"] == m]
    variants = [("table_tokens", df)]
    if m == "pythia1b":
      variants.append(("rounded_token_list", with_rounded_pythia_tokens(df)))
    for name, d in variants:
      ours = A.pr_integral(d, clamp_below_1b=(m == "pythia1b")).merge(ref, on=[T.LAYER, T.HEAD], validate="1:1")
      diff = (ours["pr_integral"] - ours["integral"]).abs()
      rows.append({"model": m, "tokens": name, "clamp_below_1b": m == "pythia1b", "n_heads": len(ours),
                   "max_abs_diff_vs_integrals_csv": float(diff.max()),
                   "max_rel_diff_vs_integrals_csv": float((diff / ours["integral"].abs().clip(lower=1e-12)).max())})
  return pd.DataFrame(rows)


def paper_claims(summary: dict, integral_rows: Optional[pd.DataFrame] = None) -> list:
  """Checks the paper's text (METHODS.md F1-F6) against what `summary` (of the paper's own data) says.

  Returns rows {finding, paper_text, data_says, agrees}; agrees is None where the data cannot test it.
  """
  from circuits.discovery import analysis as A
  p = summary["parameters"]
  kb = A.key_bos_b(p["sel_threshold"], p["baseline"])
  kn = A.key_n_induction(p["induction_threshold"], p["baseline"])
  ms = summary["models"]
  rows = []
  for (m, rev), pct in PAPER_BOS.items():
    if m not in ms:
      continue
    tr = {r["revision"]: r for r in ms[m]["trajectory"]}
    v = 100 * tr[rev][kb]
    rows.append({"finding": "F2", "paper_text": f"{m} {rev}: BOS fraction {pct}%",
                 "data_says": f"{kb} = {v:.2f}%", "agrees": bool(abs(v - pct) < 0.05 + 1e-9)})
  for m, s in ms.items():
    fc = s["floor_check"]
    k = [x for x in fc if x.startswith("max_over_revisions_n_heads_sel_first")][0]
    rows.append({"finding": "F1", "paper_text": f"{m}: no BOS head in layers 0-1 at any revision",
                 "data_says": f"{k} = {fc[k]}", "agrees": fc[k] == 0})
  c3 = p["induction_counts"][0]
  for m, s in ms.items():
    mi = s["milestones"]
    ind = mi[f"first_revision_{kn}_at_least_{c3}"]
    bos = mi[f"first_revision_{kb}_at_least_50pct"]
    ratio = [v for k, v in mi.items() if k.startswith("tokens_ratio_")][0]
    tb = lambda x: "never" if x is None else f"{x['tokens'] / 1e9:g}B ({x['revision']})"
    first_rev = s["revisions"][0]
    censored = ind is not None and ind["revision"] == first_rev
    counts = [r[kn] for r in s["trajectory"]]
    after = counts[s["revisions"].index(ind["revision"]):] if ind else []
    sustained = bool(after) and min(after) >= c3
    note = []
    if censored:
      note.append("already at the first measured revision, so an upper bound")
    if ind and not sustained:
      note.append(f"not sustained: {kn} per revision {counts}")
    claim = PAPER_F3_TOKENS_B.get(m)
    text = (f"{m}: induction circuit (>= {c3} heads) at {claim[0]}B vs 50% BOS at {claim[1]}B; 10-20x"
            if claim else f"{m}: induction circuit forms 10-20x earlier in tokens than 50% BOS")
    ok = ratio is not None and 10 <= ratio <= 20
    if claim and ind and bos:
      ok = ok and ind["tokens"] == claim[0] * 1e9 and bos["tokens"] == claim[1] * 1e9
    rows.append({"finding": "F3", "paper_text": text,
                 "data_says": f">= {c3} induction heads first at {tb(ind)}; {kb} >= 50% first at {tb(bos)}; "
                              f"tokens ratio {ratio:.2f}" + ("; " + "; ".join(note) if note else ""),
                 "agrees": bool(ok)})
  for m, s in ms.items():
    key = [k for k in s if k.startswith("first_revision_recall_of_final")][0]
    r = s[key]
    curve = [(c["revision"], round(100 * c["tokens_fraction_of_final"], 2), c["recall_of_final_induction_circuit"])
             for c in s["recall_curve"]]
    first_pos = next(((rv, f) for rv, f, x in curve if x and x > 0), None)
    rows.append({"finding": "F4", "paper_text": f"{m}: two thirds of the final induction circuit recovered "
                                                "within 0.3-2% of training",
                 "data_says": ("recall >= 2/3 never reached" if r is None else
                               f"recall of final circuit (|S_final| = {len(s['final_induction_circuit'])}) first "
                               f">= 2/3 at {r['revision']} = {100 * r['tokens_fraction_of_final']:.2f}% of final "
                               f"tokens") + (f"; first recall > 0 at {first_pos[0]} ({first_pos[1]}%)" if first_pos else ""),
                 "agrees": r is not None and r["tokens_fraction_of_final"] <= 0.02 + 1e-12})
  for m, s in ms.items():
    k = f"k_{A.fmt(p['pr_lead_k'])}"
    frac = s[f"pr_lead_{k}_fraction_lead_ge_0_of_final_heads"]
    nrise = s[f"pr_lead_{k}_n_heads_with_pr_rise"]
    leads = [(f"L{r['layer']}_H{r['head']}", r["lead_revisions"]) for r in s["pr_lead_per_final_head"]]
    rows.append({"finding": "F5", "paper_text": f"{m}: each final induction head's PR rises at or before its "
                                                "selectivity crossing",
                 "data_says": f"pr_lead_{k}_fraction_lead_ge_0_of_final_heads = {frac}; heads with a PR rise "
                              f"(PR - 1 > {A.fmt(p['pr_lead_k'])} x first-revision value): {nrise} of {len(leads)}; "
                              f"lead_revisions per head {leads}",
                 "agrees": None if nrise == 0 else bool(frac == 1.0)})
  for m, s in ms.items():
    rows.append({"finding": "F6", "paper_text": f"{m}: null-selectivity p99 stays at 1.45-2.08x across revisions",
                 "data_says": "null_floor unavailable (the published tables have no null_sel_* columns)"
                 if not s["null_floor_available"] else
                 f"null_sel_p99 range {s['null_sel_p99_median_over_heads_min_over_revisions']:.3g}-"
                 f"{s['null_sel_p99_median_over_heads_max_over_revisions']:.3g}", "agrees": None})
  if integral_rows is not None:
    for r in integral_rows.to_dict(orient="records"):
      rows.append({"finding": "PR integral", "paper_text": f"{r['model']}: integrals.csv (paper-code formula)",
                   "data_says": f"tokens={r['tokens']}, clamp_below_1b={r['clamp_below_1b']}: max |diff| = "
                                f"{r['max_abs_diff_vs_integrals_csv']:.3g} over {r['n_heads']} heads",
                   "agrees": bool(r["max_abs_diff_vs_integrals_csv"] < 5e-3)})
  return rows
