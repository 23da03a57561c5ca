"""Resume is bitwise exact on CPU: 2N steps straight == N + SIGTERM + rest, and == SIGKILL after a
committed checkpoint + rest. Real subprocesses of the CLI (python -m launch.train)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from circuits.train import restore_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
ARGS = ["--config.model.d_model=32", "--config.model.d_ff=64", "--config.data.seq_len=16",
        f"--config.train.steps={STEPS}", "--config.train.log_every=1", "--config.train.progress=False",
        "--config.checkpoint.resume_every=2", "--config.checkpoint.keep_resume=1",
        "--config.checkpoint.log_until=1", "--config.probe.every=3", "--config.probe.n=4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
           JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jaxcache")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  e.pop("XLA_FLAGS", None)
  return e


def launch(workdir, env, *extra):
  cmd = [sys.executable, "-m", "launch.train", "--config", "configs/olmoe_tiny.py", "--workdir", str(workdir),
         *ARGS, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p, timeout=120):
  out, err = p.communicate(timeout=timeout)
  assert p.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["step"] for r in rows] == list(range(STEPS))
  return [(r["loss"], r["grad_norm"], r.get("probe/pr")) for r in rows]


def committed(workdir):
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(s) for s in os.listdir(d) if s.isdigit() and os.path.exists(os.path.join(d, s, "commit_success.txt")))


def wait_for(pred, timeout=120):
  t = time.time()
  while not pred():
    assert time.time() - t < timeout, "timed out"
    time.sleep(0.05)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env):
  w = tmp_path_factory.mktemp("straight")
  s = finish(launch(w, env))
  assert s["steps_done"] == STEPS
  return w


def assert_same(a, b):
  assert losses(a) == losses(b)  # every loss, grad norm and probe value, exactly
  pa, ma = restore_params(str(a), STEPS)
  pb, mb = restore_params(str(b), STEPS)
  assert jax.tree.structure(pa) == jax.tree.structure(pb)
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  assert ma["tokens_seen"] == mb["tokens_seen"] == STEPS * 8 * 16


def test_sigterm_then_resume(straight, tmp_path, env):
  p = launch(tmp_path, env, "--config.train.host_sleep_s=0.4")
  wait_for(lambda: 3 in committed(tmp_path) or any(s > 2 for s in committed(tmp_path)) or
           os.path.exists(tmp_path / "metrics.jsonl") and sum(1 for _ in open(tmp_path / "metrics.jsonl")) >= 3)
  p.send_signal(signal.SIGTERM)
  s = finish(p)
  assert s["interrupted"] and s["steps_done"] < STEPS, s
  assert s["steps_done"] in committed(tmp_path)  # SIGTERM committed the current step
  s2 = finish(launch(tmp_path, env))
  assert s2["start_step"] == s["steps_done"] and s2["steps_done"] == STEPS
  assert_same(straight, tmp_path)


def test_sigkill_after_commit_then_resume(straight, tmp_path, env):
  p = launch(tmp_path, env, "--config.train.host_sleep_s=0.4")
  wait_for(lambda: any(s >= 2 for s in committed(tmp_path)))
  p.send_signal(signal.SIGKILL)
  p.communicate(timeout=60)
  assert p.returncode == -signal.SIGKILL
  last = max(committed(tmp_path))
  assert last < STEPS
  s2 = finish(launch(tmp_path, env))
  assert s2["start_step"] == last and s2["steps_done"] == STEPS
  assert_same(straight, tmp_path)


def test_microbatches_resume_bitwise(tmp_path_factory, env):
  """train.microbatches = 2 (gradient accumulation inside the step): resume after SIGKILL is bitwise too,
  and the data position (tokens_seen) is that of m = 1."""
  m2 = "--config.train.microbatches=2"
  a = tmp_path_factory.mktemp("straight_m2")
  assert finish(launch(a, env, m2))["steps_done"] == STEPS
  b = tmp_path_factory.mktemp("killed_m2")
  p = launch(b, env, m2, "--config.train.host_sleep_s=0.4")
  wait_for(lambda: any(s >= 2 for s in committed(b)))
  p.send_signal(signal.SIGKILL)
  p.communicate(timeout=60)
  last = max(committed(b))
  assert last < STEPS
  s2 = finish(launch(b, env, m2))
  assert s2["start_step"] == last and s2["steps_done"] == STEPS
  assert_same(a, b)
