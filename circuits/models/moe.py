"""Dropless top-k mixture of SwiGLU experts (OLMoE).

Legend: B batch, T length, D d_model, E experts, F expert width, K top-k, N = B*T tokens, M = N*K assignments.
Router: Linear D->E without bias, softmax in fp32, top-k, the selected gates NOT renormalised
(`norm_topk_prob=True` renormalises). Dropless: every token reaches its k experts.

`cfg.moe_impl` chooses how the experts are computed (all give the same result up to float rounding):
  "ragged": sort the M assignments by expert and run grouped matmuls with jax.lax.ragged_dot (TPU and GPU lower
    it to chlo.ragged_dot; XLA:CPU lowers it densely, to masked [E, M, D] copies, so CPU memory figures of
    this path are not device figures);
  "gmm": the same sort with the Pallas megablox grouped matmul (custom_vjp; native on TPU, Pallas interpret
    mode on every other backend, where it is a loop over tiles: slow, but its compiled memory is the real
    O(M*D) working set, so it is the CPU path for memory estimates);
  "dense": every expert on every token, combined with zero gates elsewhere (for tests and small E).

Per-device routing: when an abstract mesh whose batch axes (circuits.train.sharding.BATCH_AXES) have more than
one device is active (`jax.sharding.use_abstract_mesh`, as circuits.train's step does), routing and expert
compute run under `jax.shard_map` over those axes: each device sorts and bincounts its own tokens and the
expert weights enter replicated (P(); GSPMD all-gathers the fsdp shards, as for any dense weight). The router
statistics are then the global-batch values: load, the per-slot assignment fractions f and the mean router
probabilities P, entropy and z-loss are token means (pmean over the batch axes of equal-sized shards), and
lb_loss = E * sum f * P and imbalance = max/mean load are formed from the pmean'd f, P and load.
Expert parallelism (experts split over the "expert" axis, tokens exchanged with jax.lax.ragged_all_to_all) is not
implemented: XLA:CPU does not implement ragged-all-to-all, so it could not be tested here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from circuits import diagnostics
from circuits.models import layers as L
from circuits.models.config import ModelConfig

GMM_TILE = 128  # megablox tile size (m, k and n), lowered where a dimension is smaller


def grouped_matmul(x_MxD, w_ExDxF, sizes_E, impl: str):
  """y[m] = x[m] @ w[g(m)] where rows are grouped by expert in order (group e has sizes_E[e] rows; the MoE's
  groups cover every row: rows past sum(sizes_E) are 0 for ragged_dot and unspecified for gmm).
  impl "ragged": jax.lax.ragged_dot; "gmm": megablox gmm (Pallas interpret mode off TPU)."""
  if impl == "ragged":
    return jax.lax.ragged_dot(x_MxD, w_ExDxF, sizes_E)
  if impl != "gmm":
    raise ValueError(f"grouped_matmul: impl must be 'ragged' or 'gmm' (got {impl!r})")
  from jax.experimental.pallas.ops.tpu.megablox import gmm  # pallas imports are slow: only when used

  m, d = x_MxD.shape
  f = w_ExDxF.shape[-1]
  tm = min(GMM_TILE, 8 * math.ceil(m / 8))
  pad = -m % tm  # megablox needs M divisible by its m tile: zero rows past the groups, dropped after
  xp = jnp.pad(x_MxD, ((0, pad), (0, 0))) if pad else x_MxD
  y = gmm(xp, w_ExDxF, sizes_E, x_MxD.dtype, (tm, min(GMM_TILE, d), min(GMM_TILE, f)),
          interpret=jax.default_backend() != "tpu")
  return y[:m] if pad else y


class MoE(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, e, f, pd, std = cfg.d_model, cfg.n_experts, cfg.d_ff, cfg.param_dtype, cfg.init_std
    self.cfg = cfg
    self.router = L.param(rngs, (d, e), (L.EMBED, None), std=std, dtype=pd)
    self.gate = L.param(rngs, (e, d, f), (L.EXPERT, L.EMBED, L.MLP), std=std, dtype=pd)
    self.up = L.param(rngs, (e, d, f), (L.EXPERT, L.EMBED, L.MLP), std=std, dtype=pd)
    self.down = L.param(rngs, (e, f, d), (L.EXPERT, L.MLP, L.EMBED), std=std, dtype=pd)

  def __call__(self, x_BxTxD):
    """(y_BxTxD, stats): stats are diagnostics.routing_stats of the whole batch plus topk_idx_NxK."""
    ws = tuple(w[...] for w in (self.router, self.gate, self.up, self.down))  # cast to dt where used
    axes = L.batch_axes(x_BxTxD.shape[0], "MoE")
    if not axes:
      y_BxTxD, probs_NxE, idx_NxK, logits_NxE = _route_and_compute(self.cfg, x_BxTxD, *ws)
      stats = diagnostics.routing_stats(probs_NxE, idx_NxK, logits_NxE)
      stats["topk_idx_NxK"] = idx_NxK
      return y_BxTxD, stats

    checked = self.cfg.moe_impl != "gmm"

    def local(x_bxTxD, *ws):
      if checked:  # made varying in fp32, before the cast: the transpose's psum of their gradients is fp32
        ws = tuple(jax.lax.pcast(w, axes, to="varying") for w in ws)
      y_bxTxD, probs_nxE, idx_nxK, logits_nxE = _route_and_compute(self.cfg, x_bxTxD, *ws)
      s = diagnostics.routing_stats(probs_nxE, idx_nxK, logits_nxE)
      e = probs_nxE.shape[-1]
      frac_KxE = (idx_nxK[..., None] == jnp.arange(e)).astype(jnp.float32).mean(0)
      means = jax.lax.pmean(dict(load=s["load"], router_entropy=s["router_entropy"], z_loss=s["z_loss"],
                                 frac_KxE=frac_KxE, p_E=probs_nxE.mean(0)), axes)
      return y_bxTxD, idx_nxK, means

    # The weights enter in their param dtype (fp32), so their gradients are summed over the devices in fp32
    # (a bf16 psum there crashed XLA:CPU's compile: "Invalid binary instruction opcode copy", jax 0.10.2).
    # megablox's group metadata (jnp.histogram) fails jax's varying-axes check inside shard_map (an
    # AssertionError in hijax searchsorted, jax 0.10.2): that path runs unchecked (equal results, tested).
    spec = P(axes)
    y_BxTxD, idx_NxK, g = jax.shard_map(local, in_specs=(spec,) + (P(),) * 4, out_specs=(spec, spec, P()),
                                        axis_names=set(axes), check_vma=checked)(x_BxTxD, *ws)
    e = self.cfg.n_experts
    stats = {"load": g["load"], "imbalance": g["load"].max() / g["load"].mean(),
             "router_entropy": g["router_entropy"], "lb_loss": e * jnp.sum(g["frac_KxE"] * g["p_E"][None, :]),
             "z_loss": g["z_loss"], "topk_idx_NxK": idx_NxK}
    return y_BxTxD, stats


def _route_and_compute(cfg: ModelConfig, x_BxTxD, wr_DxE, wg_ExDxF, wu_ExDxF, wd_ExFxD):
  """Route the B*T tokens and run their experts: (y_BxTxD, probs_NxE, idx_NxK, logits_NxE)."""
  dt = x_BxTxD.dtype
  b, t, d = x_BxTxD.shape
  x_NxD = x_BxTxD.reshape(b * t, d)
  wr_DxE, wg_ExDxF, wu_ExDxF, wd_ExFxD = (w.astype(dt) for w in (wr_DxE, wg_ExDxF, wu_ExDxF, wd_ExFxD))
  logits_NxE = (x_NxD @ wr_DxE).astype(jnp.float32)
  probs_NxE = jax.nn.softmax(logits_NxE, axis=-1)
  gates_NxK, idx_NxK = jax.lax.top_k(probs_NxE, cfg.top_k)
  if cfg.norm_topk_prob:
    gates_NxK = gates_NxK / gates_NxK.sum(-1, keepdims=True)
  gates_NxK = gates_NxK.astype(dt)
  wg, wu, wd = wg_ExDxF, wu_ExDxF, wd_ExFxD
  if cfg.moe_impl == "dense":
    # the experts side by side as two flat matmuls, [N,D] @ [D,E*F] and [N,E*F] @ [E*F,D]: no batched
    # einsum, whose backward XLA:CPU laid out with activation-sized transposes (laptop OLMoE step 242 -> 179 ms,
    # one core, batch 32 x T 64, measured side by side)
    n, e, f = b * t, cfg.n_experts, wg.shape[-1]
    combine_NxE = jnp.zeros_like(probs_NxE, dtype=dt).at[jnp.arange(n)[:, None], idx_NxK].add(gates_NxK)
    g_NxEF = x_NxD @ wg.transpose(1, 0, 2).reshape(d, e * f)
    u_NxEF = x_NxD @ wu.transpose(1, 0, 2).reshape(d, e * f)
    h_NxExF = (jax.nn.silu(g_NxEF) * u_NxEF).reshape(n, e, f) * combine_NxE[:, :, None]
    y_NxD = h_NxExF.reshape(n, e * f) @ wd.reshape(e * f, d)
  else:
    flat_M = idx_NxK.reshape(-1)  # M = N*K assignments
    order_M = jnp.argsort(flat_M, stable=True)
    token_M = order_M // cfg.top_k
    xs_MxD = x_NxD[token_M]
    sizes_E = jnp.bincount(flat_M, length=cfg.n_experts).astype(jnp.int32)
    mm = lambda a, w: grouped_matmul(a, w, sizes_E, cfg.moe_impl)
    g_MxF = checkpoint_name(mm(xs_MxD, wg), "mlpwi_0")  # remat tags (models/remat.py)
    u_MxF = checkpoint_name(mm(xs_MxD, wu), "mlpwi_1")
    h_MxF = jax.nn.silu(g_MxF) * u_MxF
    ys_MxD = checkpoint_name(mm(h_MxF, wd), "mlpwo")
    ys_MxD = ys_MxD * gates_NxK.reshape(-1)[order_M][:, None]
    y_NxD = jnp.zeros_like(x_NxD).at[token_M].add(ys_MxD)
  return y_NxD.reshape(b, t, d), probs_NxE, idx_NxK, logits_NxE
