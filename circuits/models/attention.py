"""THE attention of every family: MHA/GQA, partial rotary, clip_qkv, full-width QK-norm, fp32 softmax.

Legend: B batch, T queries, S keys, D d_model, H heads, G kv heads, R = H / G, K head_dim, L layers.

Besides its output, the op can return, when asked (never a [B, H, T, S] tensor):
  stats: per-head reductions of the probabilities (defined by circuits.diagnostics.attention_reductions; computed
    from per-row statistics by diagnostics.reductions_from_row_stats, tested equal), each [H];
  pattern_sums_BxPxH: per example, the attention mass on each of P given 0/1 key patterns [B, P, T, S];
  rows_BxHxS / z_BxHxK: the attention row and the pre-output-projection vector at one query per example;
and it can scale (zero) or replace chosen heads' z at the output-projection input, for ablations.

How it is computed is `model.attention_impl` (the math is the same): "exact" (`attend`: the [B, H, T, S] weights
are materialised; discovery, captures, pattern sums and query-row calls always use it), "blockwise"
(circuits.models.blockwise: online softmax over key blocks, no [T, S] array kept for the backward pass),
"splash" / "cudnn" (circuits.models.kernels, TPU / GPU; their stats come from the blockwise stats pass), "auto".
Stats and ablations are available with every impl; the stats are fp32 and equal across impls.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from circuits import diagnostics
from circuits.models import blockwise, kernels
from circuits.models import layers as L
from circuits.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Probe:
  """What one attention call should capture or change (all optional; arrays are per layer)."""
  stats: bool = False
  extremes: bool = False  # value-vector norms at the first token vs all tokens (per kv head)
  query_pos_B: jax.Array | None = None  # capture rows and z at these query positions
  query_rows_only: bool = False  # compute only the query rows at query_pos_B (keys and values everywhere)
  head_scale_H: jax.Array | None = None  # multiply each head's z (0 = zero ablation)
  head_replace_HxK: jax.Array | None = None  # replace z of heads where replace_mask_H ...
  replace_mask_H: jax.Array | None = None  # ... is True (e.g. mean ablation), at every position
  patterns_BxPxTxS: jax.Array | None = None  # 0/1 key patterns: return sum_{t,s} A * pattern per example
  impl: str | None = None  # override model.attention_impl for this call (captures force "exact" anyway)


@struct.dataclass
class Capture:
  """What one model call (`LM.__call__`) captures or changes; `layer(i)` is layer i's `Probe`. All optional.

  stats: per-head reductions of the attention probabilities, [L, H] each (ModelOutput.attn_stats).
  extremes: residual-stream extremes and value-vector norms per layer (ModelOutput.extremes).
  query_pos_B: capture each example's attention row and z at this query (ModelOutput.rows_BxLxHxS, z_BxLxHxK).
  patterns_BxPxTxS: 0/1 key patterns whose attention mass sum_{t,s} A[t, s] * pattern[t, s] is returned per
    example, layer, pattern and head (ModelOutput.pattern_sums_BxLxPxH).
  head_scale_LxH: multiplies each head's pre-output-projection vector z (0 is zero ablation).
  replace_mask_LxH, head_replace_LxHxK: z of the masked heads is head_replace_LxHxK at every position (mean
    ablation). Captured z is taken before its own layer's ablation.
  capture_only: return only the captures at query_pos_B (rows and z; logits None) and compute no more than
    they need: the last layer's attention at the query rows alone, no last MLP, no unembedding.
  hidden_only: return the final-normed hidden states instead of the logits (for circuits.losses' chunked
    cross-entropy, which forms the logits a chunk at a time).
  A pytree (the arrays are leaves, the flags static), so it can be an argument of a jitted function.
  """
  stats: bool = struct.field(pytree_node=False, default=False)
  extremes: bool = struct.field(pytree_node=False, default=False)
  query_pos_B: jax.Array | None = None
  patterns_BxPxTxS: jax.Array | None = None
  head_scale_LxH: jax.Array | None = None
  head_replace_LxHxK: jax.Array | None = None
  replace_mask_LxH: jax.Array | None = None
  capture_only: bool = struct.field(pytree_node=False, default=False)
  hidden_only: bool = struct.field(pytree_node=False, default=False)

  def validate(self, n_layers: int) -> None:
    """Raise ValueError on a combination the model cannot honour (see the class docstring)."""
    if self.capture_only and (self.query_pos_B is None or self.stats or self.extremes
                              or self.patterns_BxPxTxS is not None):
      raise ValueError("capture_only computes the query rows of the last layer only: it needs query_pos_B "
                       "and returns no stats, extremes or pattern sums (ask for those without capture_only)")
    if self.capture_only and self.hidden_only:
      raise ValueError("capture_only returns no hidden states (the last layer stops at the query rows): "
                       "ask for hidden_only in a separate call")
    if (self.replace_mask_LxH is None) != (self.head_replace_LxHxK is None):
      raise ValueError("replace_mask_LxH and head_replace_LxHxK go together (the heads to replace and what "
                       "replaces their z): give both or neither")
    for name in ("head_scale_LxH", "head_replace_LxHxK", "replace_mask_LxH"):
      a = getattr(self, name)
      if a is not None and jnp.shape(a)[0] != n_layers:
        raise ValueError(f"{name} has {jnp.shape(a)[0]} layers, the model {n_layers}: give one row per layer")

  def layer(self, i: int, impl: str | None = None) -> Probe:
    """Layer i's `Probe` (the per-layer rows of the [L, ...] arrays); impl overrides model.attention_impl."""
    row = lambda a: None if a is None else a[i]
    return Probe(stats=self.stats, extremes=self.extremes, query_pos_B=self.query_pos_B,
                 patterns_BxPxTxS=self.patterns_BxPxTxS, head_scale_H=row(self.head_scale_LxH),
                 head_replace_HxK=row(self.head_replace_LxHxK), replace_mask_H=row(self.replace_mask_LxH),
                 impl=impl)


def causal_mask(positions_BxT, segment_ids_BxT=None):
  """[B, T, S] bool: key s visible from query t (s <= t, same segment if segment ids are given)."""
  t = positions_BxT.shape[1]
  mask_TxS = jnp.tril(jnp.ones((t, t), bool))
  mask_BxTxS = jnp.broadcast_to(mask_TxS, (positions_BxT.shape[0], t, t))
  if segment_ids_BxT is not None:
    mask_BxTxS = mask_BxTxS & (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])
  return mask_BxTxS


def masked_logits(logits_BxHxTxS, mask_BxTxS):
  """The logits plus fp32-min on hidden keys (visible keys unchanged). An additive 0 / fp32-min bias rather than
  jnp.where on the logits: XLA:CPU fuses it into the softmax better (an attention microbenchmark: 3.3 -> 2.4 ms)."""
  bias_BxTxS = jnp.where(mask_BxTxS, 0.0, jnp.finfo(jnp.float32).min)
  return logits_BxHxTxS + bias_BxTxS[:, None]


@jax.custom_jvp
def softmax_lse(x_BxHxTxS):
  """`jax.nn.softmax` over the last axis (the same operations and derivative) and each row's log-sum-exp from the
  softmax's own max and sum ([B, H, T], fp32, no gradient): the lse costs no pass over [T, S]."""
  m_BxHxTx1 = jnp.max(x_BxHxTxS, -1, initial=-jnp.inf, keepdims=True)
  e_BxHxTxS = jnp.exp(x_BxHxTxS - m_BxHxTx1)
  sum_BxHxTx1 = jnp.sum(e_BxHxTxS, -1, keepdims=True)
  return e_BxHxTxS / sum_BxHxTx1, (m_BxHxTx1 + jnp.log(sum_BxHxTx1))[..., 0]


@softmax_lse.defjvp
def _softmax_lse_jvp(primals, tangents):
  (x,), (x_dot,) = primals, tangents
  p, lse = softmax_lse(x)
  p_dot = p * (x_dot - (p * x_dot).sum(-1, keepdims=True))  # jax.nn.softmax's own rule
  return (p, lse), (p_dot, jnp.zeros_like(lse))


def attention_weights(logits_BxHxTxS, mask_BxTxS, kind: str = "softmax", sink_logit_H=None):
  """Attention weights of each variant, fp32 [B, H, T, S]; masked keys get exactly 0.

  softmax   : softmax over the visible keys (the parity-tested default).
  softmax1  : "softmax off by one" (E. Miller, "Attention Is Off By One", 2023): exp(l) / (1 + sum exp(l)),
              i.e. a virtual key with logit 0 and zero value; rows may place less than 1 in total.
  sink_logit: a learned per-head logit for a virtual key with zero value (as in levanter's attention
              with sink; also gpt-oss "attention sinks"): exp(l) / (exp(b_h) + sum exp(l)).
  gated     : softmax weights; the per-head sigmoid output gate is applied to z (see `Attention`).
  sigmoid   : sigmoid(l + b) with b = -ln(S), no normalisation (Ramapuram et al. 2024, "Theory, Analysis,
              and Best Practices for Sigmoid Self-Attention"); rows may place more or less than 1.
  """
  masked = masked_logits(logits_BxHxTxS, mask_BxTxS)
  if kind in ("softmax", "gated"):
    # softmax_lse: jax.nn.softmax's operations and derivative; its loss-and-grad step ran 12-18% faster on a
    # 1-layer model (no difference at 10M; docs/benchmarks.md section 10)
    return softmax_lse(masked)[0]
  if kind in ("softmax1", "sink_logit"):
    b, h, t, _ = logits_BxHxTxS.shape
    extra_H = jnp.zeros((h,), jnp.float32) if kind == "softmax1" else sink_logit_H.astype(jnp.float32)
    extra_BxHxTx1 = jnp.broadcast_to(extra_H[None, :, None, None], (b, h, t, 1))
    return jax.nn.softmax(jnp.concatenate([masked, extra_BxHxTx1], -1), axis=-1)[..., :-1]
  if kind == "sigmoid":
    s = logits_BxHxTxS.shape[-1]
    return jnp.where(mask_BxTxS[:, None], jax.nn.sigmoid(logits_BxHxTxS - jnp.log(float(s))), 0.0)
  raise ValueError(f"unknown attention kind {kind!r}")


def attend(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxTxS, probe: Probe, kind: str = "softmax",
           sink_logit_H=None, gate_BxTxHxK=None):
  """Scaled dot-product attention in fp32. Returns (z_BxTxHxK, aux) with aux per `probe`.

  z is each head's pre-output-projection vector (after the output gate, if any); captures and
  ablations act on it.
  """
  b, t, h, k = q_BxTxHxK.shape
  g = k_BxSxGxK.shape[2]
  r = h // g
  # Head-major operands and outputs: XLA:CPU lowers these batched dots several times faster than the
  # token-major einsums ("bhts,bshk->bthk" took 3.0 ms where "bhts,bhsk->bhtk" took 0.5 ms, B 4, H 4, T 256).
  q_BxGxRxTxK = q_BxTxHxK.astype(jnp.float32).reshape(b, t, g, r, k).transpose(0, 2, 3, 1, 4)
  k_BxGxSxK = k_BxSxGxK.astype(jnp.float32).transpose(0, 2, 1, 3)
  v_BxGxSxK = v_BxSxGxK.astype(jnp.float32).transpose(0, 2, 1, 3)
  logits_BxGxRxTxS = jnp.einsum("bgrtk,bgsk->bgrts", q_BxGxRxTxK, k_BxGxSxK)
  logits_BxHxTxS = logits_BxGxRxTxS.reshape(b, h, t, -1) / math.sqrt(k)
  if probe.stats and t != logits_BxHxTxS.shape[-1]:
    raise ValueError(f"stats need every query row of causal self-attention (T == S); got T {t}, "
                     f"S {logits_BxHxTxS.shape[-1]}: ask for stats in a full-sequence call")
  fused_stats = probe.stats and kind in ("softmax", "gated")
  if fused_stats:  # the row's lse from the softmax's own max and sum
    masked_BxHxTxS = masked_logits(logits_BxHxTxS, mask_BxTxS)
    probs_BxHxTxS, lse_BxHxT = softmax_lse(masked_BxHxTxS)
  else:
    probs_BxHxTxS = attention_weights(logits_BxHxTxS, mask_BxTxS, kind, sink_logit_H)
  probs_BxGxRxTxS = probs_BxHxTxS.reshape(b, g, r, t, -1)
  z_BxGxRxTxK = jnp.einsum("bgrts,bgsk->bgrtk", probs_BxGxRxTxS, v_BxGxSxK)
  z_BxTxHxK = z_BxGxRxTxK.reshape(b, h, t, k).transpose(0, 2, 1, 3).astype(q_BxTxHxK.dtype)
  if gate_BxTxHxK is not None:
    z_BxTxHxK = z_BxTxHxK * gate_BxTxHxK

  aux = {}
  if fused_stats:
    # The blockwise pass's formulas (diagnostics.reductions_from_row_stats), with no log or exp per element:
    # the lse from the softmax above, sum_s p_s l_s one multiply-add pass over the weights and masked logits the
    # softmax already holds, and the logits at keys 0, t-1 and t read off the logits' column 0 and two diagonals.
    # Trainer, batch 8 x T 256, paired rounds: diagnostics on / off 0.980-1.012 at 10M and 50M this way; with
    # three O(T) q.k dot products instead, OLMo 10M read 0.930-0.992 (docs/benchmarks.md, sections 9 and 10).
    mean_l_BxHxT = jnp.sum(lax.stop_gradient(probs_BxHxTxS) * lax.stop_gradient(masked_BxHxTxS), -1)
    aux["stats"] = diagnostics.reductions_from_log_weights(lax.stop_gradient(logits_BxHxTxS),
                                                           lax.stop_gradient(lse_BxHxT), mean_l_BxHxT, mask_BxTxS,
                                                           kind=kind)
  elif probe.stats:  # softmax1, sink_logit, sigmoid: lse and sum p~ log w from the logits and weights
    aux["stats"] = diagnostics.attention_reductions_from_logits(logits_BxHxTxS, probs_BxHxTxS, mask_BxTxS, kind=kind,
                                                                sink_logit_H=sink_logit_H)
  if probe.patterns_BxPxTxS is not None:  # e.g. TransformerLens detector patterns, reduced in place
    aux["pattern_sums_BxPxH"] = jnp.einsum("bhts,bpts->bph", probs_BxHxTxS,
                                           probe.patterns_BxPxTxS.astype(jnp.float32))
  if probe.query_pos_B is not None:
    idx_B = jnp.arange(b)
    aux["rows_BxHxS"] = probs_BxHxTxS[idx_B, :, probe.query_pos_B, :]
    aux["z_BxHxK"] = z_BxTxHxK[idx_B, probe.query_pos_B].astype(jnp.float32)
  return ablate(z_BxTxHxK, probe), aux


def ablate(z_BxTxHxK, probe: Probe):
  """The probe's head ablations on z: scale (head_scale_H) and replace (replace_mask_H, head_replace_HxK)."""
  if probe.head_scale_H is not None:
    z_BxTxHxK = z_BxTxHxK * probe.head_scale_H.astype(z_BxTxHxK.dtype)[:, None]
  if probe.replace_mask_H is not None:
    z_BxTxHxK = jnp.where(probe.replace_mask_H[:, None], probe.head_replace_HxK.astype(z_BxTxHxK.dtype),
                          z_BxTxHxK)
  return z_BxTxHxK


def needs_exact(probe: Probe) -> bool:
  """Captures of attention rows, pattern sums and query-row calls read the weights: only `attend` has them."""
  return probe.query_pos_B is not None or probe.patterns_BxPxTxS is not None or probe.query_rows_only


def attend_impl(impl: str, q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, segment_ids_BxT, probe: Probe, *, kind: str,
                sink_logit_H=None, gate_BxTxHxK=None, block: int = 512):
  """`attend` without the [B, H, T, S] weights (impl "blockwise", "splash" or "cudnn"): (z_BxTxHxK, aux).

  Causal self-attention with same-segment masking when segment ids are given. aux holds only "stats" (when
  probe.stats): blockwise accumulates them in its own pass; the kernels get them from the stop_gradient
  stats pass `blockwise.attention_stats`. Ablations act on z as in `attend`.
  """
  if needs_exact(probe):
    raise ValueError(f"attention_impl={impl!r} returns no attention rows or pattern sums; use 'exact'")
  red = None
  if impl == "blockwise":
    z_BxTxHxK, red = blockwise.blockwise_attend(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, kind=kind,
                                                sink_logit_H=sink_logit_H, segment_ids_BxT=segment_ids_BxT,
                                                block=block, stats=probe.stats)
  else:
    if impl == "splash":
      z_BxTxHxK = kernels.splash_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, kind=kind, sink_logit_H=sink_logit_H,
                                           segment_ids_BxT=segment_ids_BxT, block=block)
    elif impl == "cudnn":
      z_BxTxHxK = kernels.cudnn_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, kind=kind,
                                          segment_ids_BxT=segment_ids_BxT)
    else:
      raise ValueError(f"unknown attention impl {impl!r}")
    if probe.stats:
      red = blockwise.attention_stats(q_BxTxHxK, k_BxSxGxK, kind=kind, sink_logit_H=sink_logit_H,
                                      segment_ids_BxT=segment_ids_BxT, block=block)
  if gate_BxTxHxK is not None:
    z_BxTxHxK = z_BxTxHxK * gate_BxTxHxK
  aux = {"stats": red} if probe.stats else {}
  return ablate(z_BxTxHxK, probe), aux


class Attention(nnx.Module):
  """Projections around `attend`. Pythia: fused per-head [q,k,v] with biases; OLMo/OLMoE: separate q/k/v/o
  without bias; OLMoE: RMSNorm over the full q and k projection widths before the head split and rotary."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, h, g, k = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.hd
    self.cfg = cfg
    self.fused = bool(cfg.fused_qkv)
    pd = cfg.param_dtype
    if self.fused:  # (ModelConfig checks n_kv_heads == n_heads)
      std_3 = jnp.array([cfg.qk_init_std, cfg.qk_init_std, cfg.init_std], jnp.float32)
      self.qkv = L.param(rngs, (d, h, 3, k), (L.EMBED, L.HEADS, L.QKV, L.HEAD_DIM), std=1.0, dtype=pd)
      self.qkv[...] = self.qkv[...] * std_3[:, None].astype(pd)
      self.qkv_bias = L.param(None, (h, 3, k), (L.HEADS, L.QKV, L.HEAD_DIM), fill=0.0, dtype=pd)
    else:
      self.q = L.param(rngs, (d, h, k), (L.EMBED, L.HEADS, L.HEAD_DIM), std=cfg.qk_init_std, dtype=pd)
      self.k = L.param(rngs, (d, g, k), (L.EMBED, L.KV_HEADS, L.HEAD_DIM), std=cfg.qk_init_std, dtype=pd)
      self.v = L.param(rngs, (d, g, k), (L.EMBED, L.KV_HEADS, L.HEAD_DIM), std=cfg.init_std, dtype=pd)
    self.o = L.param(rngs, (h, k, d), (L.HEADS, L.HEAD_DIM, L.EMBED), std=cfg.init_std, dtype=pd)
    self.o_bias = L.param(None, (d,), (L.EMBED,), fill=0.0, dtype=pd) if cfg.qkv_bias else None
    # Variant parameters start at zero (no random draws), so switching the variant changes no other
    # parameter: `gated` multiplies z by sigmoid(x @ gate) (Qiu et al. 2025, "Gated Attention for Large
    # Language Models", elementwise gate after SDPA, from the layer input); `sink_logit` learns b_h.
    if cfg.attention == "gated":
      self.gate = L.param(None, (d, h, k), (L.EMBED, L.HEADS, L.HEAD_DIM), fill=0.0, dtype=pd)
    if cfg.attention == "sink_logit":
      self.sink_logit = L.param(None, (h,), (L.HEADS,), fill=0.0, dtype=pd)
    self.qk_norm = bool(cfg.qk_norm)
    if self.qk_norm:
      self.q_norm = L.RMSNorm(h * k, cfg.norm_eps, axis_name=L.HEADS, dtype=pd)
      self.k_norm = L.RMSNorm(g * k, cfg.norm_eps, axis_name=L.KV_HEADS, dtype=pd)

  def _project(self, xq_BxQxD, x_BxTxD):
    """q from the query rows xq, k and v from every row x (xq is x except for query-rows-only calls)."""
    dt = x_BxTxD.dtype
    if not self.fused:
      q = jnp.einsum("bqd,dhk->bqhk", xq_BxQxD, self.q[...].astype(dt))
      k = jnp.einsum("btd,dgk->btgk", x_BxTxD, self.k[...].astype(dt))
      v = jnp.einsum("btd,dgk->btgk", x_BxTxD, self.v[...].astype(dt))
      # remat tags (circuits/models/remat.py)
      return checkpoint_name(q, "query_proj"), checkpoint_name(k, "key_proj"), checkpoint_name(v, "value_proj")
    w_DxHx3xK, b_Hx3xK = self.qkv[...].astype(dt), self.qkv_bias[...].astype(dt)
    if xq_BxQxD is x_BxTxD:
      qkv_BxTxHx3xK = checkpoint_name(jnp.einsum("btd,dhck->bthck", x_BxTxD, w_DxHx3xK) + b_Hx3xK, "qkv_proj")
      return tuple(qkv_BxTxHx3xK[:, :, :, i] for i in range(3))
    q = jnp.einsum("bqd,dhk->bqhk", xq_BxQxD, w_DxHx3xK[:, :, 0]) + b_Hx3xK[:, 0]
    kv_BxTxHx2xK = jnp.einsum("btd,dhck->bthck", x_BxTxD, w_DxHx3xK[:, :, 1:]) + b_Hx3xK[:, 1:]
    return q, kv_BxTxHx2xK[:, :, :, 0], kv_BxTxHx2xK[:, :, :, 1]

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT=None, probe: Probe = Probe()):
    """Causal self-attention (same-segment only when segment_ids_BxT is given): (out_BxTxD, aux)."""
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    impl = "exact" if needs_exact(probe) else kernels.resolve_impl(probe.impl or cfg.attention_impl,
                                                                   cfg.attention, x_BxTxD.dtype)
    mask_BxTxS = causal_mask(positions_BxT, segment_ids_BxT) if impl == "exact" else None
    xq_BxQxD, qpos_BxQ, qmask_BxQxS = x_BxTxD, positions_BxT, mask_BxTxS
    if probe.query_rows_only:  # one query row per example (discovery's last layer): q there, k and v everywhere
      if probe.stats or probe.patterns_BxPxTxS is not None or probe.query_pos_B is None:
        raise ValueError("query_rows_only needs query_pos_B and computes no stats or pattern sums (they need "
                         "every query row)")
      idx_B = jnp.arange(b)
      xq_BxQxD = x_BxTxD[idx_B, probe.query_pos_B][:, None]
      qpos_BxQ = positions_BxT[idx_B, probe.query_pos_B][:, None]
      qmask_BxQxS = mask_BxTxS[idx_B, probe.query_pos_B][:, None]
      probe = dataclasses.replace(probe, query_rows_only=False, query_pos_B=jnp.zeros((b,), jnp.int32))
    tq = xq_BxQxD.shape[1]
    q, k, v = self._project(xq_BxQxD, x_BxTxD)
    if self.qk_norm:  # over the full projection width, before the head split and rotary
      q = self.q_norm(q.reshape(b, tq, -1)).reshape(q.shape)
      k = self.k_norm(k.reshape(b, t, -1)).reshape(k.shape)
    if cfg.clip_qkv is not None:
      q, k, v = (jnp.clip(a, -cfg.clip_qkv, cfg.clip_qkv) for a in (q, k, v))
    q = L.rotary(q, qpos_BxQ, cfg.rotary_dim, cfg.rope_theta)
    k = L.rotary(k, positions_BxT, cfg.rotary_dim, cfg.rope_theta)
    gate = None
    if cfg.attention == "gated":
      gate = jax.nn.sigmoid(jnp.einsum("bqd,dhk->bqhk", xq_BxQxD, self.gate[...].astype(xq_BxQxD.dtype)))
    sink = self.sink_logit[...] if cfg.attention == "sink_logit" else None
    if impl == "exact":
      z_BxQxHxK, aux = attend(q, k, v, qmask_BxQxS, probe, kind=cfg.attention, sink_logit_H=sink,
                              gate_BxTxHxK=gate)
    else:
      z_BxQxHxK, aux = attend_impl(impl, q, k, v, segment_ids_BxT, probe, kind=cfg.attention, sink_logit_H=sink,
                                   gate_BxTxHxK=gate, block=cfg.attention_block)
    if probe.extremes:
      v_norm_BxSxG = jnp.linalg.norm(v.astype(jnp.float32), axis=-1)
      aux["v_norm_first_G"] = v_norm_BxSxG[:, 0].mean(0)
      aux["v_norm_mean_G"] = v_norm_BxSxG.mean((0, 1))
    dt = x_BxTxD.dtype
    out_BxQxD = jnp.einsum("bqhk,hkd->bqd", z_BxQxHxK, self.o[...].astype(dt))
    if self.o_bias is not None:
      out_BxQxD = out_BxQxD + self.o_bias[...].astype(dt)
    return checkpoint_name(out_BxQxD, "out_proj"), aux
