"""Attention and routing diagnostics: pure jnp functions.

Called inside the attention op and the probe of every training step AND by the discovery jobs, so online
and offline numbers agree by construction: each measurement is written once here. Where discovery adds up
chunks of examples, the measurement is written in a sums form (`row_mass_sums`, `selectivity_sums`) and
the mean is derived from it (`row_mass`, `selectivity_from_sums`, `selectivity`).
Legend: B batch, H heads, T queries, S keys, E experts, N tokens (probe examples in the probe section),
L layers, P baseline positions or detector masks, D null draws, K head_dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Per-head reductions of an attention pattern, names as they appear in metrics and tables.
ATTN_REDUCTIONS = ("first_mass", "entropy", "prev_mass", "self_mass", "unplaced_mass")


def entropy_rows(probs_BxHxTxS):
  """Entropy (nats) of each attention row, with 0 log 0 = 0: [B, H, T]."""
  p = probs_BxHxTxS
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def attention_reductions(probs_BxHxTxS, normalised: bool = True) -> dict:
  """Per-head means over batch and query positions, each [H]:

  first_mass: attention on key 0 (the first token; BOS when one is prepended);
  entropy: row entropy in nats (for rows that do not sum to 1 — softmax1, sink_logit, sigmoid — the
    entropy of the row renormalised over the real keys); prev_mass: attention on key t-1 (queries t >= 1);
  self_mass: attention on key t (the diagonal); unplaced_mass: 1 - sum of the row, the mass a softmax1 or
    sink-logit row puts on no real key (about 0 for softmax; negative when a sigmoid row sums above 1).
  Rows are causal (T == S, query t sees keys 0..t). Masses are raw weights, never renormalised.
  This is the definition (and the tests' reference): the attention itself computes the same values without the
  weights' per-element log, from per-row statistics (`reductions_from_row_stats`), for every impl.
  """
  p = probs_BxHxTxS.astype(jnp.float32)
  row_sum = p.sum(-1)
  p_norm = p if normalised else p / jnp.maximum(row_sum, jnp.finfo(jnp.float32).tiny)[..., None]
  return {
      "first_mass": p[..., 0].mean(axis=(0, 2)),
      "entropy": entropy_rows(p_norm).mean(axis=(0, 2)),
      "prev_mass": jnp.diagonal(p, offset=-1, axis1=-2, axis2=-1).mean(axis=(0, 2)),
      "self_mass": jnp.diagonal(p, offset=0, axis1=-2, axis2=-1).mean(axis=(0, 2)),
      "unplaced_mass": (1.0 - row_sum).mean(axis=(0, 2)),
  }


def attention_log_weights(logits, kind: str, n_keys: int):
  """log w of each key's unnormalised weight: the logit for the softmax family; log sigmoid(l - ln S) for
  sigmoid (whose weights are never normalised). fp32, any shape."""
  logits = logits.astype(jnp.float32)
  if kind == "sigmoid":
    return jax.nn.log_sigmoid(logits - jnp.log(float(n_keys)))
  return logits


def attention_log_normaliser(lse_real_BxHxT, kind: str, sink_logit_H=None):
  """log Z of each row: a key's weight is w / Z. softmax/gated: lse over the real keys; softmax1 and
  sink_logit add a virtual key of logit 0 / b_h; sigmoid: 0 (no normaliser). fp32 [B, H, T]."""
  if kind in ("softmax", "gated"):
    return lse_real_BxHxT
  if kind == "softmax1":
    return jnp.logaddexp(lse_real_BxHxT, 0.0)
  if kind == "sink_logit":
    return jnp.logaddexp(lse_real_BxHxT, sink_logit_H.astype(jnp.float32)[None, :, None])
  if kind == "sigmoid":
    return jnp.zeros_like(lse_real_BxHxT)
  raise ValueError(f"unknown attention kind {kind!r}")


def reductions_from_row_stats(lse_real_BxHxT, mean_logw_BxHxT, logw_first_BxHxT, logw_prev_BxHxT,
                              logw_self_BxHxT, first_visible_BxT, prev_visible_BxT, *, kind: str,
                              sink_logit_H=None) -> dict:
  """The five ATTN_REDUCTIONS of `attention_reductions` from per-row statistics, without the [T, S] weights.

  Per query row t (fp32): lse_real = log sum_s w_s over the visible real keys (w_s = e^{l_s}, or the sigmoid
  weight); mean_logw = sum_s p~_s log w_s with p~ the row renormalised over the real keys; logw_first /
  logw_prev / logw_self = log w at keys 0, t-1 and t (the exact logits the weights came from);
  first_visible / prev_visible: key 0 / key t-1 is visible from t (causal, same segment). With log Z =
  attention_log_normaliser(lse_real): mass on key j = e^{log w_j - log Z} (0 when not visible); entropy =
  lse_real - mean_logw (of the renormalised row: -sum p~ log p~ = log sum w - sum p~ log w);
  unplaced = 1 - e^{lse_real - log Z}. prev averages over t >= 1, as jnp.diagonal(p, -1) does.
  The exact attention (from its logits) and the blockwise/kernel stats pass both reduce through here.
  """
  log_z = attention_log_normaliser(lse_real_BxHxT, kind, sink_logit_H)
  mass = lambda logw, vis: jnp.where(vis[:, None], jnp.exp(logw - log_z), 0.0)
  return {
      "first_mass": mass(logw_first_BxHxT, first_visible_BxT).mean(axis=(0, 2)),
      "entropy": (lse_real_BxHxT - mean_logw_BxHxT).mean(axis=(0, 2)),
      "prev_mass": mass(logw_prev_BxHxT, prev_visible_BxT)[:, :, 1:].mean(axis=(0, 2)),
      "self_mass": mass(logw_self_BxHxT, jnp.ones_like(first_visible_BxT)).mean(axis=(0, 2)),
      "unplaced_mass": (1.0 - jnp.exp(lse_real_BxHxT - log_z)).mean(axis=(0, 2)),
  }


def reductions_from_qk(q_BxTxHxK, k_BxSxGxK, lse_real_BxHxT, mean_logw_BxHxT, first_visible_BxT,
                       prev_visible_BxT, *, kind: str, sink_logit_H=None) -> dict:
  """`reductions_from_row_stats` with the logits at keys 0, t-1 and t computed from q and k (three O(T) dot
  products, never a read of a [T, S] array). q and k are the operands the softmax saw (after QK-norm, clip_qkv and
  rotary; unscaled: the 1/sqrt(K) is applied here), GQA allowed (H = G * R); every input is stop_gradient."""
  b, t, h, kd = q_BxTxHxK.shape
  g = k_BxSxGxK.shape[2]
  sg = lambda x: jax.lax.stop_gradient(x.astype(jnp.float32))
  q_BxTxGxRxK = sg(q_BxTxHxK).reshape(b, t, g, h // g, kd)
  k_BxSxGxK = sg(k_BxSxGxK)
  k_prev_BxTxGxK = jnp.concatenate([jnp.zeros_like(k_BxSxGxK[:, :1]), k_BxSxGxK[:, :-1]], 1)  # row t: key t-1
  sqrt_k = float(kd) ** 0.5
  dot = lambda kk: jnp.einsum("btgrk,btgk->bgrt", q_BxTxGxRxK, kk).reshape(b, h, t) / sqrt_k
  s_first = jnp.einsum("btgrk,bgk->bgrt", q_BxTxGxRxK, k_BxSxGxK[:, 0]).reshape(b, h, t) / sqrt_k
  logw = lambda s: attention_log_weights(s, kind, t)
  return reductions_from_row_stats(
      sg(lse_real_BxHxT), sg(mean_logw_BxHxT), logw(s_first), logw(dot(k_prev_BxTxGxK)), logw(dot(k_BxSxGxK)),
      first_visible_BxT, prev_visible_BxT, kind=kind, sink_logit_H=None if sink_logit_H is None else sg(sink_logit_H))


def reductions_from_log_weights(logw_BxHxTxS, lse_real_BxHxT, mean_logw_BxHxT, mask_BxTxS, *, kind: str,
                                sink_logit_H=None) -> dict:
  """`reductions_from_row_stats` with log w at keys 0, t-1 and t read off the materialised [T, S] log weights
  (column 0 and two diagonals: no exp or log per element). Rows are causal (T == S); mask_BxTxS is the
  visibility the weights were computed with. The exact attention reduces through here."""
  diag = lambda a, off: jnp.diagonal(a, offset=off, axis1=-2, axis2=-1)
  pad_prev = lambda a: jnp.concatenate([jnp.zeros_like(a[..., :1]), a], -1)  # row t holds key t-1; row 0 unused
  return reductions_from_row_stats(
      lse_real_BxHxT, mean_logw_BxHxT, logw_BxHxTxS[..., 0], pad_prev(diag(logw_BxHxTxS, -1)),
      diag(logw_BxHxTxS, 0), mask_BxTxS[:, :, 0], pad_prev(diag(mask_BxTxS, -1)), kind=kind,
      sink_logit_H=sink_logit_H)


def attention_reductions_from_logits(logits_BxHxTxS, probs_BxHxTxS, mask_BxTxS, *, kind: str,
                                     sink_logit_H=None) -> dict:
  """`attention_reductions` of the exact attention from its logits and weights (`reductions_from_log_weights`).

  logits_BxHxTxS: the scaled logits before masking; probs_BxHxTxS: the weights computed from them (0 on hidden
  keys; the renormalised row of the softmax family is probs / row sum; sigmoid's weights are its w). The real
  keys' lse is summed from the logits (softmax1 / sink_logit: the sink may take nearly all the mass), or the log
  of sigmoid's row sum. `attend` uses this for softmax1, sink_logit and sigmoid; its softmax and gated rows take
  the lse from the softmax's own max and sum instead (`softmax_lse`).
  """
  f32 = jnp.float32
  logits = logits_BxHxTxS.astype(f32)
  p = probs_BxHxTxS.astype(f32)
  logw = attention_log_weights(logits, kind, logits.shape[-1])
  if kind == "sigmoid":  # weights w = p, unnormalised (0 on hidden keys)
    w_sum = p.sum(-1)
    lse_real = jnp.log(w_sum)
    mean_logw = jnp.sum(p * logw, -1) / w_sum
  else:
    masked = jnp.where(mask_BxTxS[:, None], logits, -jnp.inf)
    m = jnp.max(masked, -1, keepdims=True)
    lse_real = (m + jnp.log(jnp.sum(jnp.exp(masked - m), -1, keepdims=True)))[..., 0]
    mean_logw = jnp.sum(p * logits, -1) / p.sum(-1)  # hidden keys have p = 0
  return reductions_from_log_weights(logw, lse_real, mean_logw, mask_BxTxS, kind=kind, sink_logit_H=sink_logit_H)


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


# ----- probe measurements (in-loop probe and discovery) -----

# The six head classes of METHODS.md, in table-column order.
CLASSES = ("induction", "duplicate", "previous", "self", "first", "local")


def class_targets(ab_N, seq_len: int):
  """Key positions of each class at query q = T-1, as [N, m] int arrays (local: the 4 keys T-3..T-6).

  induction -> ab+1 (the token after the first A); duplicate -> ab; previous -> T-2; self -> T-1;
  first -> 0; local -> mean of T-3..T-6.
  """
  n, t = ab_N.shape[0], seq_len
  full = lambda v: jnp.full((n, 1), v, jnp.int32)
  return {
      "induction": (ab_N + 1)[:, None].astype(jnp.int32),
      "duplicate": ab_N[:, None].astype(jnp.int32),
      "previous": full(t - 2),
      "self": full(t - 1),
      "first": full(0),
      "local": jnp.broadcast_to(jnp.arange(t - 3, t - 7, -1, dtype=jnp.int32), (n, 4)),
  }


def row_mass_sums(rows_NxLxHxS, pos_Nxm):
  """Sum over the N examples of each example's mean attention on its m positions pos[n]: [L, H], fp32.

  The sums form of row_mass, so chunks of examples add up (discovery's scan) before one division by N.
  """
  rows_NxSxLxH = jnp.moveaxis(rows_NxLxHxS.astype(jnp.float32), -1, 1)
  picked_NxmxLxH = jnp.take_along_axis(rows_NxSxLxH, pos_Nxm[:, :, None, None], axis=1)
  return picked_NxmxLxH.mean(axis=1).sum(axis=0)


def row_mass(rows_NxLxHxS, pos_Nxm):
  """Mean over examples (and over the m positions) of the attention on pos: [L, H] (row_mass_sums / N)."""
  return row_mass_sums(rows_NxLxHxS, pos_Nxm) / rows_NxLxHxS.shape[0]


def selectivity_sums(rows_NxLxHxS, ab_N, baseline_pos_P, null_pos_NxD=None) -> dict:
  """The sums that selectivity is made of, over the N examples (chunks of examples add up), fp32:

  <c> for c in CLASSES: row_mass_sums at the class targets (class_targets, query q = T-1), [L, H];
  baseline: row_mass_sums at the P fixed baseline positions (every example), [L, H];
  null_DxLxH (with null_pos_NxD): row_mass_sums at one random key per example, for each of D draws, [D, L, H].
  """
  n, _, _, s = rows_NxLxHxS.shape
  targets = class_targets(ab_N, s)
  out = {c: row_mass_sums(rows_NxLxHxS, targets[c]) for c in CLASSES}
  out["baseline"] = row_mass_sums(rows_NxLxHxS, jnp.broadcast_to(baseline_pos_P, (n, baseline_pos_P.shape[0])))
  if null_pos_NxD is not None:
    out["null_DxLxH"] = jax.vmap(row_mass_sums, in_axes=(None, 1))(rows_NxLxHxS, null_pos_NxD[:, :, None])
  return out


def selectivity_from_sums(sums: dict, n, query_pos: int) -> dict:
  """Six-class selectivities with both baselines, each [L, H], from selectivity_sums over n examples.

  sel_<c> = mean_n A[target_c] / (mean attention at the fixed baseline positions) -- the paper code's
  baseline; sel_<c>_uniform = mean_n A[target_c] / (1 / (q + 1)) -- the paper text's uniform baseline.
  With sums["null_DxLxH"]: null_sel_DxLxH, the paper-baseline selectivity of each null draw [D, L, H].
  The division is guarded (baseline floored at the smallest normal fp32).
  """
  base_LxH = jnp.maximum(jnp.asarray(sums["baseline"]) / n, jnp.finfo(jnp.float32).tiny)
  uniform = 1.0 / (query_pos + 1)
  out = {}
  for c in CLASSES:
    mass_LxH = jnp.asarray(sums[c]) / n
    out[f"sel_{c}"] = mass_LxH / base_LxH
    out[f"sel_{c}_uniform"] = mass_LxH / uniform
  if "null_DxLxH" in sums:
    out["null_sel_DxLxH"] = (jnp.asarray(sums["null_DxLxH"]) / n) / base_LxH[None]
  return out


def selectivity(rows_NxLxHxS, ab_N, baseline_pos_P, query_pos: int) -> dict:
  """selectivity_from_sums of the N rows [N, L, H, S] at the query (the in-loop probe's form)."""
  return selectivity_from_sums(selectivity_sums(rows_NxLxHxS, ab_N, baseline_pos_P), rows_NxLxHxS.shape[0],
                               query_pos)


def participation_ratio(z_NxLxHxK) -> dict:
  """Per-head participation ratio of the stacked pre-output-projection vectors (not centred), [L, H].

  s = singular values of M = z[:, l, h, :] (N x K, fp32); p = s^2 / sum s^2;
  pr = exp(-sum p log p) (exp-entropy form); pr_classic = (sum s^2)^2 / sum s^4.
  """
  m_LxHxNxK = jnp.transpose(z_NxLxHxK.astype(jnp.float32), (1, 2, 0, 3))
  s_LxHxR = jnp.linalg.svd(m_LxHxNxK, compute_uv=False)
  s2 = jnp.square(s_LxHxR)
  total = jnp.maximum(s2.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
  pr_classic = jnp.square(s2.sum(-1)) / jnp.maximum(jnp.square(s2).sum(-1), jnp.finfo(jnp.float32).tiny)
  return {"pr": jnp.exp(entropy_rows(s2 / total)), "pr_classic": pr_classic}


# ----- "around the paper" measurements (discovery; METHODS.md) -----

# TransformerLens-style detector patterns, in table-column order (`tl_<name>`), and the masks of detector_masks.
DETECTORS = ("previous", "duplicate", "induction")
DETECTOR_MASKS = DETECTORS + ("kept", "gu")


def detector_masks(tokens_NxT, exclude_bos: bool = False, exclude_current_token: bool = False,
                   gu_k: int = 0):
  """The 0/1 key masks [N, 5, T, S] (every query t of each prompt, S = T keys; DETECTOR_MASKS order) whose
  attention mass sum_{t, s} A[t, s] * mask[t, s] per prompt makes the TL detector scores and Gu's alpha.

  kept: TL's exclusions (exclude_bos: key 0 dropped; exclude_current_token: key t dropped), the denominator;
  previous: s = t-1; duplicate: s < t and tok[s] == tok[t]; induction: 1 <= s < t and tok[s-1] == tok[t]
  (TL's duplicate pattern shifted one key right, strictly below the diagonal) -- each AND kept;
  gu: key gu_k on rows t >= gu_k (no exclusions). The model reduces its attention against these inside
  the attention op (`patterns_BxPxTxS`), so no [T, S] pattern leaves it; detector_scores reads the masses.
  """
  n, t = tokens_NxT.shape
  s_S, t_Tx1 = jnp.arange(t), jnp.arange(t)[:, None]
  kept_NxTxS = jnp.ones((n, t, t), bool)
  if exclude_bos:
    kept_NxTxS = kept_NxTxS & (s_S != 0)
  if exclude_current_token:
    kept_NxTxS = kept_NxTxS & (s_S != t_Tx1)
  same_NxTxS = tokens_NxT[:, None, :] == tokens_NxT[:, :, None]
  prev_tok_NxS = jnp.concatenate([jnp.full_like(tokens_NxT[:, :1], -1), tokens_NxT[:, :-1]], axis=1)
  below_TxS = s_S < t_Tx1
  pats = {
      "previous": jnp.broadcast_to(s_S == t_Tx1 - 1, (n, t, t)),
      "duplicate": below_TxS & same_NxTxS,
      "induction": below_TxS & (s_S >= 1) & (prev_tok_NxS[:, None, :] == tokens_NxT[:, :, None]),
  }
  gu_TxS = (s_S == gu_k) & (t_Tx1 >= gu_k)
  return jnp.stack([pats[d] & kept_NxTxS for d in DETECTORS] + [kept_NxTxS, jnp.broadcast_to(gu_TxS, (n, t, t))],
                   axis=1)


def detector_scores(mass_NxLxPxH, seq_len: int, gu_k: int = 0) -> dict:
  """TL detector scores and Gu's alpha, each [L, H], from the per-prompt masses on detector_masks
  (P = 5 in DETECTOR_MASKS order, summed over all T queries of each of the N prompts):

  tl_<name>: per prompt, the kept attention on the pattern over all kept attention (0 where none is kept),
  averaged over the N prompts (TransformerLens detect_head, error_measure "mul");
  gu_alpha: Gu et al. alpha_h = mean over prompts and rows t >= k of A[t, k].
  """
  m = jnp.asarray(mass_NxLxPxH, jnp.float32)
  den_NxLxH = m[:, :, DETECTOR_MASKS.index("kept")]
  out = {f"tl_{d}": jnp.where(den_NxLxH > 0, m[:, :, i] / jnp.where(den_NxLxH > 0, den_NxLxH, 1.0), 0.0).mean(0)
         for i, d in enumerate(DETECTORS)}
  out["gu_alpha"] = m[:, :, DETECTOR_MASKS.index("gu")].sum(0) / max(m.shape[0] * (seq_len - gu_k), 1)
  return out


def sink_rate(alpha_LxH, eps: float = 0.3):
  """Gu et al. Sink_k^eps: percent of heads with alpha_h > eps (scalar, in %)."""
  return 100.0 * jnp.mean((alpha_LxH > eps).astype(jnp.float32))


def token_losses(logits_BxTxV, tokens_BxT):
  """loss_BxT[:, t] = -log p(tokens[t] | tokens[<t]) (from logits at t-1), fp32; column 0 is NaN.

  The one cross-entropy formula of circuits.losses (logsumexp(l) - l[y]; it was log_softmax here before,
  equal within float rounding)."""
  from circuits import losses  # pylint: disable=import-outside-toplevel
  return losses.next_token_losses(logits_BxTxV, tokens_BxT)


def icl_positions(seq_len: int) -> tuple:
  """Token positions of the Olsson ICL score: (50, 500) when T > 500, else scaled to T as
  (max(1, round(50 T / 512)), min(T-1, round(500 T / 512))) -- e.g. (25, 250) at T = 256."""
  if seq_len > 500:
    return 50, 500
  return max(1, round(50 * seq_len / 512)), min(seq_len - 1, round(500 * seq_len / 512))


def icl_score(loss_NxT, early: int, late: int):
  """Olsson et al. ICL score: mean loss at token `late` minus mean loss at token `early` (negative = ICL)."""
  return loss_NxT[:, late].mean() - loss_NxT[:, early].mean()


def massive_activation_ratio(resid_absmax_L, resid_absmedian_L):
  """max |residual| over median |residual| per layer ("massive activations"), guarded: [L]."""
  return resid_absmax_L / jnp.maximum(resid_absmedian_L, jnp.finfo(jnp.float32).tiny)


def topk_overlap(idx_a_LxNxK, idx_b_LxNxK):
  """Router saturation: mean over tokens of |topk_a(n) ∩ topk_b(n)| / K, per layer [L]."""
  eq_LxNxKxK = idx_a_LxNxK[..., :, None] == idx_b_LxNxK[..., None, :]
  return eq_LxNxKxK.any(-1).sum(-1).mean(-1) / idx_a_LxNxK.shape[-1]
