"""Blockwise attention: an online softmax over key blocks that never holds a [T, S] array for the backward pass.

Legend: B batch, T queries, S keys (T == S, causal self-attention), H heads, G kv heads, R = H / G, K head_dim,
Q a query block, C a key block, N the number of blocks.

The same math as `attention.attend` (fp32 logits l = q.k / sqrt(K), every variant of
`attention.attention_weights`, GQA, causal and same-segment masks), computed per (query block, key block):
  running max m, l = sum_s e^{l_s - m}, acc = sum_s e^{l_s - m} v_s  (sigmoid: m = 0, w_s = sigmoid(l_s - ln S)),
and, for the diagnostics, a = sum_s e^{l_s - m} l_s (sigmoid: sum_s w_s log w_s), summed in the same reduce as l
and under stop_gradient. Then
  softmax/gated: z = acc / l;  softmax1 / sink_logit: z = acc e^{m - logaddexp(m + log l, b)} (b = 0 / b_h);
  sigmoid: z = acc;  lse_real = m + log l;  sum_s p~_s l_s = a / l (sigmoid: sum_s p~_s log w_s).
Memory: the scan over query blocks is under `jax.checkpoint`, so the forward pass keeps only q, k, v and the
per-row results; the backward pass recomputes one query block at a time (its key-block scan keeps [Q, C]
weights for that block only: O(T * Q) per head, linear in T). Key blocks above the causal diagonal are skipped
with `lax.cond` (they cost nothing in either pass). Runs on every backend; pure jnp.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from circuits import diagnostics

NEG = -1e30  # the running max's start and the hidden keys' logit in the max (finite: no inf - inf)
KINDS = ("softmax", "gated", "softmax1", "sink_logit", "sigmoid")


def _values_einsum(w_BxGxRxQxC, v_BxGxCxK):
  """sum_s w_s v_s of one block: [B,G,R,Q,K]."""
  return jnp.einsum("bgrqc,bgck->bgrqk", w_BxGxRxQxC, v_BxGxCxK)


# The same with its VJP written out (dw = dz v^T, dv = w^T dz): XLA:CPU runs these two dots 9-14% faster per
# train step than autodiff's transposes of the einsum inside the scan, cond and checkpoint when there are
# several key blocks (1-layer d64, T 1024 / 2048, 61 paired rounds, docs/benchmarks.md); with one block
# autodiff's form is faster, so it is used only when N > 1.
_weighted_values = jax.custom_vjp(_values_einsum)


def _weighted_values_fwd(w_BxGxRxQxC, v_BxGxCxK):
  return _values_einsum(w_BxGxRxQxC, v_BxGxCxK), (w_BxGxRxQxC, v_BxGxCxK)


def _weighted_values_bwd(res, dz_BxGxRxQxK):
  w_BxGxRxQxC, v_BxGxCxK = res
  return (jnp.einsum("bgrqk,bgck->bgrqc", dz_BxGxRxQxK, v_BxGxCxK),
          jnp.einsum("bgrqc,bgrqk->bgck", w_BxGxRxQxC, dz_BxGxRxQxK))


_weighted_values.defvjp(_weighted_values_fwd, _weighted_values_bwd)


LANES = 16  # the key axis of the diagnostics' reduce is split into [C / LANES, LANES] (see _mass_and_moment)


@jax.custom_jvp
def _mass_and_moment(w_QxC, logw_QxC):
  """(sum_s w_s, sum_s w_s log w_s) over the last axis as ONE variadic reduce: XLA:CPU computes both sums in
  the loop that already makes w, so the diagnostics' moment costs one multiply-add per [Q, C] element (a
  separate sum of w * log w is a second pass over the block, and q . sum_s w_s k_s an extra [Q, C] x [C, K]
  matmul; both measurably slower, docs/benchmarks.md). The reduce runs over the C / LANES axis of
  [Q, C / LANES, LANES] and the LANES partial sums are added after: XLA:CPU vectorises a reduce over a non-minor
  axis across the minor one, but emits a variadic reduce over the minor axis element by element (forward pass
  with diagnostics on / off at T 4096, 1-layer d64: 0.79 reduced over C, 0.99 over C / 16; docs/benchmarks.md
  section 8). The moment is a diagnostic: its tangent is zero."""
  c = w_QxC.shape[-1]
  lanes = LANES if c % LANES == 0 else (8 if c % 8 == 0 else 1)
  w = w_QxC.reshape(w_QxC.shape[:-1] + (c // lanes, lanes))
  zero = jnp.zeros((), w.dtype)
  mass, moment = lax.reduce((w, w * logw_QxC.reshape(w.shape)), (zero, zero),
                            lambda x, y: (x[0] + y[0], x[1] + y[1]), (w.ndim - 2,))
  return mass.sum(-1), moment.sum(-1)


@_mass_and_moment.defjvp
def _mass_and_moment_jvp(primals, tangents):
  mass_and_moment = _mass_and_moment(*primals)
  return mass_and_moment, (tangents[0].sum(-1), jnp.zeros_like(mass_and_moment[1]))


def _blocks(x, n, axis):
  """Split `axis` of x (length n * blk) into n blocks stacked in front: [n, ..., blk, ...]."""
  shape = x.shape
  blk = shape[axis] // n
  x = x.reshape(shape[:axis] + (n, blk) + shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _pad(x, axis, to, value=0):
  if x.shape[axis] == to:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, to - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def online_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK=None, *, kind: str = "softmax", segment_ids_BxT=None,
                     block: int = 512, stats: bool = False):
  """The blockwise pass. Returns (acc_BxGxRxTxK or None, m_BxGxRxT, l_BxGxRxT, a_BxGxRxT or None), fp32.

  v None: the forward-only stats pass (no values, no acc). stats: also accumulate the diagnostics' a (module
  docstring; stop_gradient). m is 0 for sigmoid. Rows and keys are padded to a multiple of the block; padded keys are
  invisible to real queries.
  """
  if kind not in KINDS:
    raise ValueError(f"blockwise attention: unknown attention kind {kind!r} (one of {KINDS})")
  b, t, h, kd = q_BxTxHxK.shape
  s_len, g = k_BxSxGxK.shape[1], k_BxSxGxK.shape[2]
  if s_len != t:
    raise ValueError(f"blockwise attention is causal self-attention: T ({t}) must equal S ({s_len})")
  r = h // g
  f32 = jnp.float32
  blk = min(int(block), -(-t // 8) * 8)
  n = -(-t // blk)
  tp = n * blk
  inv_sqrt_k = 1.0 / math.sqrt(kd)
  log_n_keys = math.log(float(t))
  sigmoid = kind == "sigmoid"

  q = _pad(q_BxTxHxK.astype(f32), 1, tp).reshape(b, tp, g, r, kd).transpose(0, 2, 3, 1, 4)  # [B,G,R,T,K]
  k = _pad(k_BxSxGxK.astype(f32), 1, tp).transpose(0, 2, 1, 3)  # [B,G,S,K]
  q_N = _blocks(q, n, 3)  # [N,B,G,R,Q,K]
  k_N = _blocks(k, n, 2)  # [N,B,G,C,K]
  v_N = None if v_BxSxGxK is None else _blocks(_pad(v_BxSxGxK.astype(f32), 1, tp).transpose(0, 2, 1, 3), n, 2)
  seg_N = None
  if segment_ids_BxT is not None:  # padded rows get their own segment -1 (they see only padded keys)
    seg_N = _blocks(_pad(segment_ids_BxT.astype(jnp.int32), 1, tp, -1), n, 1)  # [N,B,Q]
  idx = jnp.arange(blk)
  weighted_values = _weighted_values if n > 1 else _values_einsum

  def q_block(qb_BxGxRxQxK, segq_BxQ, i):
    def k_step(carry, xs):
      kb, vb, segk, j = xs

      def compute(carry):
        m, l, acc, a = carry
        logits = jnp.einsum("bgrqk,bgck->bgrqc", qb_BxGxRxQxK, kb) * inv_sqrt_k
        vis_QxC = (j * blk + idx)[None, :] <= (i * blk + idx)[:, None]
        vis = vis_QxC[None, None, None]
        if segq_BxQ is not None:
          vis = vis & (segq_BxQ[:, :, None] == segk[:, None, :])[:, None, None]
        if sigmoid:
          logw = jax.nn.log_sigmoid(logits - log_n_keys)
          w = jnp.where(vis, jnp.exp(logw), 0.0)
          m2, c = m, jnp.ones_like(m)
        else:
          logw = logits
          m2 = lax.stop_gradient(jnp.maximum(m, jnp.where(vis, logits, NEG).max(-1)))
          w = jnp.exp(jnp.where(vis, logits - m2[..., None], NEG))  # masked before exp: no inf * 0 in the grad
          c = jnp.exp(m - m2)
        mass, moment = (w.sum(-1), None) if a is None else _mass_and_moment(w, logw)  # hidden keys: w = 0
        l2 = l * c + mass
        acc2 = None if acc is None else acc * c[..., None] + weighted_values(w, vb)
        a2 = None if a is None else a * lax.stop_gradient(c) + lax.stop_gradient(moment)
        return m2, l2, acc2, a2

      return lax.cond(j <= i, compute, lambda c: c, carry), None

    rows = qb_BxGxRxQxK.shape[:-1]
    init = (jnp.full(rows, 0.0 if sigmoid else NEG, f32), jnp.zeros(rows, f32),
            None if v_N is None else jnp.zeros(rows + (kd,), f32), jnp.zeros(rows, f32) if stats else None)
    (m, l, acc, a), _ = lax.scan(k_step, init, (k_N, v_N, seg_N, jnp.arange(n)))
    return m, l, acc, a

  body = jax.checkpoint(lambda _, xs: (None, q_block(*xs)), prevent_cse=False)
  _, (m, l, acc, a) = lax.scan(body, None, (q_N, seg_N, jnp.arange(n)))
  unblock = lambda x: None if x is None else jnp.moveaxis(x, 0, 3).reshape(x.shape[1:4] + (tp,) + x.shape[5:])
  cut = lambda x: None if x is None else x[:, :, :, :t]
  return cut(unblock(acc)), cut(unblock(m)), cut(unblock(l)), cut(unblock(a))


def _row_stats(q_BxTxHxK, k_BxSxGxK, m, l, a, *, kind, segment_ids_BxT, sink_logit_H):
  """The five ATTN_REDUCTIONS (each [H]) from the pass's m, l, a and three O(T) logit diagonals."""
  b, t, h, _ = q_BxTxHxK.shape
  lse_real = (jnp.log(l) if kind == "sigmoid" else m + jnp.log(l)).reshape(b, h, t)
  if segment_ids_BxT is None:
    first_vis = prev_vis = jnp.ones((b, t), bool)
  else:
    first_vis = segment_ids_BxT == segment_ids_BxT[:, :1]
    prev_vis = jnp.concatenate([jnp.zeros((b, 1), bool), segment_ids_BxT[:, 1:] == segment_ids_BxT[:, :-1]], 1)
  return diagnostics.reductions_from_qk(q_BxTxHxK, k_BxSxGxK, lse_real, (a / l).reshape(b, h, t), first_vis,
                                        prev_vis, kind=kind, sink_logit_H=sink_logit_H)


def blockwise_attend(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, *, kind: str = "softmax", sink_logit_H=None,
                     segment_ids_BxT=None, block: int = 512, stats: bool = False):
  """Blockwise attention: (z_BxTxHxK in q's dtype, the five reductions [H] or None).

  z equals `attention.attend`'s (before the gate: `gated` multiplies z by its gate outside). With stats, the
  reductions come from this same pass (lse and sum p~ log w accumulated in fp32) and equal
  `diagnostics.attention_reductions` of the materialised weights.
  """
  b, t, h, kd = q_BxTxHxK.shape
  g = k_BxSxGxK.shape[2]
  acc, m, l, a = online_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, kind=kind, segment_ids_BxT=segment_ids_BxT,
                                  block=block, stats=stats)
  if kind in ("softmax", "gated"):
    z = acc / l[..., None]
  elif kind == "sigmoid":
    z = acc
  else:
    b_GxR = jnp.zeros((g, h // g), jnp.float32) if kind == "softmax1" else \
        sink_logit_H.astype(jnp.float32).reshape(g, h // g)
    log_z = jnp.logaddexp(m + jnp.log(l), b_GxR[None, :, :, None])
    z = acc * jnp.exp(m - log_z)[..., None]
  z_BxTxHxK = z.reshape(b, h, t, kd).transpose(0, 2, 1, 3).astype(q_BxTxHxK.dtype)
  red = None
  if stats:
    red = _row_stats(q_BxTxHxK, k_BxSxGxK, m, l, a, kind=kind, segment_ids_BxT=segment_ids_BxT,
                     sink_logit_H=sink_logit_H)
  return z_BxTxHxK, red


def attention_stats(q_BxTxHxK, k_BxSxGxK, *, kind: str = "softmax", sink_logit_H=None, segment_ids_BxT=None,
                    block: int = 512) -> dict:
  """The five ATTN_REDUCTIONS ([H] each) of an attention call from q and k alone: a forward-only,
  stop_gradient blockwise pass (fp32 m, l, a; no values) plus three O(T) logit diagonals. For the fused
  kernels, whose outputs carry no usable fp32 statistics. q and k must be the kernel's operands (after
  QK-norm, clip_qkv and rotary; unscaled: the 1/sqrt(K) is applied here)."""
  q = lax.stop_gradient(q_BxTxHxK)
  k = lax.stop_gradient(k_BxSxGxK)
  _, m, l, a = online_attention(q, k, None, kind=kind, segment_ids_BxT=segment_ids_BxT, block=block, stats=True)
  return _row_stats(q, k, m, l, a, kind=kind, segment_ids_BxT=segment_ids_BxT, sink_logit_H=sink_logit_H)
