"""A new user's mistakes, through the binaries (issue 18): each gives ONE line `error: ...` on stderr naming the
problem and the fix, exit status 2, no traceback (circuits/cli.py); a model whose vocabulary is smaller than
the token cache's is refused before step 0, whatever train.nan_policy says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from circuits import cli
from tests.damage import data_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2
TINY = ["--config", "configs/pythia_tiny.py", f"--config.train.steps={STEPS}", "--config.train.warmup_steps=1",
        "--config.train.batch_size=2", "--config.data.seq_len=16", "--config.model.n_layers=1",
        "--config.model.d_model=32", "--config.model.d_ff=64", "--config.train.progress=False",
        "--config.train.diagnostics=False", "--config.checkpoint.log_until=1", "--config.checkpoint.every=0",
        "--config.checkpoint.async_save=False"]
DISCOVER = ["--n=8", "--seq_len=16", "--n_seeds=2", "--n_detect=2", "--chunk=8", "--noprogress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
           JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jaxcache")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  e.pop("XLA_FLAGS", None)
  return e


def launch(module, *args, env, timeout=300):
  return subprocess.run([sys.executable, "-m", f"launch.{module}", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r, *fragments):
  """Exit 2; stderr is exactly one line `error: ...` holding every fragment; no traceback."""
  lines = r.stderr.strip().splitlines()
  assert r.returncode == cli.EXIT_USAGE, (r.returncode, r.stderr[-3000:])
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  for f in fragments:
    assert f in lines[0], (f, lines[0])
  return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env):
  """One tiny run trained through the CLI: checkpoints 0, 1, 2."""
  w = tmp_path_factory.mktemp("cli") / "run"
  r = launch("train", *TINY, f"--workdir={w}", env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["checkpoints"] == [0, 1, STEPS]
  return w


@pytest.fixture
def damaged(run_dir, tmp_path):
  """A fresh copy of run_dir whose latest checkpoint has every array file cut to 16 bytes (params and optimizer).
  Cutting to half was flaky for discovery, which reads the params only: the async save may put them all in a
  file's first half."""
  w = tmp_path / "damaged"
  shutil.copytree(run_dir, w)
  for f in data_files(w / "checkpoints" / str(STEPS)):
    if os.path.getsize(f) > 1024:
      with open(f, "r+b") as fh:
        fh.truncate(16)
  return w


def test_train_resuming_a_damaged_checkpoint(damaged, env):
  r = launch("train", *TINY, f"--workdir={damaged}", env=env)
  assert_one_line_error(r, f"checkpoint step {STEPS}", "cannot be read")


def test_train_with_an_unbuilt_cache(tmp_path, env):
  r = launch("train", *TINY, f"--workdir={tmp_path / 'w'}", f"--config.data.cache={tmp_path / 'nocache'}", env=env)
  assert_one_line_error(r, "no token cache at", "python -m launch.build_data")
  assert not (tmp_path / "w").exists()  # refused before the workdir was made


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_discover_on_a_missing_or_empty_run(kind, tmp_path, env):
  run = tmp_path / "run"
  if kind == "empty":
    run.mkdir()
  r = launch("discover", f"--run={run}", f"--out={tmp_path / 'out'}", *DISCOVER, env=env)
  assert_one_line_error(r, str(run), "no such directory" if kind == "missing" else "no committed checkpoint")


def test_discover_on_a_damaged_checkpoint(damaged, tmp_path, env):
  r = launch("discover", f"--run={damaged}", f"--out={tmp_path / 'out'}", *DISCOVER, env=env)
  assert_one_line_error(r, f"checkpoint step {STEPS}", "array params.")


def test_misspelt_override(tmp_path, env):
  r = launch("train", *TINY, "--config.train.stepz=100", f"--workdir={tmp_path / 'w'}", env=env)
  assert_one_line_error(r, "--config.train.stepz=100", "no field 'train.stepz'", "did you mean train.steps?")
  r = launch("train", *TINY, "--config.trian.steps=100", f"--workdir={tmp_path / 'w'}", env=env)
  assert_one_line_error(r, "no field 'trian'", "did you mean train?")
  assert not (tmp_path / "w").exists()


def test_misspelt_config_file(tmp_path, env):
  r = launch("train", "--config", "configs/pythia_tinny.py", f"--workdir={tmp_path / 'w'}", env=env)
  assert_one_line_error(r, "config file 'configs/pythia_tinny.py' does not exist", "did you mean configs/pythia_tiny.py")
  r = launch("study", "--config=configs/study_laptp.py", env=env)  # another binary, the same boundary
  assert_one_line_error(r, "'configs/study_laptp.py' does not exist", "configs/study_laptop.py")


def test_vocab_smaller_than_the_cache_is_refused_before_step_0(tmp_path, env):
  cache = tmp_path / "cache"
  r = launch("build_data", "--config=configs/data_tiny.py", f"--out={cache}", "--config.data.n_sequences=4",
             "--config.data.seq_len=16", "--config.data.synthetic.span_min=2",
             "--config.data.synthetic.span_max=4", "--progress=false", env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  vocab = json.loads((cache / "meta.json").read_text())["vocab_size"]
  data = [f"--config.data.cache={cache}", "--config.data.task=circuits.combined", "--config.data.vocab=synthetic:384",
          "--config.train.steps=1", "--config.train.warmup_steps=0"]
  w = tmp_path / "small"
  for policy in ("abort", "skip"):  # skip would have hidden it: every step non-finite, checkpoints saved
    r = launch("train", *TINY, *data, "--config.model.vocab_size=100", f"--config.train.nan_policy={policy}",
               f"--workdir={w}", env=env)
    assert_one_line_error(r, "model.vocab_size=100", f"({vocab} ids", f"model.vocab_size >= {vocab}")
    assert not w.exists()  # before the workdir, so before step 0 and any checkpoint
  r = launch("train", *TINY, *data, f"--config.model.vocab_size={vocab}", f"--workdir={tmp_path / 'ok'}", env=env)
  assert r.returncode == 0, r.stderr[-3000:]  # the same command with the cache's vocabulary trains
  s = json.loads(r.stdout.strip().splitlines()[-1])
  assert s["steps_done"] == 1 and s["n_skipped"] == 0


def test_one_line_joins_a_multi_line_message():
  assert cli.one_line("token cache 'x' does not match the config:\n  seq_len: 1\n  vocab: 2\nRebuild it") == \
      "token cache 'x' does not match the config: seq_len: 1; vocab: 2; Rebuild it"
