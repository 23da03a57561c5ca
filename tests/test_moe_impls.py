"""MoE implementations agree: moe_impl "gmm" (megablox, Pallas interpret mode on CPU) == "ragged" (ragged_dot)
== "dense" within 1e-5 (outputs, gradients, lb/z losses, routing statistics; each array's max abs difference
relative to max(1, its max abs value): "dense" sums in another order, measured up to 5e-7 of the array's largest
entry, "gmm" 1e-7, routing indices identical), on one device and with the
per-device routing of circuits.models.moe (jax.shard_map over the batch axes) on 4 fake CPU devices, where
also a train step on a (data 2, fsdp 2) mesh equals the 1-device step. (4 devices, not 8: the routing is one
shard_map over the batch axes whatever their sizes, and the Pallas-interpreted gmm runs once per device.)"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from circuits.models import ModelConfig
from circuits.models.moe import MoE, grouped_matmul

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ("ragged", "gmm", "dense")
CFG = ModelConfig(family="olmoe", vocab_size=64, d_model=16, n_layers=1, n_heads=2, d_ff=24, n_experts=6, top_k=3,
                  init_std=0.3)


def moe_loss(cfg, params, x_BxTxD, mesh=None):
  """A loss touching every output: sum(y * sin y) + lb_loss + z_loss, with the routing stats as aux; with
  `mesh`, the MoE runs under its abstract mesh (per-device routing)."""
  model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: MoE(cfg, rngs=nnx.Rngs(0)))), params)
  if mesh is None:
    y, s = model(x_BxTxD)
  else:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      y, s = model(x_BxTxD)
  return jnp.sum(y * jnp.sin(y)) + s["lb_loss"] + s["z_loss"], (y, s)


def close(a, b) -> float:
  """max |a - b| / max(1, max |b|) (float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def test_grouped_matmul_gmm_equals_ragged_dot_and_float64():
  """Both grouped matmuls vs a float64 numpy reference; M = 45 (not a tile multiple: gmm pads) with an empty
  group (dropless routing: every row is in a group, sum(sizes) = M)."""
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(45, 16)).astype(np.float32), rng.normal(size=(4, 16, 24)).astype(np.float32)
  sizes = np.array([10, 0, 20, 15], np.int32)
  ref = np.zeros((45, 24))
  start = 0
  for e, n in enumerate(sizes):
    ref[start:start + n] = x[start:start + n].astype(np.float64) @ w[e].astype(np.float64)
    start += n
  for impl in ("ragged", "gmm"):
    y = np.asarray(grouped_matmul(jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes), impl))
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5, err_msg=impl)
  with pytest.raises(ValueError, match="impl must be"):
    grouped_matmul(jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes), "dense")


def test_impls_agree_one_device():
  params = nnx.state(MoE(CFG, rngs=nnx.Rngs(0)), nnx.Param)
  x = jax.random.normal(jax.random.key(1), (3, 5, 16))  # N = 15, M = 45
  out = {}
  for impl in IMPLS:
    f = jax.jit(jax.value_and_grad(lambda p, x, c=CFG.replace(moe_impl=impl): moe_loss(c, p, x), argnums=(0, 1),
                                   has_aux=True))
    out[impl] = f(params, x)
  ref = out["ragged"]
  assert float(jnp.abs(ref[1][0]["gate"][...]).max()) > 1e-3  # the experts' gradients are not trivially zero
  for impl in IMPLS:
    (l, (y, s)), grads = out[impl]
    np.testing.assert_array_equal(np.asarray(s["topk_idx_NxK"]), np.asarray(ref[0][1][1]["topk_idx_NxK"]))
    leaves = jax.tree.leaves((ref[0][0], ref[0][1][0], ref[0][1][1], ref[1]))
    assert len(leaves) == 13  # loss, y, 6 routing stats, 5 gradients
    for a, b in zip(jax.tree.leaves((l, y, s, grads)), leaves):
      assert close(a, b) <= 1e-5, (impl, close(a, b))


SCRIPT = r'''
import os, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from circuits.models.moe import MoE
from circuits.train.sharding import make_mesh
from tests.test_moe_impls import CFG, IMPLS, close, moe_loss
assert len(jax.devices()) == 4
mesh = make_mesh(dict(data=2, fsdp=2))
params = nnx.state(MoE(CFG, rngs=nnx.Rngs(0)), nnx.Param)
x = jax.random.normal(jax.random.key(1), (8, 5, 16))  # 2 rows (N 10, M 30) per device
res = {}
def run(impl, sharded, compute=True):
  cfg = CFG.replace(moe_impl=impl)
  g = jax.value_and_grad(lambda p, x: moe_loss(cfg, p, x, mesh if sharded else None), argnums=(0, 1), has_aux=True)
  args = jax.device_put((params, x), NamedSharding(mesh, P())) if sharded else (params, x)
  return jax.jit(g)(*args) if compute else None, str(jax.make_jaxpr(g)(*args)).count("shard_map")
# the reference: ragged without a mesh. gmm and dense without a mesh are compared with it on one device by
# test_impls_agree_one_device (same CFG and params); here only their jaxprs are checked (no shard_map)
ref, n_ref = run("ragged", False)
for impl in IMPLS:
  res[f"{impl}/False"] = dict(shard_maps=n_ref if impl == "ragged" else run(impl, False, compute=False)[1])
  out, n_sm = run(impl, True)
  d = max(close(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))
  res[f"{impl}/True"] = dict(maxdiff=d, shard_maps=n_sm)
try:
  moe_loss(CFG, params, x[:6], mesh)
  res["bad_batch"] = "no error"
except ValueError as e:
  res["bad_batch"] = str(e)

# a train step of tiny OLMoE: gmm on a (data 2, fsdp 2) mesh == ragged on 1 device (3 steps)
from configs.families import family_config
from circuits.train import setup
from circuits.train.data import SyntheticRepeatSource
runs = []
for impl, (d, f) in (("ragged", (1, 1)), ("gmm", (2, 2))):
  c = family_config("olmoe", "tiny")
  c.model.update(d_model=32, d_ff=64, n_layers=1, moe_impl=impl)  # one MoE layer routes like two
  c.data.seq_len = 16
  c.train.diagnostics = False  # attention diagnostics do not touch the MoE (the moe metrics are always on)
  c.mesh.update(data=d, fsdp=f)
  s = setup(c)
  src = SyntheticRepeatSource(c.model.vocab_size, 16, 8)
  state, losses, lb = s.init(), [], []
  for i in range(3):
    state, m = s.step(state, jax.device_put(src.batch(i), s.batch_sharding), {})
    losses.append(float(m["loss"]))
    lb.append(np.asarray(m["moe"]["lb_loss"]).tolist())
  runs.append(dict(losses=losses, lb=lb, params=[np.asarray(p) for p in jax.tree.leaves(state["params"])]))
a, b = runs
res["step"] = dict(dloss=max(abs(u - v) for u, v in zip(a["losses"], b["losses"])),
                   dlb=float(np.max(np.abs(np.asarray(a["lb"]) - np.asarray(b["lb"])))),
                   dparam=max(float(np.max(np.abs(u - v))) for u, v in zip(a["params"], b["params"])))
print("RESULT " + json.dumps(res))
'''


def test_per_device_routing_on_4_devices():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-4000:]
  res = json.loads(p.stdout.split("RESULT ", 1)[1])
  for impl in IMPLS:
    assert res[f"{impl}/False"]["shard_maps"] == 0, (impl, res)  # no mesh: no shard_map
    r = res[f"{impl}/True"]
    assert r["maxdiff"] <= 1e-5, (impl, r)
    assert r["shard_maps"] > 0, (impl, r)  # the mesh path really ran (forward and transpose)
  assert "does not split over the mesh's batch axes" in res["bad_batch"], res["bad_batch"]
  st = res["step"]
  assert st["dloss"] <= 1e-5 and st["dlb"] <= 1e-5 and st["dparam"] <= 1e-4, st
