"""Two processes (JAX's distributed runtime on localhost, gloo CPU collectives) give the same losses as one
process over the same global batches; each process reads only its own slice of a batch from the token cache.

The runs are `python -m launch.train` subprocesses (configs/data_tiny.py: pythia tiny, T 48, global batch 8,
4 steps, no checkpoints); process p of the 2-process run uses its own workdir (its JSONL is compared).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  from circuits.data import cache_builder
  from configs.data_tiny import get_config
  cfg = get_config()
  path = tmp_path_factory.mktemp("dist") / "cache"
  cache_builder.build_cache(cfg.data, seed=0, n_rows=int(cfg.train.batch_size) * STEPS, path=str(path))
  return path


def _cmd(cache, workdir, extra=()):
  return [sys.executable, "-m", "launch.train", "--config", "configs/data_tiny.py", f"--workdir={workdir}",
          f"--config.data.cache={cache}", f"--config.data.n_sequences={8 * STEPS}", f"--config.train.steps={STEPS}",
          "--config.train.log_every=1", "--config.train.warmup_steps=1", "--config.checkpoint.enabled=False",
          "--config.train.progress=False", *extra]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  return env


def _losses(workdir) -> list[float]:
  rows = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in sorted(rows, key=lambda r: r["step"])]


def test_two_processes_match_one(cache, tmp_path):
  port = _free_port()
  procs = [subprocess.Popen(_cmd(cache, tmp_path / f"p{i}", ["--distributed", f"--coordinator_address=localhost:{port}",
                                                             "--num_processes=2", f"--process_id={i}"]),
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  one = subprocess.run(_cmd(cache, tmp_path / "one"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
  outs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
  assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  summaries = [json.loads(o.strip().splitlines()[-1]) for o in outs]
  assert all(s["mesh"]["data"] == 2 for s in summaries), summaries  # the mesh spans both processes
  ref = _losses(tmp_path / "one")
  assert len(ref) == STEPS
  for i in range(2):
    np.testing.assert_allclose(_losses(tmp_path / f"p{i}"), ref, rtol=2e-5, atol=1e-6)


def test_process_slices_partition_the_global_batch(cache):
  from circuits.data.reader import TokenCache, batch_rows
  c = TokenCache(str(cache))
  full = c.batch(2, 8)["tokens_BxT1"]
  parts = [c.batch(2, 8, p, 2)["tokens_BxT1"] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), full)
  assert batch_rows(2, 8, 1, 2) == (20, 24)
