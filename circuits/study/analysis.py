"""The study's transition markers, per family, from the run's files (no jax: pandas and numpy only).

Sources per family (see circuits/study/pipeline.py for the layout):
  run/metrics.jsonl          trainer, every log step: loss, attn/first_mass [L][H], probe/sel_* [L][H]
  revision_metrics.jsonl     per checkpoint: span_copy_loss, induction_attention [L][H], first_mass [L][H]
  sweep_<probe>/table.csv    per head and checkpoint: the six selectivities (paper baseline), PR, ...
  sweep_combined/ablations.csv   causal checks of the induction circuit at every checkpoint

Every marker is the FIRST checkpoint (or logged step) where its condition holds; it need not stay true
(the figures show whether it does). `None` means the condition never held: the transition did not form
by this definition within the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from circuits import rundir


def marker_defs(m) -> dict:
  """name -> (kind, definition) of every marker, named with its thresholds."""
  k = int(m.min_induction_heads)
  g = lambda x: f"{float(x):g}"
  return {
      f"induction_sel_ge_{g(m.sel_induction)}_combined":
          ("induction", f">= {k} head(s) with sel_induction >= {g(m.sel_induction)} on the in-distribution "
                        "probe (combined_induction_batch), paper-code baseline"),
      f"induction_3_heads_sel_ge_{g(m.sel_induction)}_combined":
          ("induction", f">= 3 heads with sel_induction >= {g(m.sel_induction)} on the in-distribution probe "
                        "(the paper's milestone)"),
      f"induction_sel_ge_{g(m.sel_induction)}_synthetic":
          ("induction", f">= {k} head(s) with sel_induction >= {g(m.sel_induction)} on the paper's synthetic "
                        "probe at T = data.seq_len, token ids in the span range"),
      f"induction_attention_ge_{g(m.induction_attention)}":
          ("induction", f"some head's mean attention on the induction target (ab+1) at the query >= "
                        f"{g(m.induction_attention)} (in-distribution probe)"),
      f"induction_span_copy_loss_lt_{g(m.span_copy_loss)}":
          ("induction", f"loss on the second copy of the span (r_2..r_m, held-out rows) < {g(m.span_copy_loss)} "
                        "nats"),
      f"sink_sel_first_ge_{g(m.sel_first)}_combined":
          ("sink", f">= 1 head with sel_first >= {g(m.sel_first)} on the in-distribution probe (BOS at "
                   "position 0)"),
      "sink_bos_fraction_ge_50pct_combined":
          ("sink", f"BOS fraction (b): >= 50% of all heads with sel_first >= {g(m.sel_first)}, in-distribution "
                   "probe"),
      f"sink_first_mass_ge_{g(m.first_mass)}":
          ("sink", f"some head's first_mass (trainer, mean attention on key 0 over the batch and all queries) >= "
                   f"{g(m.first_mass)}; every logged step"),
  }


def _first(steps, tokens, cond, layers=None) -> Optional[dict]:
  idx = np.flatnonzero(np.asarray(cond, bool))
  if not idx.size:
    return None
  i = int(idx[0])
  out = {"step": int(steps[i]), "tokens": float(tokens[i])}
  if layers is not None:
    out["layers"] = sorted(int(x) for x in layers[i])
  return out


def _table(path: Path) -> Optional[pd.DataFrame]:
  return pd.read_csv(path, dtype={"revision": str}) if Path(path).exists() else None


def _per_rev(df: pd.DataFrame, col: str, thr: float, k: int):
  g = df.sort_values(["step", "layer", "head"]).groupby("step", sort=True)
  steps, tokens, cond, layers = [], [], [], []
  for s, x in g:
    hit = x[x[col] >= thr]
    steps.append(int(s))
    tokens.append(float(x["tokens"].iloc[0]))
    cond.append(len(hit) >= k)
    layers.append(sorted(set(hit["layer"].astype(int))))
  return np.array(steps), np.array(tokens), np.array(cond), layers


def family_markers(study, p, family: str) -> dict:
  """Every marker of one family, the final values and the causal check."""
  m = study.markers
  defs = marker_defs(m)
  names = list(defs)
  out: dict = {"markers": {}, "definitions": {n: d for n, (_, d) in defs.items()}}
  tokens_per_step = int(study.train.batch_size) * int(study.data.seq_len)
  comb = _table(p.sweep(family, "combined") / "table.csv")
  syn = _table(p.sweep(family, "synthetic") / "table.csv")
  k = int(m.min_induction_heads)
  if comb is not None:
    s, t, c, l = _per_rev(comb, "sel_induction", float(m.sel_induction), k)
    out["markers"][names[0]] = _first(s, t, c, l)
    s, t, c, l = _per_rev(comb, "sel_induction", float(m.sel_induction), 3)
    out["markers"][names[1]] = _first(s, t, c, l)
    s, t, c, l = _per_rev(comb, "sel_first", float(m.sel_first), 1)
    out["markers"][names[5]] = _first(s, t, c, l)
    n_heads = int(comb.groupby("step").size().iloc[0])
    s, t, c50, l = _per_rev(comb, "sel_first", float(m.sel_first), int(np.ceil(0.5 * n_heads)))
    out["markers"][names[6]] = _first(s, t, c50, l)
    last = comb[comb["step"] == comb["step"].max()]
    out["final_max_sel_induction_combined"] = float(last["sel_induction"].max())
    out["final_max_sel_first_combined"] = float(last["sel_first"].max())
    out["final_bos_fraction_sel_first_ge_T_combined"] = float((last["sel_first"] >= float(m.sel_first)).mean())
    out["final_sink_layers_sel_first_ge_T_combined"] = sorted(
        set(last.loc[last["sel_first"] >= float(m.sel_first), "layer"].astype(int)))
    best = last.sort_values("sel_induction").iloc[-1]
    out["final_best_induction_head_combined"] = [int(best["layer"]), int(best["head"])]
  if syn is not None:
    s, t, c, l = _per_rev(syn, "sel_induction", float(m.sel_induction), k)
    out["markers"][names[2]] = _first(s, t, c, l)
    out["final_max_sel_induction_synthetic"] = float(syn[syn["step"] == syn["step"].max()]["sel_induction"].max())
  rm = rundir.read_jsonl(p.metrics(family))
  if rm:
    rm = sorted(rm, key=lambda r: r["step"])
    s = np.array([r["step"] for r in rm])
    t = np.array([r["tokens"] for r in rm])
    ia = [np.asarray(r["induction_attention"], float) for r in rm]
    c = [a.max() >= float(m.induction_attention) for a in ia]
    lay = [sorted(set(np.argwhere(a >= float(m.induction_attention))[:, 0].tolist())) for a in ia]
    out["markers"][names[3]] = _first(s, t, c, lay)
    loss = np.array([r["span_copy_loss"] for r in rm])
    ind_layers = [sorted({int(np.unravel_index(np.argmax(a), a.shape)[0])}) for a in ia]
    out["markers"][names[4]] = _first(s, t, loss < float(m.span_copy_loss), ind_layers)
    out["final_span_copy_loss"] = float(loss[-1])
    out["initial_span_copy_loss"] = float(loss[0])
    out["final_span_first_copy_loss"] = float(rm[-1]["span_first_copy_loss"])
    out["final_max_induction_attention"] = float(ia[-1].max())
    li, hi = np.unravel_index(np.argmax(ia[-1]), ia[-1].shape)
    out["final_best_induction_attention_head"] = [int(li), int(hi)]
    out["final_combined_probe_top1"] = float(rm[-1]["combined_probe_top1"])
  tj = [r for r in rundir.read_metrics(p.run(family)) if "attn/first_mass" in r]
  if tj:
    s = np.array([r["step"] for r in tj])
    t = s * tokens_per_step
    fm = [np.asarray(r["attn/first_mass"], float) for r in tj]
    c = [a.max() >= float(m.first_mass) for a in fm]
    lay = [sorted(set(np.argwhere(a >= float(m.first_mass))[:, 0].tolist())) for a in fm]
    out["markers"][names[7]] = _first(s, t, c, lay)
    out["final_first_mass_max_per_layer"] = [float(x) for x in fm[-1].max(axis=1)]
    out["final_train_loss"] = float(tj[-1]["loss"])
    if "attn/unplaced_mass" in tj[-1]:  # softmax1 / sink_logit / sigmoid rows need not sum to 1
      out["final_unplaced_mass_max_per_layer"] = [float(x) for x in np.asarray(tj[-1]["attn/unplaced_mass"]).max(axis=1)]
    tps = [float(r["tokens_per_s"]) for r in tj if r.get("tokens_per_s")]
    if tps:
      out["train_s_per_step_median"] = tokens_per_step / float(np.median(tps))
    out["steps_trained"] = int(s[-1]) + 1
  out["steps_configured"] = int(study.families[family].steps)
  out["swept"] = comb is not None and bool(metrics_present(p.metrics(family)))
  for n in names:
    out["markers"].setdefault(n, None)
  out["causal"] = causal_check(p.sweep(family, "combined") / "ablations.csv")
  ind_primary = names[4]
  sink_primary = names[7]
  out["gaps"] = {
      f"{ind_primary} minus {sink_primary}": _gap(out["markers"][ind_primary], out["markers"][sink_primary]),
      f"{names[3]} minus {sink_primary}": _gap(out["markers"][names[3]], out["markers"][sink_primary]),
      f"{names[0]} minus {names[5]}": _gap(out["markers"][names[0]], out["markers"][names[5]]),
  }
  return out


def _gap(a: Optional[dict], b: Optional[dict]) -> dict:
  """Induction marker minus sink marker, in steps and tokens (> 0: the sink came first)."""
  if a is None or b is None:
    return {"steps": None, "tokens": None, "order": "undefined: " + ("induction" if a is None else "sink")
            + " marker never reached" if (a is None) != (b is None) else "undefined: neither reached"}
  ds, dt = a["step"] - b["step"], a["tokens"] - b["tokens"]
  order = "sink first" if ds > 0 else ("induction first" if ds < 0 else "same checkpoint")
  return {"steps": int(ds), "tokens": float(dt), "order": order}


def causal_check(path: Path) -> Optional[dict]:
  """At the final checkpoint: top-1 at the query (in-distribution probe) clean, with the circuit ablated
  (zero / mean), matched-random heads (mean over seeds, 95% t-interval), every head of the circuit's layers."""
  if not Path(path).exists():
    return None
  from circuits.discovery import analysis as A
  s = A.summarize_ablations(pd.read_csv(path, dtype={"revision": str}))
  last = s[s["step"] == s["step"].max()]
  raw = pd.read_csv(path, dtype={"revision": str})
  raw = raw[raw["step"] == raw["step"].max()]
  out = {"step": int(last["step"].iloc[0]), "circuit_heads": str(raw["circuit_heads"].iloc[0]),
         "circuit_source": str(raw["circuit_source"].iloc[0]), "metric": "top1 at the query (target = next span "
         "token), mean over probe examples; random_*: mean over seeds with its 95% Student-t interval"}
  lo = [c for c in s.columns if c.startswith("top1_mean_ci") and c.endswith("_low")][0]
  hi = lo[:-4] + "_high"
  for _, r in last.iterrows():
    out[r["condition"]] = {"top1": float(r["top1_mean"]), "ci95": [float(r[lo]), float(r[hi])],
                           "loss": float(r["loss_mean"]), "n_seeds": int(r["n_seeds"])}
  if "clean" in out and "circuit_zero" in out:
    out["drop_circuit_zero"] = out["clean"]["top1"] - out["circuit_zero"]["top1"]
  if "clean" in out and "random_zero" in out:
    rz = out["random_zero"]
    out["drop_random_zero"] = out["clean"]["top1"] - rz["top1"]
    out["drop_random_zero_ci95"] = [out["clean"]["top1"] - rz["ci95"][1], out["clean"]["top1"] - rz["ci95"][0]]
    out["circuit_drop_exceeds_random_ci"] = bool(out.get("drop_circuit_zero", -1) > out["drop_random_zero_ci95"][1])
  return out


def metrics_present(path) -> bool:
  return Path(path).exists() and bool(Path(path).read_text().strip())


def summarize(study, p) -> dict:
  """summary.json of the study: per family its markers, finals, causal check and gaps."""
  fams = {f: family_markers(study, p, f) for f in study.family_order}
  return {"study": study.name, "families": fams, "marker_definitions": fams[study.family_order[0]]["definitions"],
          "tokens_per_step": int(study.train.batch_size) * int(study.data.seq_len)}
