"""Model properties: parameter counts (closed formulas), batch independence, causality, jit == eager,
ragged == dense MoE, attn_stats vs a float64 reference, head ablation == zeroed weights, rows vs HF.

Tiny configs (d_model 32-64, 2 layers, T 8-12); the 1B counts use nnx.eval_shape (nothing allocated).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from circuits.convert import model_from_params
from circuits.models import Capture, ModelConfig, build_model
from configs.families import family_config

FAMILIES = ("pythia", "olmo", "olmoe")


def n_params(cfg: ModelConfig, active: bool = False) -> int:
  """Closed formula from the config fields alone (independent of the model code).

  active: count only top_k of the experts (the parameters one token uses; router and embeddings included).
  """
  d, v, f, h, g, k = cfg.d_model, cfg.vocab_size, cfg.d_ff, cfg.n_heads, cfg.kv_heads, cfg.hd
  attn = d * h * k + 2 * d * g * k + h * k * d  # q, k, v, o
  if cfg.family == "pythia":
    norm = 2 * d  # LayerNorm weight + bias
    attn += 3 * h * k + d  # qkv bias + output bias
    ffn = d * f + f + f * d + d  # GELU MLP with biases
  elif cfg.family == "olmo":
    norm = 0  # parameter-free LayerNorm
    ffn = 3 * d * f  # SwiGLU, no bias
  else:
    norm = d  # RMSNorm weight
    attn += h * k + g * k  # full-width QK-norm weights
    ffn = d * cfg.n_experts + (cfg.top_k if active else cfg.n_experts) * 3 * d * f
  return 2 * v * d + norm + cfg.n_layers * (2 * norm + attn + ffn)


def count(cfg: ModelConfig) -> int:
  model = nnx.eval_shape(lambda: build_model(cfg, rngs=0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def cfg_1b(family):
  return ModelConfig.from_dict(family_config(family, "1b").model)


@pytest.mark.parametrize("family,total,active", [
    ("pythia", 1_011_781_632, None), ("olmo", 1_279_787_008, None), ("olmoe", 6_919_161_856, 1_282_017_280)])
def test_param_counts_1b(family, total, active):
  cfg = cfg_1b(family)
  assert n_params(cfg) == total
  assert count(cfg) == total
  if active is not None:
    assert n_params(cfg, active=True) == active


def tiny(family, **kw):
  base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, init_std=0.2, qk_init_std=0.2)
  base.update({"pythia": dict(rotary_pct=0.25, parallel_residual=True, qkv_bias=True),
               "olmo": dict(n_kv_heads=2, clip_qkv=1.0),
               "olmoe": dict(n_kv_heads=2, n_experts=4, top_k=2, d_ff=24)}[family])
  base.update(kw)
  return ModelConfig(family=family, **base)


def random_model(cfg, seed=0, std=0.2):
  """A model with every parameter random (norm gains 1 + noise, non-zero biases), drawn with numpy and
  placed without running the initialisers (fast; no test passes by a zero)."""
  rng = np.random.RandomState(seed)
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(cfg, rngs=0)), nnx.Param))

  def draw(path, a):
    x = std * rng.standard_normal(a.shape).astype(np.float32)
    return x + 1.0 if "norm" in jax.tree_util.keystr(path) or "ln" in jax.tree_util.keystr(path) else x

  return model_from_params(cfg, jax.tree_util.tree_map_with_path(draw, abstract))


@nnx.jit
def _fwd(model, tokens_BxT, query_B, scale_LxH):
  """One jitted forward (stats, rows at query_B, head scales) shared by the tests: few compiles."""
  return model(tokens_BxT, Capture(stats=True, query_pos_B=query_B, head_scale_LxH=scale_LxH))


def fwd(model, tok, query_B=None, scale_LxH=None):
  cfg = model.cfg
  query_B = np.zeros(tok.shape[0], np.int32) if query_B is None else query_B
  scale_LxH = np.ones((cfg.n_layers, cfg.n_heads), np.float32) if scale_LxH is None else scale_LxH
  return _fwd(model, tok, query_B, scale_LxH)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
  cfg = tiny(request.param)
  return cfg, random_model(cfg)


def tokens(cfg, b=3, t=10, seed=0):
  return np.random.RandomState(seed).randint(0, cfg.vocab_size, (b, t))


def test_batch_independence(family_model):
  """Example 1's logits are the same alone (batch 1) and in a batch of 3 with other examples."""
  cfg, model = family_model
  tok = tokens(cfg, b=3)
  full = np.asarray(fwd(model, tok).logits_BxTxV)
  one = np.asarray(fwd(model, tok[1:2]).logits_BxTxV)
  np.testing.assert_allclose(one[0], full[1], atol=1e-5, rtol=0)


class _InputEmbed(nnx.Module):
  """Replaces the token embedding by a given embedding-input function (for gradients w.r.t. inputs)."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, tokens_BxT, dtype):
    return self.fn().astype(dtype)


def test_causality(family_model):
  """The loss at position t has exactly zero gradient w.r.t. the input embeddings at positions > t."""
  cfg, model = family_model
  tok = tokens(cfg, b=2, t=8)
  x_BxTxD = np.asarray(model.embed(tok, jnp.float32))
  graphdef, state = nnx.split(model)
  t = 4

  def loss_at_t(x):
    m = nnx.merge(graphdef, state)
    m.embed = _InputEmbed(lambda: x)
    logits_BxV = m(tok).logits_BxTxV[:, t]
    return (jax.nn.logsumexp(logits_BxV, -1) - logits_BxV[jnp.arange(2), tok[:, t]]).sum()

  g_BxTxD = np.asarray(jax.jit(jax.grad(loss_at_t))(jnp.asarray(x_BxTxD)))
  assert np.all(g_BxTxD[:, t + 1:] == 0.0), "loss at t depends on later inputs"
  assert np.all(np.abs(g_BxTxD[:, :t + 1]).sum(-1) > 0), "loss at t ignores an earlier input"


def test_jit_matches_eager(family_model):
  cfg, model = family_model
  tok, qp = tokens(cfg), np.array([9, 4, 0])
  scale = np.ones((cfg.n_layers, cfg.n_heads), np.float32)
  eager = model(tok, Capture(stats=True, query_pos_B=qp, head_scale_LxH=scale))
  jitted = fwd(model, tok, qp, scale)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_attn_stats_match_float64_reference(family_model):
  """attn_stats == float64 numpy reductions of the full [B, L, H, T, S] probabilities.

  The full pattern comes from query-row captures: example b*T + q of a tiled batch captures query q
  of example b. Each example appears T times, so the tiled batch's means equal the original batch's.
  """
  cfg, model = family_model
  tok = tokens(cfg)
  b, t = tok.shape
  out = fwd(model, np.repeat(tok, t, 0), np.tile(np.arange(t), b).astype(np.int32))
  p = np.asarray(out.rows_BxLxHxS).reshape(b, t, cfg.n_layers, cfg.n_heads, t).transpose(0, 2, 3, 1, 4)
  p = p.astype(np.float64)  # B, L, H, T, S
  assert np.allclose(np.triu(p, 1), 0.0) and np.allclose(p.sum(-1), 1.0, atol=1e-6)
  with np.errstate(divide="ignore", invalid="ignore"):
    plogp = np.where(p > 0, p * np.log(p), 0.0)
  ref = {
      "first_mass": p[..., 0].mean(axis=(0, 3)),
      "entropy": (-plogp.sum(-1)).mean(axis=(0, 3)),
      "prev_mass": np.stack([p[..., i, i - 1] for i in range(1, t)], -1).mean(axis=(0, 3)),
      "self_mass": np.stack([p[..., i, i] for i in range(t)], -1).mean(axis=(0, 3)),
      "unplaced_mass": (1.0 - p.sum(-1)).mean(axis=(0, 3)),
  }
  stats = out.attn_stats
  assert {"first_mass", "entropy", "prev_mass", "self_mass"} <= set(stats)
  for name in set(stats) & set(ref):
    assert stats[name].shape == (cfg.n_layers, cfg.n_heads), name
    np.testing.assert_allclose(np.asarray(stats[name]), ref[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("attention", ["softmax", "gated", "sigmoid"])
def test_capture_only_equals_full_forward(family_model, attention):
  """capture_only (the last layer at the query rows alone, no MLP after it, no unembedding) captures the same
  rows and z as the full forward, at random query positions; it refuses what it cannot compute."""
  cfg, model = family_model
  if attention != "softmax":  # the gate starts at zero: draw every parameter, the gate's included
    cfg = cfg.replace(attention=attention)
    model = random_model(cfg, seed=3)
  tok, qp = tokens(cfg, b=4, t=12, seed=1), np.array([11, 5, 0, 7], np.int32)
  graphdef, state = nnx.split(model)
  full, only = jax.jit(lambda st, tk, q: tuple(
      (lambda o: (o.rows_BxLxHxS, o.z_BxLxHxK, o.logits_BxTxV))(
          nnx.merge(graphdef, st)(tk, Capture(query_pos_B=q, capture_only=c))) for c in (False, True)))(state, tok, qp)
  assert only[2] is None
  for a, b, name in zip(full[:2], only[:2], ("rows", "z")):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5, err_msg=name)
  with pytest.raises(ValueError, match="capture_only"):
    model(tok, Capture(query_pos_B=qp, stats=True, capture_only=True))
  with pytest.raises(ValueError, match="query_pos_B"):
    model(tok, Capture(capture_only=True))


def test_capture_is_a_jit_argument_and_validates():
  """A Capture passed through jax.jit (arrays as leaves, flags static) gives the outputs of the same Capture
  closed over, with mean ablation and pattern sums on random inputs; bad combinations and shapes are refused."""
  cfg = tiny("olmo")
  model = random_model(cfg, seed=5)
  rng = np.random.default_rng(7)
  tok, qp = tokens(cfg, b=3, t=10, seed=2), np.array([9, 3, 6], np.int32)
  cap = Capture(stats=True, query_pos_B=qp, head_scale_LxH=rng.uniform(size=(2, 4)).astype(np.float32),
                replace_mask_LxH=np.array([[True, False, False, True], [False, True, False, False]]),
                head_replace_LxHxK=rng.normal(size=(2, 4, cfg.hd)).astype(np.float32),
                patterns_BxPxTxS=(rng.uniform(size=(3, 2, 10, 10)) < 0.5).astype(np.float32))
  graphdef, state = nnx.split(model)
  arg = jax.jit(lambda st, c: nnx.merge(graphdef, st)(tok, c))(state, cap)
  closed = jax.jit(lambda st: nnx.merge(graphdef, st)(tok, cap))(state)
  assert len(jax.tree.leaves(cap)) == 5
  for a, b in zip(jax.tree.leaves(arg), jax.tree.leaves(closed), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)
  assert float(np.abs(np.asarray(arg.pattern_sums_BxLxPxH)).min()) > 0
  with pytest.raises(ValueError, match="head_replace_LxHxK"):
    model(tok, Capture(replace_mask_LxH=cap.replace_mask_LxH))
  with pytest.raises(ValueError, match="head_scale_LxH has 1 layers"):
    model(tok, Capture(head_scale_LxH=np.ones((1, 4), np.float32)))
  with pytest.raises(ValueError, match="hidden_only"):
    model(tok, Capture(query_pos_B=qp, capture_only=True, hidden_only=True))
  with pytest.raises(TypeError, match="Capture"):
    model(tok, {"stats": True})


def test_head_scale_zero_equals_zeroed_weights(family_model):
  """head_scale_LxH = 0 for one head == zeroing that head's slice of the output projection."""
  cfg, model = family_model
  tok, layer, head = tokens(cfg), 1, 2
  scale_LxH = np.ones((cfg.n_layers, cfg.n_heads), np.float32)
  scale_LxH[layer, head] = 0.0
  ablated = np.asarray(fwd(model, tok, scale_LxH=scale_LxH).logits_BxTxV)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  params["blocks"][layer]["attn"]["o"] = params["blocks"][layer]["attn"]["o"].at[head].set(0.0)
  manual = np.asarray(fwd(model_from_params(cfg, params), tok).logits_BxTxV)
  np.testing.assert_allclose(ablated, manual, atol=1e-5, rtol=0)
  assert np.abs(ablated - np.asarray(fwd(model, tok).logits_BxTxV)).max() > 1e-4  # the head mattered


def test_ragged_and_dense_moe_agree():
  cfg = tiny("olmoe", n_experts=6, top_k=3)
  ragged = random_model(cfg, seed=1)
  dense = model_from_params(cfg.replace(moe_impl="dense"), nnx.to_pure_dict(nnx.state(ragged, nnx.Param)))
  tok = tokens(cfg, b=2, t=12)
  a, b = fwd(ragged, tok), fwd(dense, tok)
  np.testing.assert_allclose(np.asarray(a.logits_BxTxV), np.asarray(b.logits_BxTxV), atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(a.moe["topk_idx_LxNxK"]), np.asarray(b.moe["topk_idx_LxNxK"]))
  np.testing.assert_allclose(np.asarray(a.moe["load_LxE"]), np.asarray(b.moe["load_LxE"]), atol=1e-6)

  def grads(model):  # d(mean negative log-likelihood of the next tokens) / d(params): the training path
    gdef, state = nnx.split(model, nnx.Param)
    tgt = jnp.asarray(np.roll(tok, -1, axis=1))

    def loss(st):
      logits = nnx.merge(gdef, st)(jnp.asarray(tok)).logits_BxTxV
      return -jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1).mean()
    return nnx.to_pure_dict(jax.jit(jax.grad(loss))(state))

  ga, gb = jax.tree.leaves(grads(ragged)), jax.tree.leaves(grads(dense))
  assert len(ga) == len(gb) and max(float(jnp.abs(x).max()) for x in ga) > 1e-3  # not a zero gradient
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5, rtol=1e-4)


def test_rows_match_hf_attentions(tmp_path):
  """[B, L, H, S] rows at a different query position per example == HF eager attentions there."""
  from circuits.convert import from_hf
  from circuits.convert import fixtures as fx

  name = "olmoe_gqa_top3"  # GQA, QK-norm, clip, MoE (all families' rows are in tests/test_parity.py)
  path = fx.make_hf_dir(tmp_path / name, name, seed=3)
  cfg, model = from_hf(path)
  tok = tokens(cfg, b=3, t=12, seed=3)
  qp_B = np.array([11, 0, 6])
  _, attn = fx.hf_forward(fx.load_hf_model(path), tok)
  rows_BxLxHxS = np.asarray(fwd(model, tok, qp_B).rows_BxLxHxS)
  ref_BxLxHxS = np.stack([np.stack([a[b, :, qp_B[b]] for a in attn]) for b in range(3)])
  assert rows_BxLxHxS.shape == (3, cfg.n_layers, cfg.n_heads, 12)
  np.testing.assert_allclose(rows_BxLxHxS, ref_BxLxHxS, atol=1e-5, rtol=0)
