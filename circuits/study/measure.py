"""The per-checkpoint jobs of a study: the discovery sweep of every selected checkpoint (once per probe) and
the revision metrics (span-copy loss, induction attention, first-token mass)."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from circuits.study.config import Paths

def load_probe(p: Paths, name: str):
  from circuits.data.probes import ProbeBatch
  z = np.load(p.probes / f"{name}.npz")
  return ProbeBatch(*(np.asarray(z[k], np.int32) for k in ("tokens_NxT", "query_pos_N", "target_N", "ab_N")),
                    name=name)


def select_revisions(revs, every_nth: int):
  """Every n-th revision in step order, and always the last."""
  revs = sorted(revs, key=lambda r: r.step)
  keep = revs[::max(1, int(every_nth))]
  if revs and revs[-1] not in keep:
    keep.append(revs[-1])
  return keep


def job_sweep(study, p: Paths, family: str, progress: bool = True) -> dict:
  """The discovery sweep of every (selected) checkpoint, once per probe."""
  from circuits.discovery import measure, revisions, sweep
  sw, m = study.sweep, study.markers
  revs = select_revisions(revisions.from_run(str(p.run(family))), int(sw.every_nth))
  out = {}
  for name in sw.probes:
    ablations = name == "combined" or bool(sw.synthetic_ablations)
    cfg = sweep.SweepConfig(
        measure=measure.MeasureConfig(chunk=int(sw.chunk), n_detect=int(sw.n_detect)),
        ablations=ablations, induction_threshold=float(m.sel_induction), n_seeds=int(sw.n_seeds),
        ablation_examples=int(sw.ablation_examples) or None)
    kw = dict(probe=load_probe(p, name), progress=progress, analysis_params=dict(sel_threshold=float(m.sel_first)))
    every = int(sw.get("ablate_every_nth", 1))
    if ablations and every > 1:  # ablations at every n-th measured revision (and the last), then the rest without
      sweep.sweep(select_revisions(revs, every), p.sweep(family, name), cfg=dataclasses.replace(cfg, analyze=False),
                  **kw)
      cfg = dataclasses.replace(cfg, ablations=False)
    res = sweep.sweep(revs, p.sweep(family, name), cfg=cfg, **kw)
    out[name] = dict(done=len(res["done"]), revisions=len(revs))
  return out


def job_metrics(study, p: Paths, family: str, progress: bool = True) -> dict:
  """Per checkpoint: span-copy loss on held-out rows, induction attention and first-token mass per head.

  Appends one JSON line per revision to <family>/revision_metrics.jsonl (resumes: steps already there are
  skipped). Definitions:
    span_copy_loss        mean over held-out rows of the mean next-token cross-entropy (nats) on the second
                          copy's r_2..r_m (tokens predictable only by copying from the first copy)
    span_first_copy_loss  the same on the first copy's r_2..r_m (not predictable: ~ln(n_span - j))
    chain_loss            mean cross-entropy on the Bigram-Backcopy positions
    induction_attention   [L][H] mean over the combined probe of A[q, ab+1] (attention of the query, the
                          second-copy token, on the token after its first occurrence)
    first_mass            [L][H] mean over held-out rows and all query positions of A[t, 0] (BOS mass)
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from circuits import diagnostics, losses
  from circuits.discovery import revisions
  from circuits.models import Capture

  revs = sorted(revisions.from_run(str(p.run(family))), key=lambda r: r.step)
  path = p.metrics(family)
  have = set()
  if path.exists():
    for ln in path.read_text().splitlines():
      try:
        have.add(int(json.loads(ln)["step"]))
      except (json.JSONDecodeError, KeyError):
        pass  # a torn last line from a killed job: rewritten below
    _rewrite_complete(path)
  comb = load_probe(p, "combined")
  h = np.load(p.probes / "heldout.npz")
  rows = h["rows_NxT1"]
  inp, tgt = rows[:, :-1], rows[:, 1:]
  n, t = inp.shape
  off, sp, sm = int(h["offset"]), h["p_N"], h["m_N"]
  j = np.arange(t)[None, :]
  # target index i predicts rows[:, i+1]; the second copy occupies rows [off+p+m, off+p+2m)
  tpos = j + 1
  second = (tpos >= (off + sp + sm + 1)[:, None]) & (tpos < (off + sp + 2 * sm)[:, None])
  first = (tpos >= (off + sp + 1)[:, None]) & (tpos < (off + sp + sm)[:, None])
  chain = ~((tpos >= (off + sp)[:, None]) & (tpos < (off + sp + 2 * sm)[:, None]))
  masks = {k: jnp.asarray(v, jnp.float32) for k, v in
           (("span_copy_loss", second), ("span_first_copy_loss", first), ("chain_loss", chain))}

  @functools.partial(jax.jit, static_argnums=(0,))
  def measure(graphdef, state):
    model = nnx.merge(graphdef, state)
    out = model(jnp.asarray(inp), Capture(stats=True))
    ce, _ = losses.cross_entropy(jnp.asarray(tgt), out.logits_BxTxV)
    res = {k: jnp.mean(jnp.sum(ce * mk, 1) / jnp.maximum(jnp.sum(mk, 1), 1.0)) for k, mk in masks.items()}
    res["first_mass"] = out.attn_stats["first_mass"]
    q = jnp.asarray(comb.query_pos_N)
    o2 = model(jnp.asarray(comb.tokens_NxT), Capture(query_pos_B=q))
    rows_NxLxHxS = o2.rows_BxLxHxS
    ind_Nx1 = diagnostics.class_targets(jnp.asarray(comb.ab_N), rows_NxLxHxS.shape[-1])["induction"]
    res["induction_attention"] = diagnostics.row_mass(rows_NxLxHxS, ind_Nx1)
    logits_q = o2.logits_BxTxV[jnp.arange(q.shape[0]), q]
    res["combined_probe_top1"] = jnp.mean(jnp.argmax(logits_q, -1) == jnp.asarray(comb.target_N))
    return res

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(revs), initial=len(have & {r.step for r in revs}), desc=f"metrics {family}", unit="rev")
  with open(path, "a") as f:
    for r in revs:
      if r.step in have:
        continue
      _, model = r.load()
      graphdef, state = nnx.split(model)
      res = jax.device_get(measure(graphdef, state))
      line = {"step": r.step, "tokens": r.tokens, "revision": r.name}
      line.update({k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in res.items()})
      f.write(json.dumps(line) + "\n")
      f.flush()
      if bar is not None:
        bar.update(1)
  if bar is not None:
    bar.close()
  return dict(revisions=len(revs), measured=len(revs) - len(have))


def _rewrite_complete(path: Path) -> None:
  good = []
  for ln in path.read_text().splitlines():
    try:
      json.loads(ln)
      good.append(ln)
    except json.JSONDecodeError:
      pass
  path.write_text("".join(g + "\n" for g in good))
