"""Transitions with a spread: a study's runs grouped into replicates of one family (seeds), the markers and gaps
aggregated over the replicates, the median trajectories, and the PR lead (the paper's F5) per head and run.

No jax: pandas and numpy only. A replicate is a run of the study (families.<run>) whose `family` names its
architecture and whose `seed` (model init) and `data_seed` (the training rows, so the data order: the seed of the
token cache's generator) say which replicate it is (configs/study_seeds.py builds them).

Definitions:
  markers        per family and marker: n_reached of n_seeds replicates reached it (the first checkpoint or
                 logged step where its condition holds: circuits.study.analysis); the median and the range
                 (min-max) of its step and tokens are over the replicates that reached it (None when none did).
  gaps           per family and gap (induction marker minus sink marker; > 0: the sink came first): the gap
                 of every replicate (None when either marker was not reached) and the median and range over the
                 replicates where it is defined; counts of "sink first", "induction first", "same checkpoint".
  median curve   at every step of any replicate, the median over the replicates that have that step (NaN-free
                 values only), and how many they were.
  PR lead (F5)   METHODS.md's operational definition with its option fixed: for a head, rise = the first
                 checkpoint i >= 1 where PR_i - 1 > k * (PR_0 - 1), PR_0 at the run's first checkpoint (step 0,
                 the initialisation), k = 2 (as circuits.discovery.analysis.pr_lead); cross = the first checkpoint
                 where sel_induction (paper baseline, in-distribution probe) >= 50. The heads are every head
                 whose selectivity crosses at some checkpoint (the final circuit's heads and those that crossed
                 and fell back). Verdict: "lead" (rise strictly before cross), "same checkpoint", "after",
                 "no PR rise" (PR never rose so within the run), "never crosses" (not an induction head).
                 lead_steps = step(cross) - step(rise); "at or before" (F5's wording) = lead or same checkpoint.
                 The resolution is the checkpoint spacing (log-spaced to 64, then checkpoint.every).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from circuits import rundir
from circuits.study.config import architecture, data_seed

PR_LEAD_K = 2.0
VERDICTS = ("lead", "same checkpoint", "after", "no PR rise", "never crosses")


# ------------------------------------------------------------------------------------------- grouping

def groups(study) -> dict:
  """{family: [run, ...]} in family_order: the replicates of each architecture."""
  out: dict = {}
  for run in study.family_order:
    out.setdefault(architecture(study, run), []).append(run)
  return out


def seed_label(study, run: str) -> str:
  """`model <seed> / data <data seed>` of a run."""
  return f"model {int(study.families[run].seed)} / data {data_seed(study, run)}"


def seed_pairs(study) -> dict:
  """{family: [(model seed, data seed), ...]} over its replicates."""
  return {f: [(int(study.families[r].seed), data_seed(study, r)) for r in runs] for f, runs in groups(study).items()}


# ------------------------------------------------------------------------------------------- aggregation

def _stats(values: Sequence[Optional[float]]) -> dict:
  """median, min, max over the values that are not None (None each when there are none)."""
  v = np.array([x for x in values if x is not None], float)
  if not v.size:
    return {"median": None, "min": None, "max": None}
  return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def aggregate(per_seed: dict) -> dict:
  """Markers and gaps of one family over its replicates.

  per_seed: {run: analysis.family_markers(...) output} (uses its `markers` and `gaps`). Returns
  {"n_seeds", "runs", "markers": {name: {n_reached, n_seeds, step: [..], tokens: [..], step_stats, tokens_stats}},
   "gaps": {name: {steps: [..], tokens: [..], orders: [..], steps_stats, tokens_stats, n_defined, n_sink_first,
   n_induction_first, n_same}}}; lists are in the order of per_seed."""
  runs = list(per_seed)
  names = list(dict.fromkeys(n for r in runs for n in per_seed[r]["markers"]))
  markers = {}
  for n in names:
    vals = [per_seed[r]["markers"].get(n) for r in runs]
    steps = [None if v is None else int(v["step"]) for v in vals]
    tokens = [None if v is None else float(v["tokens"]) for v in vals]
    markers[n] = {"n_reached": sum(v is not None for v in vals), "n_seeds": len(runs), "step": steps,
                  "tokens": tokens, "step_stats": _stats(steps), "tokens_stats": _stats(tokens)}
  gaps = {}
  for n in dict.fromkeys(n for r in runs for n in per_seed[r]["gaps"]):
    gs = [per_seed[r]["gaps"].get(n) or {"steps": None, "tokens": None, "order": "undefined"} for r in runs]
    steps = [g["steps"] for g in gs]
    orders = [g["order"] for g in gs]
    gaps[n] = {"steps": steps, "tokens": [g["tokens"] for g in gs], "orders": orders,
               "steps_stats": _stats(steps), "tokens_stats": _stats([g["tokens"] for g in gs]),
               "n_defined": sum(s is not None for s in steps), "n_sink_first": orders.count("sink first"),
               "n_induction_first": orders.count("induction first"), "n_same": orders.count("same checkpoint")}
  return {"n_seeds": len(runs), "runs": runs, "markers": markers, "gaps": gaps}


def median_curve(curves: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(steps, median, n): at every step of any curve, the median over the curves with a finite value there.

  curves: {label: (steps, values)} (1-D each, steps need not be shared)."""
  per: dict = {}
  for steps, values in curves.values():
    for s, v in zip(np.asarray(steps).tolist(), np.asarray(values, float).tolist()):
      if np.isfinite(v):
        per.setdefault(int(s), []).append(v)
  steps = np.array(sorted(per), dtype=np.int64)
  med = np.array([np.median(per[s]) for s in steps], float)
  n = np.array([len(per[s]) for s in steps], np.int64)
  return steps, med, n


# ------------------------------------------------------------------------------------------- trajectories

def trajectories(study, p, run: str) -> dict:
  """{name: (steps, values)} of one run, each present only when measured:
    first_mass        trainer JSONL (every logged step): max over layers and heads of attn/first_mass
    span_copy_loss    per checkpoint: loss on the span's second copy (revision_metrics.jsonl)
    sel_induction     per checkpoint: max over heads of sel_induction, in-distribution probe (sweep table)"""
  out = {}
  tj = [r for r in rundir.read_metrics(p.run(run)) if "attn/first_mass" in r]
  if tj:
    out["first_mass"] = (np.array([r["step"] for r in tj]),
                         np.array([np.max(np.asarray(r["attn/first_mass"], float)) for r in tj]))
  rm = sorted(rundir.read_jsonl(p.metrics(run)), key=lambda r: r["step"])
  if rm:
    out["span_copy_loss"] = (np.array([r["step"] for r in rm]), np.array([r["span_copy_loss"] for r in rm], float))
  t = Path(p.sweep(run, "combined")) / "table.csv"
  if t.exists():
    g = pd.read_csv(t, dtype={"revision": str}).groupby("step")["sel_induction"].max()
    out["sel_induction"] = (g.index.to_numpy(), g.to_numpy(float))
  return out


# ------------------------------------------------------------------------------------------- PR lead (F5)

def pr_lead_head(steps, pr, sel, k: float = PR_LEAD_K, threshold: float = 50.0) -> dict:
  """F5 for one head (definition in the module docstring) from its trajectory over checkpoints in step order.

  Returns rise_index/rise_step (None: PR never rose), cross_index/cross_step (None: never crossed),
  lead_checkpoints and lead_steps (cross minus rise; None unless both), verdict (one of VERDICTS), pr_first,
  pr_before_cross (PR at the checkpoint before the crossing; None at the first), pr_at_cross."""
  steps = np.asarray(steps)
  pr, sel = np.asarray(pr, float), np.asarray(sel, float)
  if not (steps.shape == pr.shape == sel.shape) or steps.ndim != 1 or not steps.size:
    raise ValueError(f"pr_lead_head: steps, pr and sel must be 1-D of one non-zero length (got {steps.shape}, "
                     f"{pr.shape}, {sel.shape})")
  if np.any(np.diff(steps) <= 0):
    raise ValueError("pr_lead_head: steps must increase (one entry per checkpoint, in step order)")
  base = pr[0] - 1.0
  rise = next((i for i in range(1, len(pr)) if np.isfinite(pr[i]) and pr[i] - 1.0 > k * base), None)
  cross = next((i for i in range(len(sel)) if np.isfinite(sel[i]) and sel[i] >= threshold), None)
  if cross is None:
    verdict = "never crosses"
  elif rise is None:
    verdict = "no PR rise"
  else:
    verdict = "lead" if rise < cross else ("same checkpoint" if rise == cross else "after")
  both = rise is not None and cross is not None
  return {"rise_index": rise, "rise_step": None if rise is None else int(steps[rise]),
          "cross_index": cross, "cross_step": None if cross is None else int(steps[cross]),
          "lead_checkpoints": int(cross - rise) if both else None,
          "lead_steps": int(steps[cross] - steps[rise]) if both else None, "verdict": verdict,
          "pr_first": float(pr[0]), "pr_before_cross": float(pr[cross - 1]) if cross else None,
          "pr_at_cross": None if cross is None else float(pr[cross])}


_LEAD_COLUMNS = ("layer", "head", "in_final_circuit", "rise_index", "rise_step", "cross_index", "cross_step",
                 "lead_checkpoints", "lead_steps", "verdict", "pr_first", "pr_before_cross", "pr_at_cross")


def pr_lead_rows(df: pd.DataFrame, k: float = PR_LEAD_K, threshold: float = 50.0, sel_col: str = "sel_induction",
                 pr_col: str = "pr") -> list[dict]:
  """pr_lead_head for every head of one run's sweep table whose selectivity crosses `threshold` at some
  checkpoint, in (layer, head) order: dicts of layer, head, in_final_circuit and pr_lead_head's fields."""
  d = df.sort_values(["step", "layer", "head"])
  last = d["step"].max()
  rows = []
  for (layer, head), h in d.groupby(["layer", "head"], sort=True):
    h = h.drop_duplicates("step").sort_values("step")
    if not (h[sel_col] >= threshold).any():
      continue
    r = pr_lead_head(h["step"].to_numpy(), h[pr_col].to_numpy(float), h[sel_col].to_numpy(float), k, threshold)
    final = bool((h.loc[h["step"] == last, sel_col] >= threshold).any())
    rows.append({"layer": int(layer), "head": int(head), "in_final_circuit": final, **r})
  return rows


def pr_lead_table(df: pd.DataFrame, k: float = PR_LEAD_K, threshold: float = 50.0) -> pd.DataFrame:
  """pr_lead_rows as a DataFrame (one row per head that crosses; empty when none)."""
  return pd.DataFrame(pr_lead_rows(df, k, threshold), columns=list(_LEAD_COLUMNS))


def pr_lead_run(table: Optional[pd.DataFrame], k: float = PR_LEAD_K, threshold: float = 50.0) -> dict:
  """One run's F5 summary: heads (pr_lead_rows), counts per verdict, n_heads (heads that cross),
  n_at_or_before, all_at_or_before (None when no head crosses), median lead in steps over the heads with a
  defined lead; measured=False without a sweep table (or one without pr / sel_induction columns)."""
  if table is None or "pr" not in table.columns or "sel_induction" not in table.columns:
    return {"measured": False, "heads": [], "n_heads": 0, "counts": {v: 0 for v in VERDICTS[:-1]},
            "n_at_or_before": 0, "all_at_or_before": None, "lead_steps_median": None}
  heads = pr_lead_rows(table, k, threshold)
  counts = {v: sum(h["verdict"] == v for h in heads) for v in VERDICTS[:-1]}
  n = len(heads)
  at = counts["lead"] + counts["same checkpoint"]
  leads = [h["lead_steps"] for h in heads if h["lead_steps"] is not None]
  return {"measured": True, "heads": heads, "n_heads": n, "counts": counts, "n_at_or_before": at,
          "all_at_or_before": (at == n) if n else None,
          "lead_steps_median": float(np.median(leads)) if leads else None}


def pr_lead_family(per_seed: dict) -> dict:
  """One family's F5 over its replicates: per_seed {run: pr_lead_run(...)} -> counts over seeds and heads, and
  the median and range over seeds of the per-seed median lead (steps)."""
  runs = list(per_seed)
  measured = [r for r in runs if per_seed[r]["measured"]]
  with_heads = [r for r in measured if per_seed[r]["n_heads"]]
  totals = {v: sum(per_seed[r]["counts"][v] for r in measured) for v in VERDICTS[:-1]}
  return {"n_seeds": len(runs), "n_measured": len(measured), "n_seeds_with_induction_heads": len(with_heads),
          "n_seeds_all_at_or_before": sum(bool(per_seed[r]["all_at_or_before"]) for r in with_heads),
          "n_seeds_all_strictly_before": sum(per_seed[r]["counts"]["lead"] == per_seed[r]["n_heads"]
                                             for r in with_heads),
          "heads": sum(per_seed[r]["n_heads"] for r in measured), "head_counts": totals,
          "lead_steps_median_per_seed": [per_seed[r]["lead_steps_median"] for r in runs],
          "lead_steps_stats": _stats([per_seed[r]["lead_steps_median"] for r in runs])}


def pr_lead_sentence(family: str, f: dict, k: float = PR_LEAD_K, threshold: float = 50.0) -> str:
  """The F5 answer for one family in plain words."""
  if not f["n_measured"]:
    return f"{family}: PR lead not measured (no sweep table yet)."
  if not f["n_seeds_with_induction_heads"]:
    return (f"{family}: no head reached sel_induction >= {threshold:g} in any of {f['n_measured']} measured seed(s): "
            "the PR lead is undefined.")
  c, s = f["head_counts"], f["lead_steps_stats"]
  spread = ("" if s["median"] is None else f"; per-seed median lead {s['median']:g} steps (range {s['min']:g} to "
            f"{s['max']:g})")
  return (f"{family}: in {f['n_seeds_all_at_or_before']} of {f['n_seeds_with_induction_heads']} seed(s) with an "
          f"induction head, every such head's PR rose (PR - 1 > {k:g} x (PR_0 - 1)) at or before its sel_induction "
          f"first reached {threshold:g} ({f['n_seeds_all_strictly_before']} strictly before); over the "
          f"{f['heads']} heads: {c['lead']} lead, {c['same checkpoint']} same checkpoint, {c['after']} after, "
          f"{c['no PR rise']} no PR rise{spread}.")


# ------------------------------------------------------------------------------------------- verdicts

def verdicts(agg: dict, primary_gap: str, induction_markers: Sequence[str], incomplete: Sequence[str] = ()) -> dict:
  """Item 2 of the seeds study, computed: agg = {family: aggregate(...)}.

  sink_first_every_seed: per family, whether the primary gap's order is "sink first" in every replicate;
  sink_first_everywhere: that for every family (False when any replicate's gap is undefined or otherwise);
  induction_all_seeds: per induction marker, the families where every replicate reached it;
  sentences: the same in plain words (INCOMPLETE runs named first)."""
  lines = []
  if incomplete:
    lines.append(f"INCOMPLETE at the time of this report: {', '.join(incomplete)} (rerun `make seeds` to resume); "
                 "the statements below cover what was measured.")
  per = {}
  for f, a in agg.items():
    g = a["gaps"][primary_gap]
    per[f] = g["n_sink_first"] == a["n_seeds"]
    other = a["n_seeds"] - g["n_sink_first"]
    lines.append(f"{f}: sink first ({primary_gap}) in {g['n_sink_first']} of {a['n_seeds']} seed(s)" +
                 ("" if not other else f"; induction first in {g['n_induction_first']}, same checkpoint in "
                  f"{g['n_same']}, undefined (a marker not reached) in {a['n_seeds'] - g['n_defined']}") + ".")
  everywhere = bool(per) and all(per.values())
  lines.insert(int(bool(incomplete)), "'Sink first' holds in every seed of every family: " +
               ("YES." if everywhere else "NO (see below)."))
  ind = {}
  for m in induction_markers:
    ind[m] = [f for f, a in agg.items() if a["markers"][m]["n_reached"] == a["n_seeds"]]
    part = [f"{f} ({a['markers'][m]['n_reached']} of {a['n_seeds']})" for f, a in agg.items() if f not in ind[m]]
    lines.append(f"Induction by {m} in every seed within the budget: {', '.join(ind[m]) or 'no family'}" +
                 (f"; not in every seed: {', '.join(part)}" if part else "") + ".")
  return {"sink_first_every_seed": per, "sink_first_everywhere": everywhere, "induction_all_seeds": ind,
          "sentences": lines}


# ------------------------------------------------------------------------------------------- the study

def summarize(study, p, families: dict) -> dict:
  """The seeds section of summary.json: families = analysis.summarize(...)["families"] (per run)."""
  from circuits.study.analysis import marker_defs
  names = list(marker_defs(study.markers))
  primary_gap = next(iter(families[study.family_order[0]]["gaps"]))
  thr = float(study.markers.sel_induction)
  agg, leads, seeds = {}, {}, {}
  incomplete = []
  for fam, runs in groups(study).items():
    agg[fam] = aggregate({r: families[r] for r in runs})
    seeds[fam] = {r: seed_label(study, r) for r in runs}
    per = {}
    for r in runs:
      t = Path(p.sweep(r, "combined")) / "table.csv"
      per[r] = pr_lead_run(pd.read_csv(t, dtype={"revision": str}) if t.exists() else None, PR_LEAD_K, thr)
      s = families[r]
      if s.get("steps_trained", 0) < s["steps_configured"] or not s.get("swept"):
        incomplete.append(r)
    leads[fam] = {"per_seed": per, "family": pr_lead_family(per)}
  induction = [names[4], names[0]]  # span-copy loss < 2 nats; a head with sel_induction >= 50 (combined)
  v = verdicts(agg, primary_gap, induction, incomplete)
  return {"families": agg, "seeds": seeds, "primary_gap": primary_gap, "verdicts": v, "pr_lead": leads,
          "pr_lead_definition": {"k": PR_LEAD_K, "threshold": thr, "probe": "combined (in-distribution)",
                                 "text": " ".join(__doc__.split("PR lead (F5)")[1].split())},
          "incomplete": incomplete}
