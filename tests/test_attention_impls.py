"""model.attention_impl: blockwise (and the splash kernel in Pallas interpret mode) against the exact `attend`.

Tolerances (fp32, random non-zero inputs): outputs and gradients 1e-5 relative (max |a - b| / max |a| per
array); the five per-head attention reductions 1e-6 absolute against `diagnostics.attention_reductions` of the
materialised weights (the independent reference: per-element p log p, raw diagonals).
"""

import contextlib
import dataclasses
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from circuits import diagnostics as D
from circuits.models import Capture, ModelConfig, build_model
from circuits.models import attention as A
from circuits.models import blockwise as BW
from circuits.models import kernels
from circuits.models.config import ConfigError

KINDS = ("softmax", "gated", "softmax1", "sink_logit", "sigmoid")


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def max_stat_diff(s1, s2):
  return max(float(np.abs(np.asarray(s1[n]) - np.asarray(s2[n])).max()) for n in D.ATTN_REDUCTIONS)


def reference_stats(q, k, mask_BxTxS, kind, sink):
  """attention_reductions of the materialised fp32 weights (the pre-existing definition)."""
  b, t, h, kd = q.shape
  kk = jnp.repeat(k.astype(jnp.float32), h // k.shape[2], axis=2)
  logits = jnp.einsum("bthk,bshk->bhts", q.astype(jnp.float32), kk) / np.sqrt(kd)
  probs = A.attention_weights(logits, mask_BxTxS, kind, sink)
  return D.attention_reductions(probs, normalised=kind in ("softmax", "gated"))


def inputs(b=2, t=37, h=4, g=2, kd=8, seed=0, scale=1.5):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, h, kd)) * scale, jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, t, g, kd)) * scale, jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, t, g, kd)), jnp.float32)
  sink = jnp.asarray(rng.normal(size=(h,)), jnp.float32)
  seg = jnp.asarray(np.sort(rng.integers(0, 3, size=(b, t)), axis=1), jnp.int32)
  return q, k, v, sink, seg


@pytest.mark.parametrize("kind", KINDS)
def test_blockwise_equals_attend(kind):
  """GQA (H 4, G 2), two-to-three packed segments, T = 37 with blocks of 16 (padding, causal block skipping):
  z and gradients rel 1e-5; blockwise, stats-pass and exact-path reductions 1e-6 from the reference."""
  q, k, v, sink, seg = inputs()
  sink = sink if kind == "sink_logit" else None
  pos = jnp.broadcast_to(jnp.arange(q.shape[1]), q.shape[:2])
  mask = A.causal_mask(pos, seg)

  def exact(q, k, v, sink):
    z, aux = A.attend(q, k, v, mask, A.Probe(stats=True), kind=kind, sink_logit_H=sink)
    return z, aux["stats"]

  def blocked(q, k, v, sink):
    return BW.blockwise_attend(q, k, v, kind=kind, sink_logit_H=sink, segment_ids_BxT=seg, block=16, stats=True)

  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  argnums = (0, 1, 2, 3) if sink is not None else (0, 1, 2)

  @jax.jit
  def run(q, k, v, sink):
    out = {}
    for name, fn in (("exact", exact), ("blocked", blocked)):
      loss = lambda *a: (jnp.sum(jnp.sin(fn(*a)[0]) * w), fn(*a))
      (_, out[name]), out[name + "_grads"] = jax.value_and_grad(loss, argnums, has_aux=True)(q, k, v, sink)
    out["ref"] = reference_stats(q, k, mask, kind, sink)
    out["pass"] = BW.attention_stats(q, k, kind=kind, sink_logit_H=sink, segment_ids_BxT=seg, block=16)
    kk = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)
    logits = jnp.einsum("bthk,bshk->bhts", q, kk) / np.sqrt(q.shape[-1])
    out["from_logits"] = D.attention_reductions_from_logits(
        logits, A.attention_weights(logits, mask, kind, sink), mask, kind=kind, sink_logit_H=sink)
    return out

  out = run(q, k, v, sink)
  (z1, st1), (z2, st2) = out["exact"], out["blocked"]
  assert rel(z1, z2) <= 1e-5
  assert max_stat_diff(out["ref"], st1) <= 1e-6  # the exact path
  assert max_stat_diff(out["ref"], st2) <= 1e-6  # blockwise, from its own pass
  assert max_stat_diff(out["ref"], out["pass"]) <= 1e-6  # the kernels' stats pass
  assert max_stat_diff(out["ref"], out["from_logits"]) <= 1e-6  # the lse route from materialised logits
  for a, b in zip(out["exact_grads"], out["blocked_grads"]):
    assert rel(a, b) <= 1e-5


def test_stats_pass_every_lane_width():
  """The diagnostics' reduce splits each key block into lanes of 16, 8 or 1 (blockwise._mass_and_moment, by
  what divides the block): blocks of 16, 24 and 20 at T 37 (padding, segments, GQA) take each width; the stats
  pass equals the materialised-weights reference to 1e-6 with each, for softmax and sigmoid (whose moment is
  sum w log w); and the (mass, moment) pair equals a float64 numpy sum on a random block of each width."""
  q, k, _, _, seg = inputs()
  pos = jnp.broadcast_to(jnp.arange(q.shape[1]), q.shape[:2])
  mask = A.causal_mask(pos, seg)
  for kind in ("softmax", "sigmoid"):
    ref = reference_stats(q, k, mask, kind, None)
    for block in (16, 24, 20):
      st = BW.attention_stats(q, k, kind=kind, segment_ids_BxT=seg, block=block)
      assert max_stat_diff(ref, st) <= 1e-6, (kind, block)
  rng = np.random.default_rng(5)
  for c in (32, 24, 20):
    w = rng.random((3, 7, c)).astype(np.float32)
    logw = rng.normal(size=(3, 7, c)).astype(np.float32) * 4
    mass, moment = BW._mass_and_moment(jnp.asarray(w), jnp.asarray(logw))
    w64 = w.astype(np.float64)
    np.testing.assert_allclose(np.asarray(mass), w64.sum(-1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(moment), (w64 * logw).sum(-1), rtol=1e-5, atol=1e-5)


def test_stats_stay_fp32_with_bf16_inputs():
  """bf16 q/k (logits up to ~30): the stats pass equals the fp32 reference on the same bf16 operands to
  1e-6, while the same formulas fed a bf16 lse are off by far more (so the test can tell)."""
  q, k, _, _, _ = inputs(b=2, t=64, h=2, g=2, kd=16, seed=3, scale=2.5)
  q, k = q.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
  t = q.shape[1]
  mask = A.causal_mask(jnp.broadcast_to(jnp.arange(t), (2, t)))
  ref = jax.jit(lambda q, k: reference_stats(q, k, mask, "softmax", None))(q, k)
  st = jax.jit(lambda q, k: BW.attention_stats(q, k, kind="softmax", block=16))(q, k)
  assert max_stat_diff(ref, st) <= 1e-6
  # the same reductions from a bf16-rounded lse
  logits = jnp.einsum("bthk,bshk->bhts", q.astype(jnp.float32), k.astype(jnp.float32)) / 4.0
  masked = jnp.where(mask[:, None], logits, -jnp.inf)
  lse = jax.nn.logsumexp(masked, -1)
  probs = jax.nn.softmax(masked, -1)
  mean_s = jnp.sum(jnp.where(mask[:, None], probs * logits, 0.0), -1)
  diag = lambda a, o: jnp.diagonal(a, o, -2, -1)
  pad = lambda a: jnp.concatenate([jnp.zeros_like(a[..., :1]), a], -1)
  args = (mean_s, logits[..., 0], pad(diag(logits, -1)), diag(logits, 0), mask[:, :, 0], pad(diag(mask, -1)))
  good = D.reductions_from_row_stats(lse, *args, kind="softmax")
  bad = D.reductions_from_row_stats(lse.astype(jnp.bfloat16).astype(jnp.float32), *args, kind="softmax")
  assert max_stat_diff(ref, good) <= 1e-6
  assert float(jnp.abs(lse).max()) > 10 and max_stat_diff(ref, bad) > 1e-3


def tiny(family, **kw):
  base = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=4, d_ff=64, attention_block=16)
  fam = dict(pythia=dict(rotary_pct=0.25, parallel_residual=True, qkv_bias=True),
             olmo=dict(clip_qkv=0.5, n_kv_heads=2),
             olmoe=dict(n_experts=4, top_k=2, d_ff=16, moe_impl="dense"))[family]
  return ModelConfig(family=family, **{**base, **fam, **kw})


def _loss_grads_stats(cfg, tokens, seg=None, **call):
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  kw = {} if seg is None else dict(segment_ids_BxT=seg)

  def loss(p):
    out = nnx.merge(graphdef, p)(tokens, Capture(stats=True, **call), **kw)
    lg = out.logits_BxTxV
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(lg), tokens[..., None], -1))
    return ce, (lg, out.attn_stats)

  (l, (lg, st)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return l, lg, st, g


@pytest.mark.parametrize("family,kind,segments", [("pythia", "softmax", True), ("olmo", "sink_logit", False),
                                                  ("olmoe", "gated", False)])
def test_models_blockwise_vs_exact(family, kind, segments):
  """Every family (partial rotary + fused qkv, clip_qkv + GQA, QK-norm + MoE) with a variant each (every
  variant is compared at the op level above): logits, loss, every parameter gradient (the variants' gate and
  sink parameters included) rel 1e-5; per-layer stats 1e-6. T = 24, blocks of 16."""
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 24)), jnp.int32)
  seg = jnp.asarray(np.sort(rng.integers(0, 3, (2, 24)), 1), jnp.int32) if segments else None
  cfg = tiny(family, attention=kind, qk_init_std=0.5)
  ex = _loss_grads_stats(cfg, tokens, seg)
  bw = _loss_grads_stats(cfg.replace(attention_impl="blockwise"), tokens, seg)
  assert rel(ex[0], bw[0]) <= 1e-5 and rel(ex[1], bw[1]) <= 1e-5
  assert max_stat_diff(ex[2], bw[2]) <= 1e-6
  for a, b in zip(jax.tree.leaves(ex[3]), jax.tree.leaves(bw[3])):
    assert rel(a, b) <= 1e-5


def test_captures_and_ablations_with_blockwise():
  """A blockwise model still captures rows (forced exact) and ablates heads on z like the exact one."""
  cfg = tiny("olmo")
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 24)), jnp.int32)
  ex, bw = build_model(cfg, rngs=0), build_model(cfg.replace(attention_impl="blockwise"), rngs=0)
  qp = jnp.array([23, 10], jnp.int32)
  scale = jnp.asarray(np.random.default_rng(2).uniform(size=(1, 4)), jnp.float32)
  repl_mask = jnp.array([[True, False, True, False]])
  repl = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 8)), jnp.float32)
  ablate = Capture(head_scale_LxH=scale, replace_mask_LxH=repl_mask, head_replace_LxHxK=repl)
  run = nnx.jit(lambda m: (m(tokens, Capture(query_pos_B=qp)).rows_BxLxHxS, m(tokens, ablate).logits_BxTxV))
  (r1, l1), (r2, l2) = run(ex), run(bw)
  np.testing.assert_allclose(np.asarray(r1), np.asarray(r2), rtol=1e-6, atol=1e-7)
  assert rel(l1, l2) <= 1e-5


def test_no_ts_residual_in_backward():
  """jax.ad_checkpoint.saved_residuals of the blockwise loss holds no array with two dims of length T; the
  exact loss does (so the check can fail)."""
  t = 48  # no other dim of the tiny model is 48
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (1, t)), jnp.int32)

  def ts_residuals(cfg):
    model = build_model(cfg, rngs=0)
    graphdef, params = nnx.split(model, nnx.Param)
    f = lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens, Capture(stats=True)).logits_BxTxV)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
      print_saved_residuals(f, params)
    shapes = [[int(x) for x in d.split(",") if x] for d in re.findall(r"\w+\[([\d,]*)\]", buf.getvalue())]
    assert shapes, "print_saved_residuals printed no residuals"
    return [d for d in shapes if d.count(t) >= 2]

  assert ts_residuals(tiny("pythia")), "the exact path should keep [T, S] weights"
  assert ts_residuals(tiny("pythia", attention_impl="blockwise")) == []


@pytest.mark.parametrize("impl", ["exact", "blockwise"])
def test_stats_add_no_per_element_transcendentals(impl):
  """The diagnostics (softmax) take the lse from the softmax's own max and sum (exact) or the online softmax's
  running max and sum (blockwise), and the masses from O(T) dot products: XLA's cost analysis of the compiled
  loss-and-grad step (the bench's `cost` rows; blockwise with one key block, so every element is counted)
  counts about as many transcendentals with stats as without (measured 1.003-1.02), where a per-element
  p log p entropy (attention_reductions of the weights, the exact path before 2026-12-03) counted 1.3-1.8x
  (1.37 here). T 128, so the [T, S] elements dominate the count."""
  from circuits.bench import attention as bench_attention

  (row,) = bench_attention.bench_cost((128,), tokens=512, models=("1-layer d64",), impl=impl)
  assert row["impl"] == impl and row["batch"] == 4
  assert row["transcendentals_off"] > 4 * 2 * 128 * 128  # the softmax's exp over every element is counted
  assert row["transcendentals_on_over_off"] <= 1.05, row


def test_memory_grows_linearly_in_T():
  """XLA temp memory of a 1-layer model's value_and_grad step (abstract compile, memory-optimized CPU
  scheduler, in a subprocess): blockwise grows ~linearly (each doubling of T < 2.5x, no HLO shape with two
  dims of length T), exact ~quadratically (> 3x from 1024 to 2048)."""
  from circuits.bench import attention as bench_attention

  rows = bench_attention.memory_rows_subprocess((1024, 2048, 4096, 8192), ("blockwise",))
  rows += bench_attention.memory_rows_subprocess((1024, 2048), ("exact",))
  temp = {(r["impl"], r["seq_len"]): r["temp_bytes"] for r in rows}
  for t in (1024, 2048, 4096):
    assert temp[("blockwise", 2 * t)] / temp[("blockwise", t)] < 2.5, temp
  assert temp[("exact", 2048)] / temp[("exact", 1024)] > 3.0, temp  # measured 3.4
  assert all(not r["ts_shapes"] for r in rows if r["impl"] == "blockwise")


@pytest.mark.parametrize("kind,segments", [("softmax", True), ("sink_logit", False)])
def test_splash_interpret_equals_attend(kind, segments):
  """The TPU splash kernel in Pallas interpret mode (CPU): H 2 on one kv head (GQA), T 256, K 128, blocks of
  128; z and gradients rel 1e-5 against `attend`."""
  q, k, v, sink, seg = inputs(b=1, t=256, h=2, g=1, kd=128, seed=5, scale=0.3)
  sink = sink if kind == "sink_logit" else None
  seg = seg if segments else None
  mask = A.causal_mask(jnp.broadcast_to(jnp.arange(256), (1, 256)), seg)
  exact = lambda q, k, v, sink: A.attend(q, k, v, mask, A.Probe(), kind=kind, sink_logit_H=sink)[0]
  splash = lambda q, k, v, sink: kernels.splash_attention(q, k, v, kind=kind, sink_logit_H=sink, segment_ids_BxT=seg,
                                                          block=128, interpret=True)
  assert rel(exact(q, k, v, sink), splash(q, k, v, sink)) <= 1e-5
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  argnums = (0, 1, 2, 3) if sink is not None else (0, 1, 2)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * w)
  for a, b in zip(jax.grad(loss(exact), argnums)(q, k, v, sink), jax.grad(loss(splash), argnums)(q, k, v, sink)):
    assert rel(a, b) <= 1e-5


def test_exact_stats_need_every_query_row():
  """The exact path reads the masses off the logits' diagonals, which only a causal T == S call has: a call with
  fewer query rows than keys asks for stats in vain and is told so (no silently wrong diagonal)."""
  q, k, v, _, _ = inputs(b=1, t=16, h=2, g=2, kd=8)
  mask = A.causal_mask(jnp.broadcast_to(jnp.arange(16), (1, 16)))
  with pytest.raises(ValueError, match="T == S.*T 4, S 16"):
    A.attend(q[:, :4], k, v, mask[:, :4], A.Probe(stats=True))
  z, aux = A.attend(q[:, :4], k, v, mask[:, :4], A.Probe())  # without stats the same call is fine
  assert z.shape == (1, 4, 2, 8) and not aux


def test_kernel_choices_fail_clearly():
  q, k, v, _, _ = inputs(b=1, t=16, h=2, g=2, kd=8)
  with pytest.raises(kernels.KernelUnavailable, match="cudnn.*blockwise"):
    kernels.cudnn_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
  with pytest.raises(kernels.KernelUnavailable, match="splash.*TPU.*blockwise"):
    kernels.splash_attention(q, k, v)
  with pytest.raises(kernels.KernelUnavailable, match="sink_logit.*'blockwise'.*'splash'"):
    kernels.check_kind("cudnn", "sink_logit")
  with pytest.raises(ConfigError, match="attention_impl.*sigmoid.*'exact', 'blockwise'"):
    ModelConfig(attention="sigmoid", attention_impl="splash")
  with pytest.raises(ConfigError, match="attention_impl"):
    ModelConfig(attention_impl="flash")
  assert kernels.resolve_impl("auto", "softmax", jnp.float32) == "blockwise"  # CPU


def test_layout_fields_and_resume_comparison():
  """fused_qkv / qk_norm default to the family's layout and can be set; the resume check ignores the impl."""
  from circuits.train.loop import _model_math

  assert ModelConfig(family="pythia").fused_qkv and not ModelConfig(family="pythia").qk_norm
  moe = ModelConfig(family="olmoe", n_experts=4, top_k=2)
  assert moe.qk_norm and not moe.fused_qkv
  m = build_model(tiny("olmo", qk_norm=True), rngs=0)
  assert hasattr(m.blocks[0].attn, "q_norm")
  with pytest.raises(ConfigError, match="fused_qkv"):
    ModelConfig(family="olmo", n_heads=8, n_kv_heads=2, fused_qkv=True)
  old = {k: v for k, v in dataclasses.asdict(ModelConfig()).items()
         if k not in ("attention_impl", "attention_block", "fused_qkv", "qk_norm")}
  assert _model_math(old) == _model_math(ModelConfig(attention_impl="blockwise").to_dict())
  assert _model_math(old) != _model_math(ModelConfig(attention="gated").to_dict())


SPLASH_SHARDED = r'''
import os, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from circuits.models import attention as A, kernels
from circuits.train import sharding as shd
rng = np.random.default_rng(7)
b, t, h, g, kd = 4, 256, 2, 1, 128
q, k, v = (jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32) for s in ((b, t, h, kd), (b, t, g, kd), (b, t, g, kd)))
sink = jnp.asarray(rng.normal(size=(h,)), jnp.float32)
seg = jnp.asarray(np.sort(rng.integers(0, 3, size=(b, t)), axis=1), jnp.int32)
w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
mask = A.causal_mask(jnp.broadcast_to(jnp.arange(t), (b, t)), seg)
exact = lambda q, k, v, s: jnp.sum(A.attend(q, k, v, mask, A.Probe(), kind="sink_logit", sink_logit_H=s)[0] * w)
mesh = shd.make_mesh(dict(data=2, fsdp=2), jax.devices()[:4])

def splash(q, k, v, s):
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    z = kernels.splash_attention(q, k, v, kind="sink_logit", sink_logit_H=s, segment_ids_BxT=seg, block=128,
                                 interpret=True)
  return jnp.sum(z * w)

bs = NamedSharding(mesh, P(shd.BATCH_AXES))
f = jax.jit(jax.value_and_grad(splash, argnums=(0, 1, 2, 3)), in_shardings=(bs, bs, bs, NamedSharding(mesh, P())))
hlo = f.lower(q, k, v, sink).as_text()
out, grads = f(q, k, v, sink)
ref_out, ref_grads = jax.value_and_grad(exact, argnums=(0, 1, 2, 3))(q, k, v, sink)
rel = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())
print("RESULT " + json.dumps(dict(out=rel(out, ref_out), grads=[rel(a, r) for a, r in zip(grads, ref_grads)],
                                  shard_map="shard_map" in hlo or "sdy.manual_computation" in hlo)))
'''


def test_splash_under_a_batch_mesh_runs_per_device():
  """4 fake devices (data 2 x fsdp 2), the trainer's abstract mesh active: splash (interpret mode, sink logits,
  segments) runs inside shard_map over the batch axes and equals `attend` on the whole batch: the loss and
  every gradient, the replicated sink logits' included (summed over devices), rel 1e-5."""
  from tests.test_step_scale import run_result

  out = run_result(SPLASH_SHARDED)
  assert out["shard_map"], "the kernel call was not wrapped in shard_map"
  assert out["out"] <= 1e-5 and max(out["grads"]) <= 1e-5, out
