"""THE next-token cross-entropy: one formula for the trainer, the diagnostics, discovery and the study.

Legend: B batch, T positions, D d_model, V vocab, C positions per chunk, n = T / C chunks.

Definition (fp32): for logits l over the vocabulary at one position and its target y,
  lse = logsumexp_v l_v,   nll = lse - l_y   (= -log softmax(l)_y).
`cross_entropy` returns both, per position; callers mask, sum and normalise (the trainer's z-loss is lse^2).

Two paths, the same formula:
  plain   given logits_BxTxV (as the model returns them): jax.nn.logsumexp and a gather, exactly the
          arithmetic the trainer and the study have always used (their numbers are unchanged, bit for bit).
  chunked given the final hidden states h_BxTxD and the unembedding W_DxV: logits = h @ W are formed C
          positions at a time inside a jax.checkpoint'ed lax.scan, so neither the forward nor the backward
          ever holds more than one [B, C, V] fp32 block (at V = 50304, B = 16, T = 2048 the whole fp32
          logits are 6.1 GiB, plus as much again for their gradient). Equal to the plain path within float
          rounding (tests/test_step_scale.py: 1e-6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(targets_BxT, logits_BxTxV=None, *, hidden_BxTxD=None, unembed_DxV=None, chunk: int = 0):
  """(nll_BxT, lse_BxT), fp32: nll = logsumexp(logits) - logits[target] at every position.

  Give either logits_BxTxV (the plain path; any float dtype, computed in fp32) or hidden_BxTxD and
  unembed_DxV (logits = hidden @ unembed with fp32 accumulation). With hidden states, chunk = C > 0 forms
  the logits C positions at a time under remat (C must divide T); chunk = 0 forms them whole.
  """
  if logits_BxTxV is not None:
    if hidden_BxTxD is not None or unembed_DxV is not None:
      raise ValueError("cross_entropy: give logits_BxTxV or (hidden_BxTxD, unembed_DxV), not both")
    return _plain(logits_BxTxV.astype(jnp.float32), targets_BxT)
  if hidden_BxTxD is None or unembed_DxV is None:
    raise ValueError("cross_entropy: needs logits_BxTxV, or both hidden_BxTxD and unembed_DxV")
  b, t, d = hidden_BxTxD.shape
  if not chunk or chunk >= t:
    return _plain(_unembed(hidden_BxTxD, unembed_DxV), targets_BxT)
  if t % chunk:
    raise ValueError(f"cross_entropy: chunk={chunk} must divide the sequence length T={t} (train.loss_chunk)")
  n = t // chunk
  # chunk axis first; the batch axis (the sharded one) stays whole inside each chunk
  h_nxBxCxD = hidden_BxTxD.reshape(b, n, chunk, d).swapaxes(0, 1)
  y_nxBxC = targets_BxT.reshape(b, n, chunk).swapaxes(0, 1)

  @jax.checkpoint  # saves only the chunk's inputs: the backward recomputes its logits
  def one(h_BxCxD, y_BxC):
    return _plain(_unembed(h_BxCxD, unembed_DxV), y_BxC)

  _, (nll_nxBxC, lse_nxBxC) = jax.lax.scan(lambda c, xs: (c, one(*xs)), None, (h_nxBxCxD, y_nxBxC))
  return nll_nxBxC.swapaxes(0, 1).reshape(b, t), lse_nxBxC.swapaxes(0, 1).reshape(b, t)


def _unembed(h_BxTxD, w_DxV):
  """fp32 logits h @ W (inputs in h's dtype, fp32 accumulation and result)."""
  return jnp.matmul(h_BxTxD, w_DxV.astype(h_BxTxD.dtype), preferred_element_type=jnp.float32)


def _plain(logits_BxTxV, targets_BxT):
  lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  tgt_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return lse_BxT - tgt_BxT, lse_BxT


def next_token_losses(logits_BxTxV, tokens_BxT):
  """loss_BxT[:, t] = -log p(tokens[t] | tokens[<t]) (from logits at t-1), fp32; column 0 is NaN."""
  nll_BxTm1, _ = cross_entropy(tokens_BxT[:, 1:], logits_BxTxV[:, :-1])
  return jnp.concatenate([jnp.full_like(nll_BxTm1[:, :1], jnp.nan), nll_BxTm1], axis=1)
