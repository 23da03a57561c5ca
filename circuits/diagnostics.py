"""Attention and routing diagnostics: pure jnp functions.

Called inside the attention op of every training step AND by the discovery jobs, so online and offline
numbers agree by construction. Legend: B batch, H heads, T queries, S keys, E experts, N tokens.
"""

from __future__ import annotations

import jax.numpy as jnp

# Per-head reductions of an attention pattern, names as they appear in metrics and tables.
ATTN_REDUCTIONS = ("first_mass", "entropy", "prev_mass", "self_mass")


def entropy_rows(probs_BxHxTxS):
  """Entropy (nats) of each attention row, with 0 log 0 = 0: [B, H, T]."""
  p = probs_BxHxTxS
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def attention_reductions(probs_BxHxTxS) -> dict:
  """Per-head means over batch and query positions, each [H]:

  first_mass: attention on key 0 (the first token; BOS when one is prepended);
  entropy: row entropy in nats; prev_mass: attention on key t-1 (queries t >= 1);
  self_mass: attention on key t (the diagonal).
  Rows are assumed to be causal probabilities (T == S, query t sees keys 0..t).
  """
  p = probs_BxHxTxS.astype(jnp.float32)
  return {
      "first_mass": p[..., 0].mean(axis=(0, 2)),
      "entropy": entropy_rows(p).mean(axis=(0, 2)),
      "prev_mass": jnp.diagonal(p, offset=-1, axis1=-2, axis2=-1).mean(axis=(0, 2)),
      "self_mass": jnp.diagonal(p, offset=0, axis1=-2, axis2=-1).mean(axis=(0, 2)),
  }


def routing_stats(probs_NxE, topk_idx_NxK, logits_NxE) -> dict:
  """MoE router statistics for one layer (unscaled losses).

  load_E: fraction of the N*K (token, slot) assignments that go to each expert (sums to 1);
  imbalance: max/mean of load_E; router_entropy: mean entropy (nats) of the router softmax;
  lb_loss: E * sum_{k,e} f_{k,e} P_e (HF Switch/OLMoE form: f = per-slot assignment fraction,
  P = mean router probability); z_loss: mean_n logsumexp(logits_n)^2.
  """
  n_experts = probs_NxE.shape[-1]
  onehot_NxKxE = (topk_idx_NxK[..., None] == jnp.arange(n_experts)).astype(jnp.float32)
  frac_KxE = onehot_NxKxE.mean(axis=0)
  load_E = frac_KxE.sum(0) / topk_idx_NxK.shape[-1]
  p_E = probs_NxE.mean(axis=0)
  lse_N = jnp.log(jnp.sum(jnp.exp(logits_NxE - logits_NxE.max(-1, keepdims=True)), -1)) + logits_NxE.max(-1)
  return {
      "load": load_E,
      "imbalance": load_E.max() / load_E.mean(),
      "router_entropy": entropy_rows(probs_NxE[None, None]).mean(),
      "lb_loss": n_experts * jnp.sum(frac_KxE * p_E[None, :]),
      "z_loss": jnp.mean(jnp.square(lse_N)),
  }
