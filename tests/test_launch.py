"""launch/tpu_pod.sh and launch/slurm_gpu.sh: --dry-run prints the exact commands; bad arguments fail
clearly; the configs they name (configs/study_1b.py:<family>, configs/study_laptop.py:<family>) load and
validate as trainer configs."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sh(script, *args):
  return subprocess.run(["bash", str(ROOT / "launch" / script), *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=30)


def test_tpu_pod_dry_run_prints_every_command():
  r = _sh("tpu_pod.sh", "--dry-run", "--name", "pod1", "--zone", "us-central2-b", "--accelerator", "v4-32",
          "--family", "olmo", "--workdir", "gs://bucket/olmo", "--repo", "https://example.org/circuits.git", "--",
          "--config.train.steps=10")
  assert r.returncode == 0, r.stderr
  lines = [shlex.split(l) for l in r.stdout.strip().splitlines()]
  assert len(lines) == 3
  create, install, train = lines
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and "pod1" in create
  assert create[create.index("--accelerator-type") + 1] == "v4-32"
  for cmd in (install, train):
    assert cmd[4] == "ssh" and "--worker=all" in cmd
  assert "pip install" in install[install.index("--command") + 1]
  assert "git clone --branch main https://example.org/circuits.git circuits" in install[install.index("--command") + 1]
  remote = train[train.index("--command") + 1]
  assert ("-m launch.train --config configs/study_1b.py:olmo --workdir gs://bucket/olmo --distributed "
          "--config.train.microbatches=8 --config.train.steps=10") in remote  # the extras last: they win


def test_slurm_dry_run_prints_script_and_submit():
  r = _sh("slurm_gpu.sh", "--dry-run", "--family", "olmoe", "--workdir", "/shared/runs/olmoe", "--nodes", "4",
          "--gpus-per-node", "8", "--partition", "gpu")
  assert r.returncode == 0, r.stderr
  out = r.stdout
  for want in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=gpu",
               "srun .venv/bin/python -m launch.train --config configs/study_1b.py:olmoe --workdir "
               "/shared/runs/olmoe --distributed", "sbatch /shared/runs/olmoe/slurm/train.sbatch"):
    assert want in out, (want, out)
  assert not Path("/shared/runs/olmoe").exists()  # a dry run writes nothing


def test_tpu_pod_discover_dry_run_prints_the_worker_command():
  r = _sh("tpu_pod.sh", "--mode", "discover", "--dry-run", "--name", "pod1", "--zone", "us-central2-b",
          "--accelerator", "v4-32", "--hf_repo", "EleutherAI/pythia-1b", "--revisions", "step1,step16", "--out",
          "/mnt/shared/pythia", "--repo", "https://example.org/circuits.git", "--", "--dtype", "bfloat16")
  assert r.returncode == 0, r.stderr
  create, install, sweep = [shlex.split(l) for l in r.stdout.strip().splitlines()]
  assert create[4] == "create" and install[4] == "ssh" and "--worker=all" in sweep
  remote = shlex.split(sweep[sweep.index("--command") + 1])
  assert remote[remote.index("&&") + 1:] == [
      ".venv/bin/python", "-m", "launch.discover", "--hf_repo", "EleutherAI/pythia-1b", "--revisions", "step1,step16",
      "--out", "/mnt/shared/pythia", "--distributed", "--dtype", "bfloat16"]
  r = _sh("tpu_pod.sh", "--mode", "discover", "--dry-run", "--name", "pod1", "--zone", "z", "--run", "/mnt/runs/a",
          "--out", "/mnt/shared/a", "--repo", "x")
  last = shlex.split(r.stdout.strip().splitlines()[-1])
  assert r.returncode == 0 and last[last.index("--command") + 1].endswith(
      "launch.discover --run /mnt/runs/a --out /mnt/shared/a --distributed")


def test_slurm_discover_dry_run_prints_script_and_submit():
  r = _sh("slurm_gpu.sh", "--mode", "discover", "--dry-run", "--hf_revisions", "/shared/revs.jsonl", "--out",
          "/shared/disc/mixed", "--nodes", "2", "--gpus-per-node", "4", "--", "--n_seeds", "20")
  assert r.returncode == 0, r.stderr
  for want in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
               "#SBATCH --job-name=circuits-discover", "#SBATCH --output=/shared/disc/mixed/slurm/%j.out",
               "srun .venv/bin/python -m launch.discover --hf_revisions /shared/revs.jsonl --out /shared/disc/mixed "
               "--distributed --noprogress --n_seeds 20", "sbatch /shared/disc/mixed/slurm/discover.sbatch"):
    assert want in r.stdout, (want, r.stdout)
  assert not Path("/shared/disc").exists()  # a dry run writes nothing


@pytest.mark.parametrize("script,args,why", [
    ("tpu_pod.sh", ["--mode", "discover", "--dry-run", "--name", "p", "--zone", "z", "--repo", "x",
                    "--hf_repo", "a/b"], "--out is required"),
    ("tpu_pod.sh", ["--mode", "discover", "--dry-run", "--name", "p", "--zone", "z", "--repo", "x", "--out", "o"],
     "exactly one of --hf_repo"),
    ("slurm_gpu.sh", ["--mode", "discover", "--dry-run", "--out", "o", "--run", "w", "--hf_repo", "a/b"],
     "exactly one of --hf_repo"),
    ("slurm_gpu.sh", ["--mode", "sweep", "--dry-run"], "--mode must be train or discover")])
def test_discover_mode_bad_arguments_fail_clearly(script, args, why):
  r = _sh(script, *args)
  assert r.returncode != 0 and why in r.stderr, r.stderr


def test_discover_cli_has_distributed_flags():
  import sys
  r = subprocess.run([sys.executable, "-m", "launch.discover", "--helpshort"], capture_output=True, text=True,
                     cwd=ROOT, timeout=120)
  for f in ("--distributed", "--coordinator_address", "--num_processes", "--process_id", "--devices"):
    assert f in r.stdout + r.stderr, f


@pytest.mark.parametrize("script,args", [("tpu_pod.sh", ["--dry-run", "--name", "x"]),
                                         ("slurm_gpu.sh", ["--dry-run", "--family", "gpt2", "--workdir", "w"]),
                                         ("tpu_pod.sh", ["--bogus"])])
def test_bad_arguments_fail_clearly(script, args):
  r = _sh(script, *args)
  assert r.returncode != 0
  assert script in r.stderr


@pytest.mark.parametrize("cfg", ["study_1b", "study_laptop"])
@pytest.mark.parametrize("family", ["pythia", "olmo", "olmoe"])
def test_study_family_configs_validate(cfg, family):
  import importlib

  from circuits.train import config as C
  from configs.families import PUBLISHED
  c = importlib.import_module(f"configs.{cfg}").get_config(family)
  full, model = C.validate(c)
  assert model.family == family
  if cfg == "study_1b":  # the published architecture and hyperparameters
    for k, v in PUBLISHED[family].items():
      assert getattr(model, k) == v, k
    assert full.train.batch_size == 1024 and full.data.seq_len == (4096 if family == "olmoe" else 2048)
  else:
    assert model.d_model == 64 and full.data.seq_len == 64 and full.probe.token_lo == 67


def test_train_cli_has_distributed_flags():
  import sys
  r = subprocess.run([sys.executable, "-m", "launch.train",
                      "--helpshort"], capture_output=True, text=True, cwd=ROOT, timeout=120)
  for f in ("--distributed", "--coordinator_address", "--num_processes", "--process_id"):
    assert f in r.stdout + r.stderr


def _overrides(cmd: str) -> dict:
  """The --config.a.b=v flags of a train command, as {"a.b": "v"}."""
  return dict(w[len("--config."):].split("=", 1) for w in shlex.split(cmd) if w.startswith("--config."))


@pytest.mark.parametrize("family", ["pythia", "olmo", "olmoe"])
@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sh"])
def test_dry_run_carries_1b_scale_settings(script, family):
  """The 1B train command sets the microbatches for its mesh (1024 rows over the devices, 8 rows per device per
  microbatch; OLMoE 4) and OLMoE's moe_impl (TPU: gmm, GPU: ragged); with those overrides the config validates
  and keeps the configs' bf16 / remat full / loss_chunk 256."""
  from circuits.train import config as C
  from configs.study_1b import get_config

  if script == "tpu_pod.sh":  # v4-64: 64 TensorCores = 32 jax devices
    r = _sh(script, "--dry-run", "--name", "p", "--zone", "z", "--accelerator", "v4-64", "--family", family,
            "--workdir", "gs://b/x", "--repo", "https://example.org/c.git")
    train = shlex.split(r.stdout.strip().splitlines()[-1])
    cmd, devices, impl = train[train.index("--command") + 1], 32, "gmm"
  else:
    r = _sh(script, "--dry-run", "--family", family, "--workdir", "/shared/x", "--nodes", "2", "--gpus-per-node", "8")
    cmd, devices, impl = next(l for l in r.stdout.splitlines() if l.startswith("srun ")), 16, "ragged"
  assert r.returncode == 0, r.stderr
  ov = _overrides(cmd)
  per = 4 if family == "olmoe" else 8
  assert ov["train.microbatches"] == str(1024 // devices // per), cmd
  assert ov.get("model.moe_impl") == (impl if family == "olmoe" else None), cmd
  c = get_config(family)
  c.train.microbatches = int(ov["train.microbatches"])
  if "model.moe_impl" in ov:
    c.model.moe_impl = ov["model.moe_impl"]
  full, model = C.validate(c)
  assert model.dtype == "bfloat16" and full.train.remat == "full" and full.train.loss_chunk == 256
  assert full.train.batch_size // devices // full.train.microbatches == per
  assert model.moe_impl == (impl if family == "olmoe" else "ragged")


@pytest.mark.parametrize("script,args", [
    ("tpu_pod.sh", ["--name", "p", "--zone", "z", "--accelerator", "v4-48", "--family", "olmo", "--workdir", "w",
                    "--repo", "r"]),
    ("slurm_gpu.sh", ["--family", "olmo", "--workdir", "w", "--nodes", "3", "--gpus-per-node", "8"])])
def test_dry_run_refuses_a_mesh_that_does_not_split_the_batch(script, args):
  r = _sh(script, "--dry-run", *args)
  assert r.returncode == 2 and "cannot split the 1B configs' 1024 rows" in r.stderr, r.stderr
