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


# ----- the discovery sweep spread over devices and processes -----

EIGHT_DEVICES = r'''
import dataclasses, json, sys
from pathlib import Path
import jax
assert len(jax.local_devices()) == 8, jax.local_devices()
from tests.test_discover import MIXED_CFG, N, T_LEN
from circuits.discovery import ablate, measure, revisions, sweep
used = {"capture": set(), "ablate": set()}
def spy(fn, key):
  def f(*a, **k):
    used[key].add(a[2].devices.size)  # the mesh the chunks are spread over
    return fn(*a, **k)
  return f
measure._capture_spread = spy(measure._capture_spread, "capture")
ablate._spread_chunks = spy(ablate._spread_chunks, "ablate")
tmp = Path(sys.argv[1])
revs = revisions.from_list(tmp / "mixed.jsonl")
for name, devices in (("eight", None), ("one", 1)):
  used = {k: set() for k in used}
  cfg = dataclasses.replace(MIXED_CFG, measure=dataclasses.replace(MIXED_CFG.measure, chunk=8, main_chunk=2,
                                                                    devices=devices))
  sweep.sweep(revs, tmp / name, cfg=cfg, n=N, seq_len=T_LEN, progress=False)
  print("USED", name, json.dumps({k: sorted(v) for k, v in used.items()}), flush=True)
'''


def _sweep_env(devices: int):
  env = _env()
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _sweep_bytes(out: Path) -> dict:
  files = [p for sub in ("revisions", "ablations") for p in sorted((out / sub).glob("*.csv"))]
  files += [out / "table.csv", out / "ablations.csv"]
  return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_discover_eight_devices_match_one(tmp_path):
  """8 fake CPU devices: each revision's probe chunks spread over them (the main pass: 16 chunks of 2, two per
  device; the ablations: groups of 8 chunks of 8, the last padded) give byte-identical files to one device:
  every chunk's numbers come from the same per-chunk program and the host adds them up in chunk order."""
  from tests.test_discover import _mixed_list
  _mixed_list(tmp_path)
  r = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(tmp_path)], cwd=ROOT, env=_sweep_env(8),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  used = {l.split()[1]: json.loads(l.split(None, 2)[2]) for l in r.stdout.splitlines() if l.startswith("USED")}
  assert used["eight"] == {"capture": [8], "ablate": [8]}, used
  assert used["one"] == {"capture": [], "ablate": []}, used
  eight, one = _sweep_bytes(tmp_path / "eight"), _sweep_bytes(tmp_path / "one")
  assert len(one) == 2 * 4 + 2 and eight == one


def test_discover_two_processes_match_one(tmp_path):
  """`launch.discover --distributed`, 2 processes on localhost (gloo): process p measures revisions p, p+2 of
  the canonical order, process 0 writes the combined files; every file is byte-identical to one process's.
  The list mixes Pythia and OLMoE; the OLMoE final revision falls to process 1, so process 0 computes the
  router reference of its OLMoE revision itself."""
  from tests.test_discover import _mixed_list
  lst = _mixed_list(tmp_path)
  cmd = [sys.executable, "-m", "launch.discover", f"--hf_revisions={lst}", "--n=16", "--seq_len=32", "--chunk=8",
         "--n_detect=2", "--n_seeds=2", "--noanalyze", "--noprogress"]
  # the one-process run first: its compiled per-chunk programs (the same programs: one CPU device per process)
  # reach the two processes through the session's compilation cache (tests/conftest.py) instead of being
  # compiled three times at once on a 2-core machine
  one = subprocess.run(cmd + [f"--out={tmp_path / 'one'}"], cwd=ROOT, env=_sweep_env(1), capture_output=True,
                       text=True, timeout=300)
  assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
  port = _free_port()
  dist = ["--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  procs = [subprocess.Popen(cmd + [f"--out={tmp_path / 'two'}", *dist, f"--process_id={i}"],
                            cwd=ROOT, env=_sweep_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  assert ("measured 2 revision(s), 0 already done, 2 by the other processes (models: olmoe-L2-H4-D32-V80-E4, "
          "pythia-L2-H4-D32-V96)") in outs[0]
  assert "measured 2 revision(s) of this process's share; process 0 writes the combined files" in outs[1]
  two, ref = _sweep_bytes(tmp_path / "two"), _sweep_bytes(tmp_path / "one")
  assert len(ref) == 2 * 4 + 2 and two == ref
