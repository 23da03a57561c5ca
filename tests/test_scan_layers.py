"""train.scan_layers: the blocks as one lax.scan over their stacked parameters (LM.__call__(scan_layers=True)).

The same function as the unrolled blocks (loss, diagnostics and gradients within 1e-6, every family, with and
without remat), and the reason it exists: on a sharded mesh each layer's parameter gradients are reduced in
that layer's iteration of the backward loop, where unrolled blocks let XLA combine every layer's gradient
all-reduce into one after the backward (keeping all of them alive: the 1B memory table in the README).
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from circuits.models import Capture, build_model
from circuits.train import config as config_lib
from tests.test_step_scale import batch_of, grad_fn, max_diff, run_result, tiny


@pytest.mark.parametrize("family", ["pythia", "olmo", "olmoe"])
def test_scan_layers_equals_unrolled(family):
  """Loss, aux (attention diagnostics, MoE routing statistics) and grads of the step's loss function within
  1e-6 of the unrolled blocks without remat, the scan under full remat (as the 1B configs run it; 3 layers, so
  the scan really iterates)."""
  c = tiny(family)
  c.model.n_layers = 3
  b = batch_of(c)
  f0, params = grad_fn(c, remat="none")
  t0, a0, g0 = f0(params, b)
  for remat in ("full",):
    f, _ = grad_fn(c, remat=remat, scan_layers=True)
    t, a, g = f(params, b)
    assert abs(float(t) - float(t0)) <= 1e-6, (remat, float(t), float(t0))
    assert max_diff(a, a0) <= 1e-6, remat
    assert max_diff(g, g0) <= 1e-6, (remat, max_diff(g, g0))
  assert max_diff(g0, jax.tree.map(jnp.zeros_like, g0)) > 1e-4  # the gradients are not trivially zero


def test_scan_layers_refuses_per_layer_captures():
  _, model_cfg = config_lib.validate(tiny("olmo"))
  model = build_model(model_cfg, rngs=nnx.Rngs(0))
  tok = jnp.zeros((2, 16), jnp.int32)
  with pytest.raises(ValueError, match="scan_layers"):
    model(tok, Capture(query_pos_B=jnp.array([3, 5])), scan_layers=True)
  with pytest.raises(ValueError, match="scan_layers"):
    model(tok, Capture(head_scale_LxH=jnp.ones((model_cfg.n_layers, model_cfg.n_heads))), scan_layers=True)


SHARDED = r'''
import os, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, numpy as np
from configs.families import family_config
from circuits.train import setup
from circuits.train.data import SyntheticRepeatSource
out = {}
for scan in (False, True):
  c = family_config("olmo", "tiny")
  c.model.update(d_model=32, d_ff=64, n_layers=3)
  c.data.seq_len = 16
  c.train.update(steps=3, warmup_steps=1, microbatches=2, remat="full", scan_layers=scan, progress=False)
  c.mesh.update(data=1, fsdp=4)
  s = setup(c, jax.devices()[:4])
  hlo = s.step.lower(s.abstract_state, s.abstract_batch(), {}).compile().as_text()
  # per all-reduce: how many MLP-weight-shaped gradients ([32, 64] gate/up, [64, 32] down) it carries
  per_op = [l.split(" all-reduce(")[0].count("f32[32,64]") + l.split(" all-reduce(")[0].count("f32[64,32]")
            for l in hlo.splitlines() if " all-reduce(" in l]
  src = SyntheticRepeatSource(c.model.vocab_size, 16, 8)
  state, losses = s.init(), []
  for i in range(1):
    state, met = s.step(state, jax.device_put(src.batch(i), s.batch_sharding), {})
    losses.append(float(met["loss"]))
  out[str(scan)] = dict(losses=losses, mlp_grads_per_all_reduce=per_op,
                        params=[np.asarray(x).tolist() for x in jax.tree.leaves(state["params"])])
print("RESULT " + json.dumps(out))
'''


def test_scan_layers_reduces_each_layer_in_its_iteration():
  """4 fake devices (fsdp 4), m = 2, remat full, 3 layers: the scanned step trains like the unrolled one
  (the loss of one step within 1e-5, params within 1e-4), and no all-reduce of its compiled step carries more
  than one layer's MLP gradients (3: gate, up, down), where the unrolled step's combined all-reduce carries
  all 9 (measured 2026-12-03: that is what kept every layer's full gradient alive at 1B)."""
  out = run_result(SHARDED)
  unrolled, scanned = out["False"], out["True"]
  assert max(abs(x - y) for x, y in zip(unrolled["losses"], scanned["losses"])) <= 1e-5
  assert max(max(abs(a - b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
             for x, y in zip(unrolled["params"], scanned["params"])) <= 1e-4
  assert max(scanned["mlp_grads_per_all_reduce"]) == 3, scanned["mlp_grads_per_all_reduce"]
  assert max(unrolled["mlp_grads_per_all_reduce"]) > 3, unrolled["mlp_grads_per_all_reduce"]
