"""One jitted, batched measurement pass per revision: every head's row of the per-head table.

Legend: N probe examples, B chunk of examples, L layers, H heads, S = T keys, K head_dim, Q query positions,
D null draws, P baseline positions, M positions of one class target (4 for local).

    from circuits.discovery import measure
    df, extras = measure.measure_revision(model, probe, revision="step1000", step=1000, tokens=2.1e9)

The main pass is one jitted call per revision: a scan over chunks of B examples (default_chunk()), each run
through the model with capture_only (attention in fp32; the last layer at the query row only, no unembedding).
Per chunk it keeps only reductions of the query rows A[n, l, h, :] (class masses, baseline mass, null-position masses,
summed over the chunk) and the per-head z [B, L, H, K] at the query; the full rows [N, L, H, T] are
never gathered on the host (`keep_rows=True` returns them, for tests). Every number is fp32 on device.

Columns (beyond the table contract of circuits/discovery/table.py):
  pr_examples, pr_2000, pr_classic_2000, pr_2000_examples  PR on the first 500 / 2000 examples (N if fewer)
  null_sel_p95, null_sel_p99, null_sel_max   pooled null selectivity (paper baseline) of D = 500 draws x
                                             L x H: sel at one random non-target key per example and draw
  n_heads_above_null_p99                     heads whose best-class selectivity exceeds null_sel_p99
  tl_previous, tl_duplicate, tl_induction    TransformerLens detector scores ("mul"), on the rows of every
                                             query position of the first n_detect probe examples
  gu_alpha, gu_sink_pct                      Gu et al. alpha_h = mean_{t>=k} A[t, k] (same rows), and the
                                             percent of heads with alpha > eps (per revision)
  icl_score, icl_pos_early, icl_pos_late     Olsson ICL score on the natural-text batch: loss at token
                                             late minus loss at token early (diagnostics.icl_positions)
  resid_absmax, resid_absmedian, massive_ratio   per layer, on the first chunk (residual after the block)
  vnorm_first_ratio    per layer: max over kv heads of |v(first token)| / mean |v|, first chunk
  moe_imbalance, moe_router_entropy, moe_lb_loss, moe_z_loss, moe_load_max, moe_load_min,
  moe_topk_overlap_final                     per layer, MoE only, first chunk's tokens
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from circuits import diagnostics as D
from circuits.models import Capture

NAN = float("nan")


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
  """Knobs of the measurement pass (defaults: the paper's sizes)."""
  chunk: int = 64  # examples per jitted call of the detector, ICL and auxiliary passes
  main_chunk: Optional[int] = None  # examples per step of the main pass's scan (None: default_chunk())
  pr_sizes: tuple = (500, 2000)  # first n examples for `pr` and `pr_<n>`
  null_draws: int = 500
  null_seed: int = 0
  n_detect: int = 8  # probe examples whose every query row feeds the TL detectors and the Gu metric
  exclude_bos: bool = False
  exclude_current_token: bool = False
  gu_k: int = 0
  gu_eps: float = 0.3
  keep_rows: bool = False
  devices: Optional[int] = None  # local devices the main pass and the ablations spread over (None: all)


def probe_devices(n: Optional[int] = None) -> list:
  """The first n of this process's devices (all when None), that a revision's probe chunks are spread over.
  With one device everything runs as a single jitted call there; see capture and circuits.discovery.ablate."""
  devs = jax.local_devices()
  if n is not None and not 1 <= n <= len(devs):
    raise ValueError(f"devices={n}: this process has {len(devs)} local device(s); give 1..{len(devs)} or None")
  return devs if n is None else devs[:n]


def chunk_mesh(devices: list):
  """A 1-axis mesh ("chunks") over `devices`, along which probe chunks are spread (one or more per device)."""
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  return Mesh(np.array(devices), ("chunks",))


def replicate(state, mesh):
  """The model state placed once on every device of the mesh (each device holds a full copy)."""
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))


def add_in_order(parts: list):
  """Sum of a list of pytrees of fp32 arrays, left to right (parts[0] + parts[1] + ...), on the host: the
  order in which a single device's loop over the same chunks adds them up, so the total is the same bits."""
  total = parts[0]
  for p in parts[1:]:
    total = jax.tree.map(np.add, total, p)
  return total


def default_chunk() -> int:
  """Examples per step of the main pass: 4 on CPU, where a [4, H, T, T] attention map stays in cache (2-core
  machine, tiny NeoX fixture, N = 500, T = 256: 0.71 s at 64, 0.51-0.52 s at 4-16, 0.69 s at 2), 64 on
  accelerators (not measured here)."""
  return 4 if jax.default_backend() == "cpu" else 64


def split(model):
  """(graphdef, state) of an NNX model: jitted functions take the graphdef as a static argument."""
  return nnx.split(model)


def pad_rows(x, b: int):
  """Pads axis 0 of `x` to b rows by repeating row 0 (the last chunk of a pass; padded rows are dropped)."""
  n = x.shape[0]
  if n == b:
    return x
  return np.concatenate([x, np.repeat(x[:1], b - n, axis=0)], axis=0)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _capture_scan(graphdef, keep_rows: bool, per_chunk: bool, state, tokens_CxBxT, qpos_CxB, valid_CxB, ab_CxB,
                  base_P, null_CxBxD):
  """The whole main pass in one call: a scan over C chunks of B examples. Returns diagnostics.selectivity_sums
  over the valid examples (class, baseline and null masses), z [C, B, L, H, K] and, with keep_rows, the
  rows [C, B, L, H, S]. Each chunk runs the model with capture_only (the last layer at the query rows).
  per_chunk: return each chunk's sums ([C, ...], for the caller to add up in chunk order) instead of their
  running total (the carry of the scan)."""
  model = nnx.merge(graphdef, state)

  def chunk(acc, xs):
    tokens_BxT, qpos_B, valid_B, ab_B, null_BxD = xs
    out = model(tokens_BxT, Capture(query_pos_B=qpos_B, capture_only=True))
    rows = out.rows_BxLxHxS.astype(jnp.float32) * valid_B[:, None, None, None]
    sums = D.selectivity_sums(rows, ab_B, base_P, null_BxD)
    if per_chunk:
      return acc, (sums, out.z_BxLxHxK, out.rows_BxLxHxS if keep_rows else None)
    acc = jax.tree.map(jnp.add, acc, sums)
    return acc, (out.z_BxLxHxK, out.rows_BxLxHxS if keep_rows else None)

  if per_chunk:
    return jax.lax.scan(chunk, (), (tokens_CxBxT, qpos_CxB, valid_CxB, ab_CxB, null_CxBxD))[1]
  b, t = tokens_CxBxT.shape[1:]
  rows0 = jax.ShapeDtypeStruct((b, len(model.blocks), model.cfg.n_heads, t), jnp.float32)
  acc0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                      jax.eval_shape(D.selectivity_sums, rows0, ab_CxB[0], base_P, null_CxBxD[0]))
  return jax.lax.scan(chunk, acc0, (tokens_CxBxT, qpos_CxB, valid_CxB, ab_CxB, null_CxBxD))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _capture_spread(graphdef, keep_rows: bool, mesh, state, tokens_CxBxT, qpos_CxB, valid_CxB, ab_CxB, base_P,
                    null_CxBxD):
  """_capture_scan(per_chunk=True) on every device of `mesh` at once (one program, one compile): device g scans
  its contiguous block of C / G chunks; returns every chunk's sums [C, ...], z and rows in chunk order."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  body = lambda st, *xs: _capture_scan(graphdef, keep_rows, True, st, *xs)
  c = P("chunks")
  return jax.shard_map(body, mesh=mesh, in_specs=(P(), c, c, c, c, P(), c), out_specs=c, check_vma=False)(
      state, tokens_CxBxT, qpos_CxB, valid_CxB, ab_CxB, base_P, null_CxBxD)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _detect_chunk(graphdef, state, tokens_BxT, exclude_bos, exclude_current, gu_k):
  """Attention mass on each of diagnostics.detector_masks (every query row), reduced inside the attention
  op (one forward pass, no pattern leaves it): [B, L, 5, H]."""
  masks_BxPxTxS = D.detector_masks(tokens_BxT, exclude_bos, exclude_current, gu_k)
  model = nnx.merge(graphdef, state)
  return model(tokens_BxT, Capture(patterns_BxPxTxS=masks_BxPxTxS)).pattern_sums_BxLxPxH


@functools.partial(jax.jit, static_argnums=(0,))
def _loss_chunk(graphdef, state, tokens_BxT):
  model = nnx.merge(graphdef, state)
  return D.token_losses(model(tokens_BxT).logits_BxTxV, tokens_BxT)


@functools.partial(jax.jit, static_argnums=(0,))
def _aux_chunk(graphdef, state, tokens_BxT):
  model = nnx.merge(graphdef, state)
  out = model(tokens_BxT, Capture(extremes=True))
  return out.extremes, out.moe


_pr = jax.jit(D.participation_ratio)


def null_positions(ab_N, seq_len: int, draws: int = 500, seed: int = 0) -> np.ndarray:
  """[N, D] random non-target keys: uniform over 1..T-7 minus {ab, ab+1} (never 0, a class target or the
  last six keys), one per example and draw, numpy RandomState(seed), example by example."""
  rng = np.random.RandomState(seed)
  out = np.empty((len(ab_N), draws), np.int32)
  base = np.arange(1, seq_len - 6)
  for n, ab in enumerate(np.asarray(ab_N)):
    allowed = base[(base != ab) & (base != ab + 1)]
    if not allowed.size:
      raise ValueError(f"seq_len={seq_len} leaves no non-target key for the null calibration")
    out[n] = allowed[rng.randint(0, allowed.size, size=draws)]
  return out


PROBE_KEYS = ("tokens_NxT", "query_pos_N", "target_N", "ab_N")


def as_probe(probe, n_examples: Optional[int] = None, keys: tuple = PROBE_KEYS) -> dict:
  """{key: numpy array} of a ProbeBatch or dict, its first n_examples examples (all when None)."""
  d = probe.as_dict() if hasattr(probe, "as_dict") else dict(probe)
  return {k: np.asarray(d[k])[:n_examples] for k in keys}


def capture(graphdef, state, probe, cfg: MeasureConfig = MeasureConfig(), baseline_pos_P=None) -> dict:
  """The main pass over the probe: diagnostics.selectivity_sums (class, baseline, null masses) over the N
  examples, z_NxLxHxK [, rows_NxLxHxS]."""
  p = as_probe(probe)
  tok, qpos, ab = p["tokens_NxT"].astype(np.int32), p["query_pos_N"].astype(np.int32), p["ab_N"]
  n, t = tok.shape
  if not np.all(qpos == t - 1):
    raise ValueError("selectivity needs the query at T-1 for every example (class targets are defined at "
                     "q = T-1); got query positions " + str(np.unique(qpos)[:5]))
  if baseline_pos_P is None:
    from circuits.data.probes import baseline_positions  # pylint: disable=import-outside-toplevel
    baseline_pos_P = baseline_positions(t, n=min(50, t - 7))  # the paper: 50 at T = 256
  base_P = jnp.asarray(np.asarray(baseline_pos_P, np.int32))
  null_NxD = null_positions(ab, t, cfg.null_draws, cfg.null_seed)
  b = min(default_chunk() if cfg.main_chunk is None else cfg.main_chunk, n)
  c = -(-n // b)
  # at least 2 chunks per device: XLA removes a scan of length 1 (a loop of one trip) and fuses its body
  # differently (float32 results then differ in the last bit for some models), so every device keeps a loop
  devices = probe_devices(cfg.devices)[:max(1, c // 2)]
  g = len(devices)
  c_pad = -(-c // g) * g  # whole blocks of chunks per device; padded chunks hold no valid example
  valid = (np.arange(c_pad * b) < n).astype(np.float32)
  as_chunks = lambda x: jnp.asarray(pad_rows(x, c_pad * b).reshape((c_pad, b) + x.shape[1:]))
  args = (as_chunks(tok), as_chunks(qpos), as_chunks(valid), as_chunks(ab.astype(np.int32)), base_P,
          as_chunks(null_NxD))
  if g == 1:
    sums, (z, rows) = _capture_scan(graphdef, cfg.keep_rows, False, state, *args)
  else:
    # Spread: each device scans its own block of chunks and returns each chunk's sums; the host adds them up
    # in chunk order, as the one-device scan does (the same fp32 additions in the same order).
    mesh = chunk_mesh(devices)
    per, z, rows = _capture_spread(graphdef, cfg.keep_rows, mesh, replicate(state, mesh), *args)
    per = jax.device_get(per)
    sums = add_in_order([jax.tree.map(lambda x, i=i: x[i], per) for i in range(c)])
  flat = lambda x: np.asarray(x).reshape((c_pad * b,) + x.shape[2:])[:n]
  out = {"sums": jax.device_get(sums), "n": n, "seq_len": t, "z_NxLxHxK": flat(z)}
  if cfg.keep_rows:
    out["rows_NxLxHxS"] = flat(rows)
  return out


def detectors(graphdef, state, probe, cfg: MeasureConfig = MeasureConfig()) -> dict:
  """TL detector scores and Gu alpha [L, H] from the rows of every query position (0..T-1) of the first
  n_detect examples, reduced inside the attention op (no attention pattern leaves it).

  Definitions: diagnostics.detector_masks and diagnostics.detector_scores.
  """
  tok = as_probe(probe)["tokens_NxT"].astype(np.int32)[:cfg.n_detect]
  n, t = tok.shape
  b = min(cfg.chunk, n)
  sums = np.concatenate([np.asarray(_detect_chunk(graphdef, state, pad_rows(tok[i:i + b], b), cfg.exclude_bos,
                                                  cfg.exclude_current_token, cfg.gu_k))[:min(b, n - i)]
                         for i in range(0, n, b)])  # [N, L, 5, H]
  return {k: np.asarray(v) for k, v in D.detector_scores(sums, t, cfg.gu_k).items()}


def icl(graphdef, state, natural, chunk: int = 64) -> dict:
  """Olsson ICL score on the natural-text batch (per revision): loss at `late` minus loss at `early`."""
  tok = as_probe(natural)["tokens_NxT"].astype(np.int32)
  n, t = tok.shape
  early, late = D.icl_positions(t)
  b = min(chunk, n)
  losses = []
  for i in range(0, n, b):
    j = min(i + b, n)
    losses.append(np.asarray(_loss_chunk(graphdef, state, pad_rows(tok[i:j], b)))[:j - i])
  loss_NxT = np.concatenate(losses)
  return {"icl_score": float(D.icl_score(loss_NxT, early, late)),
          "icl_pos_early": early, "icl_pos_late": late}


def aux_stats(graphdef, state, probe, chunk: int = 64) -> dict:
  """Extreme-token and MoE routing statistics on the first chunk of the probe (per layer)."""
  tok = as_probe(probe)["tokens_NxT"].astype(np.int32)[:chunk]
  ext, moe = jax.device_get(_aux_chunk(graphdef, state, tok))
  out = {"resid_absmax": ext["resid_absmax_L"], "resid_absmedian": ext["resid_absmedian_L"],
         "massive_ratio": np.asarray(D.massive_activation_ratio(ext["resid_absmax_L"], ext["resid_absmedian_L"])),
         # value-vector norm of the first (sink) token over the mean value norm, per layer (max over kv heads)
         "vnorm_first_ratio": (ext["v_norm_first_LxG"] / np.maximum(ext["v_norm_mean_LxG"], 1e-30)).max(-1)}
  if moe is not None:
    out.update(moe_imbalance=moe["imbalance_L"], moe_router_entropy=moe["router_entropy_L"],
               moe_lb_loss=moe["lb_loss_L"], moe_z_loss=moe["z_loss_L"],
               moe_load_max=moe["load_LxE"].max(-1), moe_load_min=moe["load_LxE"].min(-1),
               _topk_idx_LxNxK=moe["topk_idx_LxNxK"])
  return out


def measure_revision(model, probe, *, revision: str, step: int, tokens: float, natural=None,
                     cfg: MeasureConfig = MeasureConfig(), baseline_pos_P=None,
                     final_topk_idx_LxNxK: Optional[np.ndarray] = None) -> tuple[pd.DataFrame, dict]:
  """All per-head measurements of one revision: (DataFrame in the table contract, extras).

  `probe`: the synthetic (or in-distribution) induction batch, query at T-1 (a ProbeBatch or a dict with
  tokens_NxT, query_pos_N, target_N, ab_N). `natural`: optional natural-text batch for the ICL score
  (NaN without it). `final_topk_idx_LxNxK`: the final revision's top-k expert sets on the same tokens
  (MoE; `moe_topk_overlap_final` is NaN without it). extras holds z_NxLxHxK (for mean ablation), the
  null pool, moe top-k indices, and rows_NxLxHxS when cfg.keep_rows.
  """
  graphdef, state = split(model)
  cap = capture(graphdef, state, probe, cfg, baseline_pos_P)
  n, t = cap["n"], cap["seq_len"]
  sel = {k: np.asarray(v) for k, v in D.selectivity_from_sums(cap["sums"], n, t - 1).items()}
  z = cap["z_NxLxHxK"]
  l, h = z.shape[1], z.shape[2]
  cols: dict[str, Any] = {k: v for k, v in sel.items() if k.startswith("sel_")}
  for i, size in enumerate(cfg.pr_sizes):
    m = min(size, n)
    pr = jax.device_get(_pr(jnp.asarray(z[:m])))
    suffix = "" if i == 0 else f"_{size}"
    cols[f"pr{suffix}"], cols[f"pr_classic{suffix}"] = pr["pr"], pr["pr_classic"]
    cols[f"pr{suffix}_examples" if suffix else "pr_examples"] = m
  null = sel["null_sel_DxLxH"].reshape(-1)
  p95, p99, pmax = np.percentile(null, 95), np.percentile(null, 99), null.max()
  best = np.max(np.stack([sel[f"sel_{c}"] for c in D.CLASSES]), axis=0)
  cols.update(null_sel_p95=p95, null_sel_p99=p99, null_sel_max=pmax,
              n_heads_above_null_p99=int((best > p99).sum()))
  if cfg.n_detect > 0:
    det = detectors(graphdef, state, probe, cfg)
    cols.update(det)
    cols["gu_sink_pct"] = float(D.sink_rate(jnp.asarray(det["gu_alpha"]), cfg.gu_eps))
  cols.update(icl(graphdef, state, natural, cfg.chunk) if natural is not None else
              {"icl_score": NAN, "icl_pos_early": NAN, "icl_pos_late": NAN})
  aux = aux_stats(graphdef, state, probe, cfg.chunk)
  topk = aux.pop("_topk_idx_LxNxK", None)
  if topk is not None:
    cols["moe_topk_overlap_final"] = (np.asarray(D.topk_overlap(jnp.asarray(topk), jnp.asarray(final_topk_idx_LxNxK)))
                                      if final_topk_idx_LxNxK is not None else np.full(l, NAN))
  layer_cols = {k: np.asarray(v) for k, v in aux.items()}
  if "moe_topk_overlap_final" in cols:
    layer_cols["moe_topk_overlap_final"] = np.asarray(cols.pop("moe_topk_overlap_final"))
  ll, hh = np.meshgrid(np.arange(l), np.arange(h), indexing="ij")
  data: dict[str, Any] = {"revision": str(revision), "step": int(step), "tokens": float(tokens),
                          "layer": ll.reshape(-1), "head": hh.reshape(-1)}
  for k, v in cols.items():
    v = np.asarray(v, dtype=np.float64)
    data[k] = v.reshape(-1) if v.shape == (l, h) else np.full(l * h, float(v))
  for k, v in layer_cols.items():
    data[k] = np.repeat(np.asarray(v, np.float64), h)
  df = pd.DataFrame(data)
  extras = {"z_NxLxHxK": z, "null_pool": null, "topk_idx_LxNxK": None if topk is None else np.asarray(topk)}
  if cfg.keep_rows:
    extras["rows_NxLxHxS"] = cap["rows_NxLxHxS"]
  return df, extras


# ------------------------------------------------------------------------------------------- timing


def time_pass_vs_reference(model, hf_model, probe, *, batch_ref: int = 4, cfg: MeasureConfig = MeasureConfig(),
                           repeats: int = 1) -> dict:
  """Seconds for our measurement pass (main capture + selectivity + PR; after a warm-up compile) vs a
  paper-style reference on the same probe: HF eager forward with output_attentions=True, forward
  pre-hooks on every layer's output projection capturing z, batch `batch_ref`, full [B, H, T, T] maps,
  query rows sliced on the host. Returns {"ours_s", "ours_compile_s", "reference_s", "n", "seq_len"}.
  """
  import torch  # pylint: disable=import-outside-toplevel

  p = as_probe(probe)
  graphdef, state = split(model)
  cfg = dataclasses.replace(cfg, n_detect=0)

  def ours():
    cap = capture(graphdef, state, p, cfg)
    jax.block_until_ready(D.selectivity_from_sums(cap["sums"], cap["n"], cap["seq_len"] - 1))
    jax.block_until_ready(_pr(jnp.asarray(cap["z_NxLxHxK"][:cfg.pr_sizes[0]])))

  t0 = time.perf_counter()
  ours()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(repeats):
    ours()
  ours_s = (time.perf_counter() - t0) / repeats

  outs = [m for name, m in hf_model.named_modules() if name.endswith(("attention.dense", "self_attn.o_proj"))]
  captured = []
  hooks = [m.register_forward_pre_hook(lambda mod, args: captured.append(args[0][:, -1].detach().clone()))
           for m in outs]
  tok = p["tokens_NxT"]
  t0 = time.perf_counter()
  with torch.no_grad():
    for _ in range(repeats):
      rows, zs = [], []
      for i in range(0, tok.shape[0], batch_ref):
        captured.clear()
        o = hf_model(torch.as_tensor(tok[i:i + batch_ref], dtype=torch.long), output_attentions=True)
        rows.append(torch.stack([a[:, :, -1, :] for a in o.attentions], 1).float())
        zs.append(torch.stack(list(captured), 1))
      torch.cat(rows)
      z = torch.cat(zs)[:cfg.pr_sizes[0]]  # [N, L, H*K]
      z = z.reshape(z.shape[0], z.shape[1], rows[0].shape[2], -1).permute(1, 2, 0, 3)
      torch.linalg.svdvals(z)
  ref_s = (time.perf_counter() - t0) / repeats
  for hk in hooks:
    hk.remove()
  return {"ours_s": ours_s, "ours_compile_s": compile_s, "reference_s": ref_s, "n": int(tok.shape[0]),
          "seq_len": int(tok.shape[1])}
