"""Dropless top-k mixture of SwiGLU experts (OLMoE).

Legend: B batch, T length, D d_model, E experts, F expert width, K top-k, N = B*T tokens.
Router: Linear D->E without bias, softmax in fp32, top-k, the selected gates NOT renormalised
(`norm_topk_prob=True` renormalises). Dropless: every token reaches its k experts; "ragged" sorts the
N*K assignments by expert and runs grouped matmuls (jax.lax.ragged_dot), "dense" runs every expert on
every token and combines with zero gates elsewhere (same result; for tests and small E).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from circuits import diagnostics
from circuits.models import layers as L
from circuits.models.config import ModelConfig


class MoE(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, e, f, pd, std = cfg.d_model, cfg.n_experts, cfg.d_ff, cfg.param_dtype, cfg.init_std
    self.cfg = cfg
    self.router = L.param(rngs, (d, e), (L.EMBED, None), std=std, dtype=pd)
    self.gate = L.param(rngs, (e, d, f), (L.EXPERT, L.EMBED, L.MLP), std=std, dtype=pd)
    self.up = L.param(rngs, (e, d, f), (L.EXPERT, L.EMBED, L.MLP), std=std, dtype=pd)
    self.down = L.param(rngs, (e, f, d), (L.EXPERT, L.MLP, L.EMBED), std=std, dtype=pd)

  def __call__(self, x_BxTxD):
    cfg, dt = self.cfg, x_BxTxD.dtype
    b, t, d = x_BxTxD.shape
    x_NxD = x_BxTxD.reshape(b * t, d)
    logits_NxE = (x_NxD @ self.router[...].astype(dt)).astype(jnp.float32)
    probs_NxE = jax.nn.softmax(logits_NxE, axis=-1)
    gates_NxK, idx_NxK = jax.lax.top_k(probs_NxE, cfg.top_k)
    if cfg.norm_topk_prob:
      gates_NxK = gates_NxK / gates_NxK.sum(-1, keepdims=True)
    gates_NxK = gates_NxK.astype(dt)
    wg, wu, wd = (w[...].astype(dt) for w in (self.gate, self.up, self.down))
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
      g_MxF = checkpoint_name(jax.lax.ragged_dot(xs_MxD, wg, sizes_E), "mlpwi_0")  # remat tags (models/remat.py)
      u_MxF = checkpoint_name(jax.lax.ragged_dot(xs_MxD, wu, sizes_E), "mlpwi_1")
      h_MxF = jax.nn.silu(g_MxF) * u_MxF
      ys_MxD = checkpoint_name(jax.lax.ragged_dot(h_MxF, wd, sizes_E), "mlpwo")
      ys_MxD = ys_MxD * gates_NxK.reshape(-1)[order_M][:, None]
      y_NxD = jnp.zeros_like(x_NxD).at[token_M].add(ys_MxD)
    stats = diagnostics.routing_stats(probs_NxE, idx_NxK, logits_NxE)
    stats["topk_idx_NxK"] = idx_NxK
    return y_NxD.reshape(b, t, d), stats
