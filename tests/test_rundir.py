"""The run directory layout (circuits.rundir): what the trainer writes is what discovery reads, and reading
a run never imports the trainer. A tiny run is written with the trainer's own saver
(circuits.train.checkpoint), without training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from circuits import rundir

ROOT = Path(__file__).resolve().parents[1]
STEPS = (0, 1, 4)


def _model_cfg():
  from circuits.models import ModelConfig
  return ModelConfig(family="pythia", vocab_size=96, d_model=32, n_layers=2, n_heads=4, d_ff=64, rotary_pct=0.25,
                     parallel_residual=True, qkv_bias=True)


def _write_run(workdir: Path) -> dict:
  """Checkpoints at STEPS (params of a different random model each) via the trainer's make_manager/save."""
  from flax import nnx

  from circuits.models import build_model
  from circuits.train import checkpoint as ckpt

  cfg = _model_cfg()
  saved = {}
  mgr = ckpt.make_manager(str(workdir), permanent=list(STEPS), resume_every=0, keep_resume=1, async_save=False)
  for i, step in enumerate(STEPS):
    params = nnx.to_pure_dict(nnx.state(build_model(cfg, rngs=nnx.Rngs(i)), nnx.Param))
    state = dict(params=params, step=np.int32(step))
    ckpt.save(mgr, step, state, dict(step=step, tokens_seen=step * 128, config={"model": cfg.to_dict()}), force=True)
    saved[step] = jax.tree.map(np.asarray, params)
  mgr.wait_until_finished()
  mgr.close()
  return saved


def test_trainer_writes_what_rundir_reads(tmp_path):
  saved = _write_run(tmp_path)
  index = rundir.read_index(tmp_path)
  assert [(m["step"], m["tokens_seen"]) for m in index] == [(s, s * 128) for s in STEPS]
  assert all(rundir.FINGERPRINTS in m for m in index)
  assert os.path.isdir(tmp_path / rundir.CKPT_DIR / "4" / "state")
  params, meta = rundir.restore_params(tmp_path, 1)
  assert meta["step"] == 1
  # Orbax stores list indices as string keys ("0" sorts as 0 here: two layers); compare leaf by leaf
  got, want = jax.tree.leaves(params), jax.tree.leaves(saved[1])
  assert len(got) == len(want) and all(np.array_equal(np.asarray(a), b) for a, b in zip(got, want))
  assert not np.array_equal(np.asarray(got[0]), jax.tree.leaves(saved[4])[0])  # the steps hold different params
  _, meta = rundir.restore_params(tmp_path)  # default: the latest step
  assert meta["step"] == 4


def test_metrics_readers_skip_torn_lines(tmp_path):
  assert rundir.read_metrics(tmp_path) == [] and rundir.steps_logged(tmp_path) == 0
  rows = [{"step": s, "loss": 3.0 - s} for s in range(3)]
  text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo'  # a killed writer's torn last line
  rundir.metrics_path(tmp_path).write_text(text)
  assert rundir.read_metrics(tmp_path) == rows
  assert rundir.steps_logged(tmp_path) == 3  # steps 0..2 logged


READ_RUN = r'''
import sys
import circuits.discovery.revisions, circuits.discovery.sweep, circuits.discovery.measure, circuits.discovery.ablate
from circuits.discovery import revisions
revs = revisions.from_run(sys.argv[1])
cfg, model = revs[-1].load()
assert [r.name for r in revs] == ["step0", "step1", "step4"] and revs[-1].tokens == 512.0, revs
assert cfg.vocab_size == 96 and model.cfg.n_layers == 2
train = sorted(m for m in sys.modules if m == "circuits.train" or m.startswith("circuits.train."))
print("TRAINER_MODULES", train)
'''


def test_discovery_reads_a_run_without_importing_the_trainer(tmp_path):
  _write_run(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, "-c", READ_RUN, str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "TRAINER_MODULES []" in r.stdout, r.stdout
