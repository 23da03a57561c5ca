"""Causal checks of the induction circuit at EVERY revision (the paper did only the final one).

Legend: N examples, B chunk, T length, V vocab, L layers, H heads, K head_dim.

    rows = ablate.ablate_revision(model, {"synthetic": probe, "natural": nat}, sel_induction_LxH,
                                  revision="step1000", step=1000, tokens=2.1e9)

Circuit = heads with sel_induction >= threshold (50) at this revision; if none, the top-3 heads by
sel_induction (`circuit_source` says which). Heads are ablated at the output-projection input:
zero ablation (head_scale 0) and mean ablation (z replaced, at every position, by the mean over the
probe batch of the head's z at the query). Conditions (`condition` column):
  clean                 no ablation
  circuit_zero/_mean    the circuit's heads
  random_zero/_mean     matched-random controls: in each circuit layer, as many random non-circuit heads as
                        the layer has circuit heads (one per circuit head), one row per seed (>= 20 seeds)
  layers_zero/_mean     every head of the circuit's layers
Metrics at the query (means over examples): top1 and top5 (target in the top-1 / top-5 logits), loss
(cross-entropy of the target), target_logit. Rows follow the ablation-table contract of
circuits/discovery/analysis.py (ABLATION_COLUMNS), plus circuit_heads, circuit_source, ablated_heads,
n_ablated, n_examples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from circuits import losses
from circuits.discovery.measure import as_probe, chunk_mesh, pad_rows, replicate
from circuits.models import Capture

NAN = float("nan")


@functools.partial(jax.jit, static_argnums=(0,))
def _eval_chunk(graphdef, state, tokens_BxT, qpos_B, target_B, valid_B, scale_LxH, replace_LxHxK, mask_LxH):
  """Sums over valid examples of top1, top5, loss, target logit at the query (one compile for all)."""
  model = nnx.merge(graphdef, state)
  out = model(tokens_BxT, Capture(head_scale_LxH=scale_LxH, head_replace_LxHxK=replace_LxHxK, replace_mask_LxH=mask_LxH))
  b = tokens_BxT.shape[0]
  logits_BxV = out.logits_BxTxV[jnp.arange(b), qpos_B].astype(jnp.float32)
  tl_B = logits_BxV[jnp.arange(b), target_B]
  rank_B = jnp.sum(logits_BxV > tl_B[:, None], axis=-1)  # number of strictly larger logits
  loss_B = losses.cross_entropy(target_B[:, None], logits_BxV[:, None])[0][:, 0]
  f = lambda x: jnp.sum(x.astype(jnp.float32) * valid_B)
  return {"top1": f(rank_B < 1), "top5": f(rank_B < 5), "loss": f(loss_B), "target_logit": f(tl_B)}


@functools.partial(jax.jit, static_argnums=(0,))
def _z_chunk(graphdef, state, tokens_BxT, qpos_B, valid_B):
  model = nnx.merge(graphdef, state)
  z = model(tokens_BxT, Capture(query_pos_B=qpos_B)).z_BxLxHxK
  return jnp.sum(z * valid_B[:, None, None, None], axis=0)


def _chunks(probe: dict, chunk: int):
  tok, q, tgt = (np.asarray(probe[k], np.int32) for k in ("tokens_NxT", "query_pos_N", "target_N"))
  n = tok.shape[0]
  b = min(chunk, n)
  for i in range(0, n, b):
    j = min(i + b, n)
    valid = np.zeros(b, np.float32)
    valid[:j - i] = 1
    yield pad_rows(tok[i:j], b), pad_rows(q[i:j], b), pad_rows(tgt[i:j], b), valid


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _spread_chunks(fn, graphdef, mesh, state, tokens_GxBxT, qpos_GxB, target_GxB, valid_GxB, *args):
  """fn(graphdef, state, one chunk's inputs, *args) for G chunks at once, chunk g on device g of `mesh` (one
  program, one compile); outputs stacked [G, ...] in chunk order."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  def local(st, tok, q, tgt, valid, *a):
    return jax.tree.map(lambda x: x[None], fn(graphdef, st, tok[0], q[0], tgt[0], valid[0], *a))

  g = P("chunks")
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), g, g, g, g) + (P(),) * len(args), out_specs=g,
                       check_vma=False)(state, tokens_GxBxT, qpos_GxB, target_GxB, valid_GxB, *args)


def _over_chunks(fn, graphdef, state, probe: dict, chunk: int, mesh, *args) -> list:
  """[(fn's host result, valid examples)] of every chunk of the probe, in chunk order. With a mesh of G
  devices (and `state` replicated on it), G chunks run at once, one per device; every call is dispatched
  before any result is read. Each chunk's numbers are computed by the same program whatever device runs it,
  so sums taken over this list in order equal the one-device sums."""
  chunks = list(_chunks(probe, chunk))
  if mesh is None:
    outs = [(fn(graphdef, state, *xs, *args), xs[-1]) for xs in chunks]
    return [(jax.device_get(o), float(v.sum())) for o, v in outs]
  g = mesh.devices.size
  empty = tuple(np.zeros_like(x) for x in chunks[0])  # fills the last group; never read
  groups = []
  for i in range(0, len(chunks), g):
    part = chunks[i:i + g]
    stacked = [np.stack(x) for x in zip(*(part + [empty] * (g - len(part))))]
    groups.append((_spread_chunks(fn, graphdef, mesh, state, *stacked, *args), part))
  res = []
  for out, part in groups:
    out = jax.device_get(out)
    res += [(jax.tree.map(lambda x, j=j: x[j], out), float(xs[-1].sum())) for j, xs in enumerate(part)]
  return res


def _z_sums(graphdef, state, tokens_BxT, qpos_B, target_B, valid_B):
  del target_B
  return _z_chunk(graphdef, state, tokens_BxT, qpos_B, valid_B)


def mean_z(graphdef, state, probe: dict, chunk: int = 64, mesh=None) -> np.ndarray:
  """[L, H, K] mean over the probe's examples of each head's z at the query. mesh: spread the chunks over
  its devices (`state` replicated there: measure.replicate)."""
  acc, n = None, 0
  for s, m in _over_chunks(_z_sums, graphdef, state, probe, chunk, mesh):
    s = np.asarray(s)
    acc = s if acc is None else acc + s
    n += int(m)
  return acc / n


def evaluate(graphdef, state, probe: dict, scale_LxH, replace_LxHxK, mask_LxH, chunk: int = 64, mesh=None) -> dict:
  """Mean top1, top5, loss, target_logit at the query under one ablation. mesh: spread the chunks over its
  devices (`state` replicated there: measure.replicate); the same numbers as one device."""
  acc, n = None, 0
  for s, m in _over_chunks(_eval_chunk, graphdef, state, probe, chunk, mesh, jnp.asarray(scale_LxH),
                           jnp.asarray(replace_LxHxK), jnp.asarray(mask_LxH)):
    acc = s if acc is None else {k: acc[k] + s[k] for k in acc}
    n += int(m)
  return {k: float(v) / n for k, v in acc.items()}


def select_circuit(sel_induction_LxH, threshold: float = 50.0, fallback_top: int = 3):
  """(sorted list of (layer, head), source string). Fallback: the top `fallback_top` by sel_induction."""
  s = np.nan_to_num(np.asarray(sel_induction_LxH, np.float64), nan=-np.inf)
  heads = [tuple(map(int, x)) for x in np.argwhere(s >= threshold)]
  if heads:
    return sorted(heads), f"sel_induction>={threshold:g}"
  order = np.argsort(-s.reshape(-1), kind="stable")[:fallback_top]
  h = s.shape[1]
  return sorted((int(i // h), int(i % h)) for i in order), f"fallback_top{fallback_top}_by_sel_induction"


def matched_random(circuit, n_heads: int, seed: int):
  """One random non-circuit head per circuit head, in the same layer (numpy RandomState(seed), layers in
  ascending order). A layer with fewer non-circuit heads than circuit heads gives all it has."""
  rng = np.random.RandomState(seed)
  out = []
  for layer in sorted({l for l, _ in circuit}):
    mine = {h for l, h in circuit if l == layer}
    pool = np.array([h for h in range(n_heads) if h not in mine])
    k = min(len(mine), len(pool))
    out += [(layer, int(h)) for h in sorted(rng.choice(pool, k, replace=False))] if k else []
  return out


def _fmt(heads) -> str:
  return " ".join(f"L{l}H{h}" for l, h in heads)


def ablate_revision(model, probes: dict, sel_induction_LxH, *, revision: str, step: int, tokens: float,
                    threshold: float = 50.0, n_seeds: int = 20, seed: int = 0, chunk: int = 64,
                    n_examples: int | None = None, z_means: dict | None = None, devices=None) -> pd.DataFrame:
  """Ablation rows of one revision on each probe ({name: ProbeBatch or dict}).

  z_means: optional {probe name: [L, H, K]} means of z at the query (computed when missing).
  Random controls use seeds seed .. seed + n_seeds - 1 (the same heads for zero and mean ablation).
  devices: None (one device) or a list of local devices to spread each pass's chunks over (the same numbers).
  """
  if n_seeds < 1:
    raise ValueError("n_seeds must be >= 1 (the methods ask for >= 20)")
  graphdef, state = nnx.split(model)
  mesh = chunk_mesh(list(devices)) if devices and len(devices) > 1 else None
  state = state if mesh is None else replicate(state, mesh)
  spread = dict(mesh=mesh)
  sel = np.asarray(sel_induction_LxH)
  l, h = sel.shape
  circuit, source = select_circuit(sel, threshold)
  layers = sorted({x for x, _ in circuit})
  sets = [("circuit", NAN, circuit), ("layers", NAN, [(x, y) for x in layers for y in range(h)])]
  sets += [("random", float(s), matched_random(circuit, h, s)) for s in range(seed, seed + n_seeds)]
  ones, zeros_mask = np.ones((l, h), np.float32), np.zeros((l, h), bool)
  rows = []
  for pname, p in probes.items():
    pd_ = as_probe(p, n_examples, keys=("tokens_NxT", "query_pos_N", "target_N"))
    zm = (z_means or {}).get(pname)
    zm = mean_z(graphdef, state, pd_, chunk, **spread) if zm is None else np.asarray(zm, np.float32)
    base = dict(revision=str(revision), step=int(step), tokens=float(tokens), probe=pname,
                circuit_heads=_fmt(circuit), circuit_source=source, n_examples=len(pd_["target_N"]))
    rows.append({**base, "condition": "clean", "seed": NAN, "ablated_heads": "", "n_ablated": 0,
                 **evaluate(graphdef, state, pd_, ones, zm, zeros_mask, chunk, **spread)})
    for name, sd, heads in sets:
      m = np.zeros((l, h), bool)
      for x, y in heads:
        m[x, y] = True
      for kind in ("zero", "mean"):
        scale = np.where(m, 0.0, 1.0).astype(np.float32) if kind == "zero" else ones
        mask = m if kind == "mean" else zeros_mask
        rows.append({**base, "condition": f"{name}_{kind}", "seed": sd, "ablated_heads": _fmt(heads),
                     "n_ablated": len(heads), **evaluate(graphdef, state, pd_, scale, zm, mask, chunk, **spread)})
  cols = ["revision", "step", "tokens", "probe", "condition", "seed", "top1", "top5", "loss", "target_logit",
          "n_ablated", "ablated_heads", "circuit_heads", "circuit_source", "n_examples"]
  df = pd.DataFrame(rows)[cols]
  order = {c: i for i, c in enumerate(["clean", "circuit_zero", "circuit_mean", "random_zero", "random_mean",
                                       "layers_zero", "layers_mean"])}
  df["_o"] = df["condition"].map(order)
  return df.sort_values(["probe", "_o", "seed"], kind="mergesort").drop(columns="_o").reset_index(drop=True)
