"""Attention variants (sink mitigations) against a float64 numpy reference, on random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from circuits.models import ModelConfig, build_model
from circuits.models.attention import Probe, attend, causal_mask
from circuits.models.config import ATTENTION_KINDS

B, T, H, G, K = 2, 7, 4, 2, 8


def numpy_attention(q, k, v, kind, sink=None, gate=None):
  """Independent float64 reference: [B,T,H,K] q, [B,S,G,K] k/v -> (z [B,T,H,K], probs [B,H,T,S])."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  rep = H // G
  k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(K)
  s = logits.shape[-1]
  causal = np.tril(np.ones((T, s), bool))
  probs = np.zeros_like(logits)
  for bi in range(B):
    for h in range(H):
      for t in range(T):
        l = logits[bi, h, t, :t + 1]
        if kind in ("softmax", "gated"):
          e = np.exp(l - l.max()); p = e / e.sum()
        elif kind in ("softmax1", "sink_logit"):
          extra = 0.0 if kind == "softmax1" else float(sink[h])
          m = max(l.max(), extra)
          e = np.exp(l - m); p = e / (e.sum() + np.exp(extra - m))
        elif kind == "sigmoid":
          p = 1.0 / (1.0 + np.exp(-(l - np.log(s))))
        probs[bi, h, t, :t + 1] = p
  assert not np.any(probs[:, :, ~causal])
  z = np.einsum("bhts,bshk->bthk", probs, v)
  if gate is not None:
    z = z * np.asarray(gate, np.float64)
  return z, probs


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_attend_matches_float64_reference(kind):
  rng = np.random.default_rng(1)
  q = rng.normal(size=(B, T, H, K)).astype(np.float32) * 1.5
  k = rng.normal(size=(B, T, G, K)).astype(np.float32) * 1.5
  v = rng.normal(size=(B, T, G, K)).astype(np.float32)
  sink = rng.normal(size=(H,)).astype(np.float32) if kind == "sink_logit" else None
  gate = (1 / (1 + np.exp(-rng.normal(size=(B, T, H, K))))).astype(np.float32) if kind == "gated" else None
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  qpos = np.array([T - 1, 3])
  z, aux = attend(jnp.array(q), jnp.array(k), jnp.array(v), causal_mask(pos), Probe(stats=True, query_pos_B=jnp.array(qpos)),
                  kind=kind, sink_logit_H=None if sink is None else jnp.array(sink),
                  gate_BxTxHxK=None if gate is None else jnp.array(gate))
  z_ref, p_ref = numpy_attention(q, k, v, kind, sink, gate)
  np.testing.assert_allclose(np.asarray(z), z_ref, rtol=1e-5, atol=1e-5)
  rows_ref = p_ref[np.arange(B), :, qpos, :]
  np.testing.assert_allclose(np.asarray(aux["rows_BxHxS"]), rows_ref, atol=1e-6)
  st = aux["stats"]
  np.testing.assert_allclose(np.asarray(st["first_mass"]), p_ref[..., 0].mean((0, 2)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(st["unplaced_mass"]), (1 - p_ref.sum(-1)).mean((0, 2)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(st["self_mass"]),
                             np.diagonal(p_ref, axis1=-2, axis2=-1).mean((0, 2)), atol=1e-6)
  pn = p_ref / p_ref.sum(-1, keepdims=True)
  ent = -np.where(pn > 0, pn * np.log(np.where(pn > 0, pn, 1)), 0).sum(-1).mean((0, 2))
  np.testing.assert_allclose(np.asarray(st["entropy"]), ent, atol=1e-5)
  if kind in ("softmax1", "sink_logit"):
    assert np.all(np.asarray(st["unplaced_mass"]) > 1e-3)  # the virtual key really takes mass


def _params(model):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(
      nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]}


@pytest.mark.parametrize("family", ["pythia", "olmo", "olmoe"])
def test_switching_variant_changes_nothing_else(family):
  from configs.families import family_config
  base = ModelConfig.from_dict(family_config(family, "tiny").model)
  ref = _params(build_model(base, 0))
  tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, base.vocab_size)
  for kind in ATTENTION_KINDS[1:]:
    p = _params(build_model(base.replace(attention=kind), 0))
    extra = set(p) - set(ref)
    assert set(ref) <= set(p), kind
    assert all(("gate" in n or "sink_logit" in n) for n in extra), (kind, extra)
    for n in ref:
      np.testing.assert_array_equal(p[n], ref[n], err_msg=f"{kind}: {n}")
  # a sink logit at -inf is softmax again: the models agree
  m_soft = build_model(base, 0)
  m_sink = build_model(base.replace(attention="sink_logit"), 0)
  for blk in m_sink.blocks:
    blk.attn.sink_logit[...] = jnp.full_like(blk.attn.sink_logit[...], -1e4)
  np.testing.assert_allclose(np.asarray(m_sink(tokens).logits_BxTxV), np.asarray(m_soft(tokens).logits_BxTxV),
                             atol=1e-5)
