"""Sharding on 8 fake CPU devices (a subprocess: XLA_FLAGS must precede the jax import).

5 steps per family (one test and subprocess each) on 1 device and on one (data, fsdp, tensor) mesh per
family: Pythia (2,2,2), OLMo (8,1,1), OLMoE (2,4,1): losses equal within 1e-5, params within 1e-4. Then a reduced config's step is compiled from abstract inputs on an fsdp=8 mesh
(launch/memory_1b.py does the 1B configs) and reports memory.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import os, json, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np
from configs.families import family_config
from circuits.train import setup
from circuits.train.data import SyntheticRepeatSource
assert len(jax.devices()) == 8
# each family: the 1-device reference and one mesh, the three mesh kinds spread over the families (the
# sharding rules are the same code for every family; a fourth compile per family cost 25-35 s of suite time)
MESHES = [(1, 1, 1), {"pythia": (2, 2, 2), "olmo": (8, 1, 1), "olmoe": (2, 4, 1)}[sys.argv[1]]]
out = {}
for fam in sys.argv[1:2]:
  runs = []
  for d, f, t in MESHES:
    c = family_config(fam, "tiny")
    c.model.update(d_model=32, d_ff=64)
    c.data.seq_len = 16
    c.train.steps = 5
    if fam == "pythia":  # the probe's sharding is checked once (each compile costs seconds here)
      c.probe.update(every=2, n=8)
    c.mesh.update(data=d, fsdp=f, tensor=t)
    s = setup(c)
    src = SyntheticRepeatSource(c.model.vocab_size, 16, 8)
    from circuits.train import step as step_lib
    probe = jax.device_put(step_lib.probe_batch(s.config, s.model_cfg), s.probe_sharding) if c.probe.every else {}
    state, losses, sel = s.init(), [], []
    if (f, t) == (4, 1):
      spec = state["params"]["embed"]["embedding"].sharding.spec
      assert tuple(spec) == (None, "fsdp"), spec
    for i in range(5):
      state, m = s.step(state, jax.device_put(src.batch(i), s.batch_sharding), probe)
      losses.append(float(m["loss"]))
      if bool(m.get("probe_ran", False)):
        sel.append(np.asarray(m["probe"]["sel_induction"]).tolist())
    runs.append(dict(losses=losses, sel=sel, params=[np.asarray(x).tolist() for x in jax.tree.leaves(state["params"])]))
  ref = runs[0]
  res = []
  for mesh, r in zip(MESHES, runs):
    dl = max(abs(a - b) for a, b in zip(ref["losses"], r["losses"]))
    dp = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(ref["params"], r["params"]))
    ds = float(np.max(np.abs(np.asarray(ref["sel"]) - np.asarray(r["sel"])) / np.maximum(np.abs(np.asarray(ref["sel"])), 1))) if ref["sel"] else 0.0
    res.append(dict(mesh=mesh, dloss=dl, dparam=dp, dsel=ds))
  out[fam] = res
if fam == "olmoe":
  from circuits.train.memory import compile_memory
  c = family_config("olmoe", "tiny")
  c.model.update(d_model=32, d_ff=64)
  c.mesh.update(data=1, fsdp=8)
  out["memory"] = compile_memory(c)
print("RESULT " + json.dumps(out))
'''


@pytest.mark.parametrize("fam", ["pythia", "olmo", "olmoe"])  # one subprocess each: xdist spreads them
def test_meshes_agree_and_abstract_compile(fam):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-c", SCRIPT, fam], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == 0, p.stderr[-4000:]
  out = json.loads(p.stdout.split("RESULT ", 1)[1])
  assert len(out[fam]) == 2
  for r in out[fam]:
    assert r["dloss"] <= 1e-5 and r["dparam"] <= 1e-4, (fam, r)
    assert r["dsel"] <= 1e-3, (fam, r)
  if fam == "olmoe":
    mem = out["memory"]
    assert mem["mesh"]["fsdp"] == 8 and mem["argument_gib"] > 0 and mem["temp_gib"] >= 0
