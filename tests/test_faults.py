"""Faults and bad input (issue 8): nothing committed is lost, every error names the problem.

Kill trials run in subprocesses (tests/fault_worker.py forks one child per trial so jax/Orbax are imported
once); trial counts are printed and recorded in docs/reliability.md. NaN policies, the file-blocker workdir
and most bad HF directories are covered by tests/test_train.py and tests/test_convert.py; this file adds
what those do not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from circuits.models import ConfigError
from circuits.rundir import CheckpointCorruptError
from circuits.train import checkpoint as ckpt
from circuits.train import restore_params, train
from circuits.train.data import SyntheticRepeatSource
from configs.families import family_config
from tests.damage import DAMAGES, damage, data_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "fault_worker.py")
TRIALS = 20  # SIGKILL trials per save mode


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
           JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jaxcache")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  e.pop("XLA_FLAGS", None)
  return e


def run(args, env, timeout=150):
  p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  return p.returncode, [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")], p.stderr


# ----- 1. SIGKILL during a checkpoint save -----

@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_during_save(mode, tmp_path, env):
  stale = tmp_path / "checkpoints" / "7777.orbax-checkpoint-tmp"  # a leftover of some older killed save
  stale.mkdir(parents=True)
  rc, recs, err = run([WORKER, "ckpt", str(tmp_path), mode, str(TRIALS), str({"sync": 1, "async": 2}[mode])], env)
  bad = [r for r in recs if not r.get("ok")]
  killed_mid_save = sum(bool(r["tmp_before"]) for r in recs[1:])
  print(f"[faults] {mode}: {TRIALS} SIGKILL trials, {len(bad)} failures, {killed_mid_save} left a tmp dir")
  assert rc == 0 and not bad and len(recs) == TRIALS + 1, (bad, err[-2000:])
  assert recs[0]["tmp_before"] == ["7777.orbax-checkpoint-tmp"] and recs[0]["tmp_after"] == []
  assert killed_mid_save >= TRIALS // 4  # the kills really landed inside saves
  assert all(r["latest"] >= r["committed_seen"] for r in recs[1:])


# ----- 2. SIGTERM during a step and during the probe; 3. corrupted arrays -----

STEPS = 6


def tiny(**train_kw):
  c = family_config("pythia", "tiny")
  c.model.d_model, c.model.d_ff = 32, 64
  c.data.seq_len = 16
  c.train.update(dict(steps=STEPS, log_every=1, progress=False), **train_kw)
  c.checkpoint.update(dict(log_until=1, every=0, resume_every=2, keep_resume=1))
  c.model.n_layers = 1
  c.train.diagnostics = False
  c.probe.update(every=3, n=4)
  return c


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """The in-process runs below share one compiled step through JAX's persistent cache (restored after)."""
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")
  old = {k: getattr(jax.config, k) for k in keys}
  jax.config.update(keys[0], str(tmp_path_factory.mktemp("jaxcache_inproc")))
  jax.config.update(keys[1], 0)
  jax.config.update(keys[2], 0)
  yield
  for k, v in old.items():
    jax.config.update(k, v)


class TermAt:
  """Synthetic batches; asking for batch `at` sends SIGTERM to this process, right away or from a thread
  `delay` seconds later (then it lands while step `at` -- a probe step when at % probe.every == 0 -- runs)."""

  def __init__(self, c, at, delay=None):
    self.src, self.at, self.delay = SyntheticRepeatSource(c.model.vocab_size, 16, c.train.batch_size), at, delay

  def batch(self, step):
    if step == self.at:
      if self.delay is None:
        os.kill(os.getpid(), signal.SIGTERM)
      else:
        threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGTERM)).start()
    return self.src.batch(step)


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  w = tmp_path_factory.mktemp("straight")
  assert train(tiny(), str(w))["steps_done"] == STEPS
  return w


def same_run(a, b):
  ra, rb = rows(a), rows(b)
  assert [r["step"] for r in rb] == list(range(STEPS))
  key = lambda r: (r["loss"], r["grad_norm"], r.get("probe/pr"), r.get("probe/sel_induction"))
  assert [key(r) for r in ra] == [key(r) for r in rb]
  pa, _ = restore_params(str(a), STEPS)
  pb, _ = restore_params(str(b), STEPS)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))


@pytest.mark.parametrize("at,delay", [(2, None), (3, 0.0)], ids=["during_step", "during_probe"])
def test_sigterm_commits_current_step_and_resumes_bitwise(at, delay, straight, tmp_path):
  assert threading.current_thread() is threading.main_thread(), "train() installs its SIGTERM handler only there"
  c = tiny()
  s = train(c, str(tmp_path), source=TermAt(c, at, delay))
  assert s["interrupted"] and s["steps_done"] in (at + 1, at + 2) and s["steps_done"] < STEPS, s
  assert max(s["checkpoints"]) == s["steps_done"]  # the current step is committed
  s2 = train(c, str(tmp_path))
  assert s2["start_step"] == s["steps_done"] and s2["steps_done"] == STEPS
  same_run(straight, tmp_path)


@pytest.mark.parametrize("how", DAMAGES)
def test_corrupted_array_names_step_and_array(how, straight, tmp_path):
  w = tmp_path / "run"
  shutil.copytree(straight, w)
  damage(data_files(w / "checkpoints" / str(STEPS))[-1], how)  # the biggest array file
  pattern = rf"checkpoint step {STEPS} in .*array (params|opt_state)\.\S+ "
  try:  # params only (discovery's path): an error, or exactly the saved params if the file held opt_state only
    got, _ = restore_params(str(w), STEPS)
    want, _ = restore_params(str(straight), STEPS)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  except CheckpointCorruptError as e:
    assert re.search(pattern, str(e)), e
  with pytest.raises(CheckpointCorruptError, match=pattern):
    train(tiny(), str(w))  # resuming from it (full state) fails too, before any step


def test_nan_skip_keeps_optimizer_state(tmp_path):
  """tests/test_train.py checks params and the skip count; here the optimizer state too."""
  from circuits.train import setup

  c = tiny(nan_policy="skip")
  c.probe.every = 0
  c.checkpoint.update(resume_every=1, keep_resume=10)
  src = SyntheticRepeatSource(c.model.vocab_size, 16, c.train.batch_size)

  class NaNAt2:
    def batch(self, step):
      b = src.batch(step)
      if step == 2:
        b["targets_BxT"] = np.full_like(b["targets_BxT"], c.model.vocab_size + 7)
      return b

  assert train(c, str(tmp_path), source=NaNAt2())["n_skipped"] == 1
  s = setup(c)
  mgr = ckpt.make_manager(str(tmp_path), permanent=[], resume_every=1, keep_resume=10)
  (a, _), (b, mb) = ckpt.restore(mgr, 2, s.abstract_state), ckpt.restore(mgr, 3, s.abstract_state)
  mgr.close()
  eq = lambda x, y: all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
  assert eq(a["params"], b["params"]) and eq(a["opt_state"], b["opt_state"])
  assert int(b["step"]) == 3 and int(b["n_skipped"]) == 1 and mb["n_skipped"] == 1


# ----- 4. restore on another device count; 6. config errors that need devices -----

MESH_SCRIPT = r'''
import os, json, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np
from circuits.models import ConfigError
from circuits.train import setup, train, checkpoint as ckpt
from configs.families import family_config
w = sys.argv[1]
def cfg(**mesh):
  c = family_config("olmo", "tiny")
  c.model.update(d_model=32, d_ff=64, n_layers=1)
  c.data.seq_len = 16
  c.train.update(steps=2, warmup_steps=1, progress=False, diagnostics=False)
  c.checkpoint.update(log_until=1, every=0)
  c.mesh.update(**mesh)
  return c
devs = jax.devices()
s4 = train(cfg(data=2, fsdp=2), w, devices=devs[:4])
assert s4["mesh"]["data"] * s4["mesh"]["fsdp"] == 4, s4
host = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]
out = {}
for n, mesh in ((1, dict(data=1)), (2, dict(data=1, fsdp=2)), (8, dict(data=2, fsdp=2, tensor=2))):
  s = setup(cfg(**mesh), devs[:n])
  mgr = ckpt.make_manager(w, permanent=[], resume_every=0, keep_resume=1)
  state, meta = ckpt.restore(mgr, 2, s.abstract_state)
  mgr.close()
  if n == 1:
    ref = host(state)
  ok = all(np.array_equal(a, b) for a, b in zip(host(state), ref))
  ndev = max(len(x.sharding.device_set) for x in jax.tree.leaves(state["params"]))
  out[n] = dict(ok=ok, devices=ndev, step=meta["step"])
bad = cfg(data=8)
bad.train.batch_size = 6
try:
  train(bad, w + "_bad")
  out["batch_error"] = None
except ConfigError as e:
  out["batch_error"] = str(e)
out["bad_workdir"] = sorted(os.listdir(w + "_bad")) if os.path.isdir(w + "_bad") else None
print(json.dumps(out))
'''


def test_restore_on_other_device_counts_and_batch_error(tmp_path, env):
  rc, recs, err = run(["-c", MESH_SCRIPT, str(tmp_path / "run")], env)
  assert rc == 0 and recs, err[-3000:]
  out = recs[-1]
  for n in ("1", "2", "8"):
    assert out[n]["ok"] and out[n]["step"] == 2, out
  assert out["8"]["devices"] == 8 and out["2"]["devices"] == 2
  assert "train.batch_size=6 is not divisible" in out["batch_error"] and "data=8" in out["batch_error"]
  assert out["bad_workdir"] in (None, [])  # nothing written, nothing computed


# ----- 6. config errors at start, naming the field -----

def _set(path, value):
  def f(c):
    node = c
    for k in path.split(".")[:-1]:
      node = node[k]
    node[path.split(".")[-1]] = value
  return f


@pytest.mark.parametrize("edit,field", [
    (_set("model.n_kv_heads_typo", 2), "n_kv_heads_typo"),
    (_set("optimizer", {"lr": 1.0}), "optimizer"),
    (_set("checkpoint.keep_resume", 0), "checkpoint.keep_resume"),
    (_set("model.n_heads", 5), "d_model"),
    (_set("data.seq_len", 1), "data.seq_len"),
    (_set("train.warmup_steps", 99), "train.warmup_steps"),
])
def test_bad_config_names_field_before_compute(edit, field, tmp_path):
  c = tiny()
  edit(c)
  w = tmp_path / "never"
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    train(c, str(w))
  assert not w.exists()  # raised before the workdir (or anything) was touched


# ----- 7. bad Hugging Face directories not covered by tests/test_convert.py -----

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  from circuits.convert import fixtures as fx
  return fx.make_hf_dir(tmp_path_factory.mktemp("hf") / "olmo", "olmo_gqa_noclip")


def test_bad_hf_dirs_name_file_and_expectation(hf_dir, tmp_path):
  from circuits.convert import ConversionError, from_hf

  def copy(name):
    return shutil.copytree(hf_dir, tmp_path / name)

  d = copy("garbage_header")
  f = d / "model.safetensors"
  f.write_bytes(b"\xff" * 8 + f.read_bytes()[8:])
  with pytest.raises(ConversionError, match=r"model\.safetensors: unreadable safetensors file .*expected"):
    from_hf(d)
  d = copy("bad_json")
  (d / "config.json").write_text("{not json")
  with pytest.raises(ConversionError, match=r"config\.json: not valid JSON"):
    from_hf(d)
  d = copy("no_type")
  cfg = json.loads((d / "config.json").read_text())
  del cfg["model_type"]
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConversionError, match=r"model_type None \(expected one of"):
    from_hf(d)
  d = copy("head_dim")
  cfg = json.loads((d / "config.json").read_text())
  cfg["head_dim"] = 7
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConversionError, match=r"head_dim = 7 \(expected hidden_size // heads = \d+\)"):
    from_hf(d)


# ----- 8. a discovery sweep SIGKILLed at random moments -----

SWEEP_SCRIPT = r'''
import dataclasses, sys
from pathlib import Path
from tests.test_discover import CFG, _probes
from circuits.discovery import revisions, sweep
revs = revisions.from_list(Path(sys.argv[1]))
probe, natural = _probes()
import time
print("START", flush=True)
t0 = time.time()
res = sweep.sweep(revs, Path(sys.argv[2]), probe=probe, natural=natural, cfg=dataclasses.replace(CFG, analyze=False),
                  progress=False)
print("SWEEP_S", time.time() - t0, res["done"], flush=True)
'''
SWEEP_KILLS = 2


def test_sweep_sigkilled_at_random_moments_resumes_byte_identical(tmp_path, env):
  from tests.test_discover import _bytes, _fake_run

  lst = _fake_run(tmp_path)
  clean = subprocess.run([sys.executable, "-c", SWEEP_SCRIPT, str(lst), str(tmp_path / "clean")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=150)
  assert clean.returncode == 0, clean.stderr[-3000:]
  t_clean = float(clean.stdout.split("SWEEP_S")[1].split()[0])
  rng, out, kills, runs, finished = np.random.RandomState(8), tmp_path / "killed", 0, 0, 0
  while True:
    runs += 1
    assert runs <= 3 * SWEEP_KILLS + 2, "too many runs finished before their kill"
    p = subprocess.Popen([sys.executable, "-c", SWEEP_SCRIPT, str(lst), str(out)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "START"
    if kills < SWEEP_KILLS:
      try:
        p.wait(timeout=float(rng.uniform(0.05, 0.95)) * t_clean)
      except subprocess.TimeoutExpired:
        p.kill()
        kills += 1
    o, e = p.communicate(timeout=150)
    if p.returncode == -signal.SIGKILL:
      continue
    assert p.returncode == 0, e[-3000:]
    t_clean = min(t_clean, float(o.split("SWEEP_S")[1].split()[0]))  # warm-cache runs are faster
    assert _bytes(out) == _bytes(tmp_path / "clean")  # every finished chain: byte-identical tables
    finished += 1
    if kills >= SWEEP_KILLS:
      break
    shutil.rmtree(out)  # finished before its kill: start a new chain
  print(f"[faults] sweep: {kills} SIGKILLs over {runs} runs, {finished} finished chains, all byte-identical")


# ----- 9. a full work directory (RLIMIT_FSIZE: no mount needed) -----

def test_full_disk_fails_clearly_and_keeps_latest(tmp_path, env):
  rc, recs, err = run([WORKER, "fsize", str(tmp_path)], env)
  assert rc == 0 and recs, err[-3000:]
  r = recs[-1]
  # the failing array is named: whichever of the state's arrays (params.w, params.b, step) crossed the 4 KiB cap
  # first, which depends on the order of the asynchronous writes
  assert "File too large" in r["save_error"] and re.search(r'"(params\.[wb]|step)/', r["save_error"]), r["save_error"]
  assert "not writable (File too large)" in r["workdir_error"]  # before training starts
  assert r["latest"] == 1 and r["latest_ok"] and r["resaved_latest"] == 2 and r["tmp_after"] == []
