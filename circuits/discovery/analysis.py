"""Analyses computed from the per-head table alone (pure pandas/numpy; thresholds are parameters).

Every function takes ONE model's table (see `table.py`; `summarize` splits a multi-model table by its
`model` column) and orders revisions by tokens. Definitions (METHODS.md):

- Classification: best class = argmax over the six selectivities; classified when sel_best >= sel_threshold
  (30).
- BOS fraction, two definitions, both reported: (a) best class is first-token AND classified;
  (b) sel_first >= sel_threshold whatever the best class (the paper's numbers use (b)).
- Induction circuit at a revision: heads with sel_induction >= induction_threshold (50). Previous-token
  circuit: best class previous AND sel_previous >= previous_threshold (100).
- F1 floor: the most first-token heads in layers 0-1 at any revision (0 means the floor holds).
- F3 milestones: first revision (in token order) where a condition holds; the condition need not stay true
  afterwards (the trajectory tables show whether it does).
- F4 recall: |S(t) ∩ S(final)| / |S(final)| for the induction circuit S; final = the last revision.
- F5 PR lead (operational definition): for each head of the final induction circuit, i_pr = index of the
  first revision i >= 1 where PR_i - 1 > k * (PR_0 - 1) (PR_0 at the first revision; k = pr_lead_k, 2);
  i_sel = index of the first revision where sel_induction >= induction_threshold; lead = i_sel - i_pr in
  revisions (>= 0: PR rose at or before the selectivity crossing). A head whose PR never rises has no lead
  (NaN) and counts as lead < 0 in `fraction_lead_ge_0_of_final_heads`.
- F6 null floor: from columns null_sel_p95/p99/max when present (per revision: median and max over rows,
  and heads with sel_best above their null p99); reported as unavailable otherwise.
- PR integral per head: trapz(max(PR - 1, 0), ln(tokens / 1e9)) over the revisions; with
  clamp_below_1b=True tokens below 1B count as ln 1 = 0 (the paper's Pythia code; compatibility only).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from circuits.discovery import table as T

# ------------------------------------------------------------------------------------------- naming


def fmt(x) -> str:
  """A threshold as it appears in keys: 30.0 -> '30', 0.5 -> '0.5'."""
  return f"{float(x):g}"


def first_col(baseline: str = "paper") -> str:
  return T.sel_columns(baseline)[T.CLASSES.index("first")]


def key_bos_b(sel_threshold=30.0, baseline="paper") -> str:
  """Key of BOS fraction (b): fraction of heads with sel_first >= threshold."""
  return f"bos_fraction_{first_col(baseline)}_ge_{fmt(sel_threshold)}"


def key_bos_a(sel_threshold=30.0, baseline="paper") -> str:
  """Key of BOS fraction (a): fraction of heads whose best class is first-token and sel_best >= threshold."""
  suffix = T.UNIFORM_SUFFIX if baseline == "uniform" else ""
  return f"bos_fraction_best_class_first{suffix}_and_sel_best_ge_{fmt(sel_threshold)}"


def key_n_induction(induction_threshold=50.0, baseline="paper") -> str:
  col = T.sel_columns(baseline)[T.CLASSES.index("induction")]
  return f"n_induction_heads_{col}_ge_{fmt(induction_threshold)}"


def key_n_previous(previous_threshold=100.0, baseline="paper") -> str:
  suffix = T.UNIFORM_SUFFIX if baseline == "uniform" else ""
  return f"n_previous_token_heads_best_class_previous{suffix}_and_sel_ge_{fmt(previous_threshold)}"


# ------------------------------------------------------------------------------------ classification


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
  if T.MODEL in df.columns and df[T.MODEL].nunique() > 1:
    raise T.TableError("this analysis takes one model's rows; split with table.split_models(df) "
                       "or call summarize(), which analyses each model separately")
  return df.sort_values([T.TOKENS, T.REVISION, T.LAYER, T.HEAD], kind="mergesort").reset_index(drop=True)


def classify(df: pd.DataFrame, sel_threshold: float = 30.0, baseline: str = "paper") -> pd.DataFrame:
  """Adds `best_class` (argmax over the six sel columns; None when all are NaN), `sel_best` and
  `classified` (sel_best >= sel_threshold). Ties go to the first class in table.CLASSES order."""
  cols = list(T.sel_columns(baseline))
  out = df.copy()
  vals = out[cols].to_numpy(dtype=np.float64)
  allnan = np.all(np.isnan(vals), axis=1)
  filled = np.where(np.isnan(vals), -np.inf, vals)
  idx = np.argmax(filled, axis=1)
  best = np.array(T.CLASSES, dtype=object)[idx]
  best[allnan] = None
  out["best_class"] = best
  out["sel_best"] = np.where(allnan, np.nan, filled[np.arange(len(out)), idx])
  out["classified"] = out["sel_best"].to_numpy() >= sel_threshold
  return out


def _revision_frame(df: pd.DataFrame) -> pd.DataFrame:
  r = df[[T.REVISION, T.STEP, T.TOKENS]].drop_duplicates(T.REVISION)
  return r.sort_values([T.TOKENS, T.REVISION], kind="mergesort").reset_index(drop=True)


def trajectory(df: pd.DataFrame, sel_threshold: float = 30.0, induction_threshold: float = 50.0,
               previous_threshold: float = 100.0, baseline: str = "paper") -> pd.DataFrame:
  """Per revision (token order): n_heads, BOS fraction (a) and (b) with their counts, the number of
  induction and previous-token heads, classified heads and heads per best class (F2 and the circuits)."""
  c = classify(_ordered(df), sel_threshold, baseline)
  sel = dict(zip(T.CLASSES, T.sel_columns(baseline)))
  c["_bos_b"] = c[sel["first"]].to_numpy() >= sel_threshold
  c["_bos_a"] = (c["best_class"] == "first").to_numpy() & c["classified"].to_numpy()
  c["_ind"] = c[sel["induction"]].to_numpy() >= induction_threshold
  c["_prev"] = (c["best_class"] == "previous").to_numpy() & (c[sel["previous"]].to_numpy() >= previous_threshold)
  g = c.groupby(T.REVISION, sort=False)
  out = _revision_frame(c).set_index(T.REVISION)
  out["n_heads"] = g.size()
  t = fmt(sel_threshold)
  out[f"n_heads_{sel['first']}_ge_{t}"] = g["_bos_b"].sum()
  out[key_bos_b(sel_threshold, baseline)] = g["_bos_b"].mean()
  out[f"n_heads_best_class_first_and_sel_best_ge_{t}"] = g["_bos_a"].sum()
  out[key_bos_a(sel_threshold, baseline)] = g["_bos_a"].mean()
  out[key_n_induction(induction_threshold, baseline)] = g["_ind"].sum()
  out[key_n_previous(previous_threshold, baseline)] = g["_prev"].sum()
  out[f"n_heads_classified_sel_best_ge_{t}"] = g["classified"].sum()
  for cls in T.CLASSES:
    out[f"n_heads_best_class_{cls}_and_sel_best_ge_{t}"] = (
        c.assign(_x=(c["best_class"] == cls) & c["classified"]).groupby(T.REVISION, sort=False)["_x"].sum())
  out = out.reset_index()
  for col in out.columns[3:]:
    if col.startswith("n_"):
      out[col] = out[col].astype(np.int64)
  return out


# ------------------------------------------------------------------------------------------- F1


def per_layer_counts(df: pd.DataFrame, sel_threshold: float = 30.0, baseline: str = "paper") -> pd.DataFrame:
  """Per (revision, layer): n_heads and the number of first-token heads in both BOS definitions."""
  c = classify(_ordered(df), sel_threshold, baseline)
  t, fc = fmt(sel_threshold), first_col(baseline)
  kb, ka = f"n_heads_{fc}_ge_{t}", f"n_heads_best_class_first_and_sel_best_ge_{t}"
  c[kb] = c[fc].to_numpy() >= sel_threshold
  c[ka] = (c["best_class"] == "first").to_numpy() & c["classified"].to_numpy()
  g = c.groupby([T.REVISION, T.LAYER], sort=False)
  out = g.agg(n_heads=(T.HEAD, "size"), **{kb: (kb, "sum"), ka: (ka, "sum")}).reset_index()
  out = _revision_frame(c).merge(out, on=T.REVISION)
  out = out.sort_values([T.TOKENS, T.REVISION, T.LAYER], kind="mergesort").reset_index(drop=True)
  return out.astype({kb: np.int64, ka: np.int64, "n_heads": np.int64})


def floor_check(df: pd.DataFrame, sel_threshold: float = 30.0, layers: Sequence[int] = (0, 1),
                baseline: str = "paper") -> dict:
  """F1: the largest number of first-token heads in `layers` at any revision, in both definitions; the
  floor holds when it is 0."""
  pl = per_layer_counts(df, sel_threshold, baseline)
  sub = pl[pl[T.LAYER].isin(list(layers))]
  t, fc = fmt(sel_threshold), first_col(baseline)
  tag = "_".join(str(int(l)) for l in layers)
  out = {}
  for name, col in ((f"{fc}_ge_{t}", f"n_heads_{fc}_ge_{t}"),
                    (f"best_class_first_and_sel_best_ge_{t}", f"n_heads_best_class_first_and_sel_best_ge_{t}")):
    per_rev = sub.groupby(T.REVISION, sort=False)[col].sum()
    m = int(per_rev.max()) if len(per_rev) else 0
    out[f"max_over_revisions_n_heads_{name}_in_layers_{tag}"] = m
    out[f"floor_holds_no_head_{name}_in_layers_{tag}"] = bool(m == 0)
    out[f"revisions_with_head_{name}_in_layers_{tag}"] = per_rev[per_rev > 0].index.tolist()
  return out


# ------------------------------------------------------------------------------------------- F3


def _at(row) -> dict:
  return {"revision": str(row[T.REVISION]), "step": int(row[T.STEP]), "tokens": float(row[T.TOKENS])}


def _first(traj: pd.DataFrame, mask) -> Optional[dict]:
  hit = traj[np.asarray(mask)]
  return None if hit.empty else _at(hit.iloc[0])


def milestones(df: pd.DataFrame, sel_threshold: float = 30.0, induction_threshold: float = 50.0,
               induction_counts: Sequence[int] = (3, 5), bos_percents: Sequence[float] = (10, 30, 50, 70),
               baseline: str = "paper") -> dict:
  """F3: first revision (token order) with >= n induction heads, and with BOS fraction >= p% in both
  definitions; each as {revision, step, tokens} or None. Also the gap between the first induction
  milestone and the 50% BOS (b) milestone as a ratio of tokens (and in revisions)."""
  traj = trajectory(df, sel_threshold, induction_threshold, baseline=baseline)
  kn = key_n_induction(induction_threshold, baseline)
  out = {}
  for n in induction_counts:
    out[f"first_revision_{kn}_at_least_{int(n)}"] = _first(traj, traj[kn] >= n)
  for key in (key_bos_b(sel_threshold, baseline), key_bos_a(sel_threshold, baseline)):
    for p in bos_percents:
      out[f"first_revision_{key}_at_least_{fmt(p)}pct"] = _first(traj, traj[key] >= p / 100.0 - 1e-12)
  if induction_counts and 50 in [float(p) for p in bos_percents]:
    ind = out[f"first_revision_{kn}_at_least_{int(induction_counts[0])}"]
    bos = out[f"first_revision_{key_bos_b(sel_threshold, baseline)}_at_least_50pct"]
    name = f"{key_bos_b(sel_threshold, baseline)}_at_least_50pct_over_{kn}_at_least_{int(induction_counts[0])}"
    if ind and bos:
      revs = traj[T.REVISION].tolist()
      out[f"tokens_ratio_{name}"] = bos["tokens"] / ind["tokens"]
      out[f"revisions_between_{name}"] = revs.index(bos["revision"]) - revs.index(ind["revision"])
    else:
      out[f"tokens_ratio_{name}"] = None
      out[f"revisions_between_{name}"] = None
  return out


# ------------------------------------------------------------------------------------------- F4


def induction_circuit(df: pd.DataFrame, induction_threshold: float = 50.0, baseline: str = "paper") -> dict:
  """{revision: frozenset of (layer, head)} with sel_induction >= threshold, revisions in token order."""
  d = _ordered(df)
  col = T.sel_columns(baseline)[T.CLASSES.index("induction")]
  out = {}
  for rev in _revision_frame(d)[T.REVISION]:
    r = d[(d[T.REVISION] == rev) & (d[col] >= induction_threshold)]
    out[rev] = frozenset(zip(r[T.LAYER].astype(int), r[T.HEAD].astype(int)))
  return out


def recall_curve(df: pd.DataFrame, induction_threshold: float = 50.0, baseline: str = "paper") -> pd.DataFrame:
  """F4: per revision, |S(t)|, |S(t) ∩ S(final)| and recall = |S(t) ∩ S(final)| / |S(final)| (NaN when
  the final circuit is empty), with tokens as a fraction of the final revision's tokens."""
  circ = induction_circuit(df, induction_threshold, baseline)
  revs = _revision_frame(_ordered(df))
  final = circ[revs[T.REVISION].iloc[-1]]
  t_final = float(revs[T.TOKENS].iloc[-1])
  rows = []
  for _, r in revs.iterrows():
    s = circ[r[T.REVISION]]
    ov = len(s & final)
    rows.append({T.REVISION: r[T.REVISION], T.STEP: int(r[T.STEP]), T.TOKENS: float(r[T.TOKENS]),
                 "tokens_fraction_of_final": float(r[T.TOKENS]) / t_final,
                 "n_circuit": len(s), "n_final_circuit": len(final), "n_overlap_with_final": ov,
                 "recall_of_final_induction_circuit": ov / len(final) if final else np.nan})
  return pd.DataFrame(rows)


def recall_milestone(curve: pd.DataFrame, fraction: float = 2.0 / 3.0) -> Optional[dict]:
  """First revision where recall >= fraction, with its tokens as a fraction of the final's; or None."""
  hit = curve[curve["recall_of_final_induction_circuit"] >= fraction - 1e-12]
  if hit.empty:
    return None
  r = hit.iloc[0]
  return dict(_at(r), tokens_fraction_of_final=float(r["tokens_fraction_of_final"]))


# ------------------------------------------------------------------------------------------- F5


def pr_lead(df: pd.DataFrame, k: float = 2.0, induction_threshold: float = 50.0,
            baseline: str = "paper") -> pd.DataFrame:
  """F5 per head of the final induction circuit (definition in the module docstring): columns layer,
  head, pr_first_revision, pr_rise_index, pr_rise_revision, sel_cross_index, sel_cross_revision,
  lead_revisions (= sel_cross_index - pr_rise_index; NaN when PR never rises)."""
  d = _ordered(df)
  revs = _revision_frame(d)[T.REVISION].tolist()
  final = induction_circuit(d, induction_threshold, baseline)[revs[-1]]
  col = T.sel_columns(baseline)[T.CLASSES.index("induction")]
  rows = []
  for layer, head in sorted(final):
    h = d[(d[T.LAYER] == layer) & (d[T.HEAD] == head)].set_index(T.REVISION).reindex(revs)
    pr = h[T.PR].to_numpy(dtype=float)
    sel = h[col].to_numpy(dtype=float)
    base = pr[0] - 1.0
    rise = [i for i in range(1, len(revs)) if np.isfinite(pr[i]) and pr[i] - 1.0 > k * base]
    cross = [i for i in range(len(revs)) if sel[i] >= induction_threshold]
    ir = rise[0] if rise else None
    ic = cross[0]
    rows.append({T.LAYER: layer, T.HEAD: head, "pr_first_revision": pr[0],
                 "pr_rise_index": np.nan if ir is None else ir,
                 "pr_rise_revision": None if ir is None else revs[ir],
                 "sel_cross_index": ic, "sel_cross_revision": revs[ic],
                 "lead_revisions": np.nan if ir is None else ic - ir})
  cols = [T.LAYER, T.HEAD, "pr_first_revision", "pr_rise_index", "pr_rise_revision", "sel_cross_index",
          "sel_cross_revision", "lead_revisions"]
  return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------- F6


def null_floor(df: pd.DataFrame, sel_threshold: float = 30.0, baseline: str = "paper") -> Optional[pd.DataFrame]:
  """F6 per revision from null_sel_p95/p99/max (median and max over rows) and the number of heads whose
  sel_best exceeds their null p99; None when the columns are absent or all NaN."""
  if not all(c in df.columns for c in T.NULL_COLUMNS) or df[list(T.NULL_COLUMNS)].isna().all().all():
    return None
  c = classify(_ordered(df), sel_threshold, baseline)
  c["_above"] = c["sel_best"] > c["null_sel_p99"]
  g = c.groupby(T.REVISION, sort=False)
  out = _revision_frame(c).set_index(T.REVISION)
  for col in T.NULL_COLUMNS:
    out[f"{col}_median_over_heads"] = g[col].median()
    out[f"{col}_max_over_heads"] = g[col].max()
  out["n_heads_sel_best_above_null_sel_p99"] = g["_above"].sum().astype(np.int64)
  return out.reset_index()


# ----------------------------------------------------------------------------------- PR integral


def pr_integral(df: pd.DataFrame, clamp_below_1b: bool = False) -> pd.DataFrame:
  """Per head: trapz(max(PR - 1, 0), ln(tokens / 1e9)) over the revisions (token order) with finite PR;
  clamp_below_1b=True uses ln(max(tokens / 1e9, 1)) (the paper's Pythia code). Without the clamp a revision
  at 0 tokens (ln 0 = -inf) is left out of the integral. NaN with < 2 points."""
  d = _ordered(df)
  rows = []
  for (layer, head), h in d.groupby([T.LAYER, T.HEAD], sort=True):
    h = h[np.isfinite(h[T.PR].to_numpy(dtype=float))]
    tb = h[T.TOKENS].to_numpy(dtype=float) / 1e9
    if clamp_below_1b:
      tb = np.maximum(tb, 1.0)
    else:
      h, tb = h[tb > 0], tb[tb > 0]
    x = np.log(tb)
    y = np.maximum(h[T.PR].to_numpy(dtype=float) - 1.0, 0.0)
    rows.append({T.LAYER: int(layer), T.HEAD: int(head),
                 "pr_integral": float(np.trapezoid(y, x)) if len(x) >= 2 else np.nan})
  return pd.DataFrame(rows, columns=[T.LAYER, T.HEAD, "pr_integral"])


# ------------------------------------------------------------------------------------- ablations

ABLATION_COLUMNS = ("revision", "step", "tokens", "probe", "condition", "seed", "top1", "top5", "loss",
                    "target_logit")
ABLATION_METRICS = ("top1", "top5", "loss", "target_logit")


def t_quantile(p: float, dof: int) -> float:
  """Student-t quantile (Cornish-Fisher expansion around the normal quantile; at p = 0.975 the error is
  4e-3 for dof 3, 3e-4 for dof 5, < 1e-6 for dof >= 19). Exact for dof 1 and 2."""
  z = _norm_ppf(p)
  if dof == 1:
    return math.tan(math.pi * (p - 0.5))
  if dof == 2:
    a = 4 * p * (1 - p)
    return (2 * p - 1) * math.sqrt(2 / a)
  n = float(dof)
  return (z + (z**3 + z) / (4 * n) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
          + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
          + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * n**4))


def _norm_ppf(p: float) -> float:
  # Acklam's rational approximation (relative error < 1.2e-9), refined by one Newton step.
  a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
       -3.066479806614716e+01, 2.506628277459239e+00]
  b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
       -1.328068155288572e+01]
  c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
       4.374664141464968e+00, 2.938163982698783e+00]
  d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
  lo = 0.02425
  if p < lo:
    q = math.sqrt(-2 * math.log(p))
    x = (((((c[0]*q+c[1])*q+c[2])*q+c[3])*q+c[4])*q+c[5]) / ((((d[0]*q+d[1])*q+d[2])*q+d[3])*q+1)
  elif p > 1 - lo:
    q = math.sqrt(-2 * math.log(1 - p))
    x = -(((((c[0]*q+c[1])*q+c[2])*q+c[3])*q+c[4])*q+c[5]) / ((((d[0]*q+d[1])*q+d[2])*q+d[3])*q+1)
  else:
    q = p - 0.5
    r = q * q
    x = (((((a[0]*r+a[1])*r+a[2])*r+a[3])*r+a[4])*r+a[5])*q / (((((b[0]*r+b[1])*r+b[2])*r+b[3])*r+b[4])*r+1)
  e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
  return x - e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)


def validate_ablations(abl: pd.DataFrame) -> pd.DataFrame:
  """Checks the ablation table (one row per revision x probe x condition [x seed]) and returns a copy."""
  missing = [c for c in ABLATION_COLUMNS if c not in abl.columns]
  if missing:
    raise T.TableError(f"ablation table is missing column(s) {missing}; expected {list(ABLATION_COLUMNS)} "
                       "(seed may be NaN for deterministic conditions)")
  out = abl.copy()
  out[T.REVISION] = out[T.REVISION].astype(str)
  for c in ("tokens",) + ABLATION_METRICS:
    out[c] = pd.to_numeric(out[c], errors="raise").astype(float)
  return out


def summarize_ablations(abl: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
  """Per ([model,] revision, probe, condition): n_seeds and, per metric, the mean over rows (seeds), the
  t-interval of the mean at `confidence` (`<m>_mean_ci95_low/high`; equal to the mean with one row) and
  the seed range (`<m>_seed_min/max`)."""
  a = validate_ablations(abl)
  keys = ([T.MODEL] if T.MODEL in a.columns else []) + [T.REVISION, T.STEP, T.TOKENS, "probe", "condition"]
  pct = fmt(round(confidence * 100, 6))
  rows = []
  for key, g in a.groupby(keys, sort=False):
    row = dict(zip(keys, key))
    n = len(g)
    row["n_seeds"] = n
    for m in ABLATION_METRICS:
      v = g[m].to_numpy(dtype=float)
      mean = float(np.mean(v))
      half = 0.0
      if n > 1:
        half = t_quantile(0.5 + confidence / 2, n - 1) * float(np.std(v, ddof=1)) / math.sqrt(n)
      row[f"{m}_mean"] = mean
      row[f"{m}_mean_ci{pct}_low"] = mean - half
      row[f"{m}_mean_ci{pct}_high"] = mean + half
      row[f"{m}_seed_min"] = float(np.min(v))
      row[f"{m}_seed_max"] = float(np.max(v))
    rows.append(row)
  out = pd.DataFrame(rows)
  return out.sort_values(keys[:-3] + [T.TOKENS, "probe", "condition"], kind="mergesort").reset_index(drop=True) \
      if not out.empty else out


# ------------------------------------------------------------------------------------- summarize


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, pd.DataFrame):
    return [_jsonable(r) for r in x.to_dict(orient="records")]
  if isinstance(x, (np.bool_, bool)):
    return bool(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return None if not np.isfinite(x) else float(x)
  if x is None or isinstance(x, (str, int)):
    return x
  if x is pd.NA or x is pd.NaT:
    return None
  return str(x)


def summarize_model(df: pd.DataFrame, sel_threshold: float = 30.0, induction_threshold: float = 50.0,
                    previous_threshold: float = 100.0, pr_lead_k: float = 2.0, clamp_below_1b: bool = False,
                    baseline: str = "paper", induction_counts: Sequence[int] = (3, 5),
                    bos_percents: Sequence[float] = (10, 30, 50, 70), floor_layers: Sequence[int] = (0, 1),
                    recall_fraction: float = 2.0 / 3.0) -> dict:
  """All table-level analyses of one model's table as a JSON-serialisable dict (see docs/summary_fields.md)."""
  d = _ordered(df)
  revs = _revision_frame(d)
  traj = trajectory(d, sel_threshold, induction_threshold, previous_threshold, baseline)
  curve = recall_curve(d, induction_threshold, baseline)
  lead = pr_lead(d, pr_lead_k, induction_threshold, baseline)
  nf = null_floor(d, sel_threshold, baseline)
  integ = pr_integral(d, clamp_below_1b)
  n_final = len(lead)
  n_lead = int((lead["lead_revisions"] >= 0).sum())
  defined = int(lead["lead_revisions"].notna().sum())
  ko = f"k_{fmt(pr_lead_k)}"
  uniform_ok = not d[list(T.SEL_UNIFORM_COLUMNS)].isna().all().all()
  out = {
      "n_revisions": len(revs), "n_heads_per_revision": int(traj["n_heads"].iloc[0]),
      "revisions": revs[T.REVISION].tolist(),
      "final_revision": _at(revs.iloc[-1]),
      "uniform_baseline_available": bool(uniform_ok),
      "trajectory": traj,
      "floor_check": floor_check(d, sel_threshold, floor_layers, baseline),
      "per_layer_counts": per_layer_counts(d, sel_threshold, baseline),
      "milestones": milestones(d, sel_threshold, induction_threshold, induction_counts, bos_percents, baseline),
      "recall_curve": curve,
      f"first_revision_recall_of_final_induction_circuit_at_least_{fmt(round(recall_fraction, 4))}":
          recall_milestone(curve, recall_fraction),
      "final_induction_circuit": [[int(l), int(h)] for l, h in
                                  sorted(induction_circuit(d, induction_threshold, baseline)[revs[T.REVISION].iloc[-1]])],
      "pr_lead_per_final_head": lead,
      f"pr_lead_n_final_heads": n_final,
      f"pr_lead_{ko}_n_heads_with_pr_rise": defined,
      f"pr_lead_{ko}_fraction_lead_ge_0_of_final_heads": (n_lead / n_final) if n_final else None,
      f"pr_lead_{ko}_fraction_lead_ge_0_of_heads_with_pr_rise": (n_lead / defined) if defined else None,
      f"pr_lead_{ko}_median_lead_revisions": float(lead["lead_revisions"].median()) if defined else None,
      "null_floor_available": nf is not None,
      "null_floor": nf if nf is not None else "unavailable: table has no null_sel_p95/p99/max values",
      f"pr_integral_per_head_clamp_below_1b_{str(bool(clamp_below_1b)).lower()}": integ,
  }
  if nf is not None:
    p99 = nf["null_sel_p99_median_over_heads"]
    out["null_sel_p99_median_over_heads_min_over_revisions"] = float(p99.min())
    out["null_sel_p99_median_over_heads_max_over_revisions"] = float(p99.max())
  if uniform_ok and baseline == "paper":
    tu = trajectory(d, sel_threshold, induction_threshold, previous_threshold, "uniform")
    keep = [T.REVISION, T.STEP, T.TOKENS, key_bos_b(sel_threshold, "uniform"), key_bos_a(sel_threshold, "uniform"),
            key_n_induction(induction_threshold, "uniform")]
    out["trajectory_uniform_baseline"] = tu[keep]
  return out


def summarize(df: pd.DataFrame, ablations: Optional[pd.DataFrame] = None, sel_threshold: float = 30.0,
              induction_threshold: float = 50.0, previous_threshold: float = 100.0, pr_lead_k: float = 2.0,
              clamp_below_1b: bool = False, baseline: str = "paper", induction_counts: Sequence[int] = (3, 5),
              bos_percents: Sequence[float] = (10, 30, 50, 70), floor_layers: Sequence[int] = (0, 1),
              recall_fraction: float = 2.0 / 3.0) -> dict:
  """Gathers every analysis into a JSON-serialisable dict: {'parameters', 'definitions', 'models':
  {model: summarize_model(...)}, ['ablations']}. A table without a `model` column is model 'table'.
  Fields are documented in docs/summary_fields.md."""
  df = T.validate(df)
  params = dict(sel_threshold=sel_threshold, induction_threshold=induction_threshold,
                previous_threshold=previous_threshold, pr_lead_k=pr_lead_k, clamp_below_1b=clamp_below_1b,
                baseline=baseline, induction_counts=list(induction_counts), bos_percents=list(bos_percents),
                floor_layers=list(floor_layers), recall_fraction=recall_fraction)
  models = {m: summarize_model(g, **params) for m, g in T.split_models(df).items()}
  out = {"parameters": params, "definitions": DEFINITIONS, "models": models}
  if ablations is not None:
    out["ablations"] = summarize_ablations(ablations)
  return _jsonable(out)


DEFINITIONS = {
    "best_class": "argmax over sel_induction, sel_duplicate, sel_previous, sel_self, sel_first, sel_local",
    "classified": "sel_best >= sel_threshold",
    "bos_fraction_sel_first_ge_T": "(b) fraction of heads with sel_first >= T, whatever the best class "
                                    "(the paper's numbers)",
    "bos_fraction_best_class_first_and_sel_best_ge_T": "(a) fraction of heads whose best class is first-token "
                                                       "and sel_best >= T",
    "n_induction_heads_sel_induction_ge_T": "heads with sel_induction >= T (the induction circuit)",
    "n_previous_token_heads_best_class_previous_and_sel_ge_T": "heads whose best class is previous-token "
                                                               "with sel_previous >= T",
    "first_revision_X_at_least_N": "first revision in token order where X >= N (need not stay true)",
    "recall_of_final_induction_circuit": "|S(t) ∩ S(final)| / |S(final)|, S = induction circuit",
    "pr_lead": "i_sel - i_pr (revisions); i_pr = first revision i >= 1 with PR_i - 1 > k (PR_0 - 1), "
               "i_sel = first revision with sel_induction >= induction_threshold; per final-circuit head",
    "pr_integral": "trapz(max(PR - 1, 0), ln(tokens / 1e9)) over revisions; clamp_below_1b uses "
                   "ln(max(tokens / 1e9, 1))",
    "null_floor": "null_sel_p95/p99/max per revision (median, max over rows); heads with sel_best > null_sel_p99",
    "ablation_mean_ciP": "mean over seeds and its Student-t P% interval",
}
