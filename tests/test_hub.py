"""Public revisions through the real huggingface_hub code path, offline: a cache directory laid out as the Hub's
(`models--owner--name/{refs,snapshots,blobs}`) holds tiny random models built locally; HF_HUB_OFFLINE=1.

Checks: names of paper/all/explicit specs and tokens per revision; fetch from the cache returns the snapshot and
its model converts in memory to the same logits as the HF torch model; torch-pickle branches; a revision
missing from the cache, an incomplete snapshot (tree listing names a file that is absent), a bad repo id give
HubError naming the problem; `plan` offline lists what the cache holds; a sweep over hub revisions writes a table.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from circuits.discovery import hub  # pylint: disable=wrong-import-position

ROOT = Path(__file__).resolve().parents[1]
from circuits.convert import fixtures as F  # pylint: disable=wrong-import-position


def _put(cache: Path, repo_id: str, branch: str, src: Path) -> Path:
  """Copies the files of `src` into the HF cache layout as the snapshot of `branch` (blobs + symlinks)."""
  root = cache / ("models--" + repo_id.replace("/", "--"))
  commit = hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()
  snap = root / "snapshots" / commit
  snap.mkdir(parents=True, exist_ok=True)
  (root / "blobs").mkdir(exist_ok=True)
  for f in src.iterdir():
    blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
    shutil.copyfile(f, blob)
    (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
  (root / "refs").mkdir(exist_ok=True)
  (root / "refs" / branch).write_text(commit)
  return snap


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("hub")
  c = tmp / "hf_cache"
  src = F.make_hf_dir(tmp / "neox", "neox_rot25")
  for b in ("step1", "step16", "step256"):
    _put(c, "local/tiny-pythia", b, src)
  olmo = F.make_hf_dir(tmp / "olmo", "olmo_mha_clip", seed=1)
  _put(c, "local/tiny-olmo", "step2000-tokens4B", olmo)
  old = F.to_old_format(olmo, tmp / "olmo_bin", bin=True, shard=False)
  _put(c, "local/tiny-olmo", "step1000-tokens2B", old)
  return c, src


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  from huggingface_hub import constants
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import


def test_specs_and_tokens(cache, monkeypatch):
  c, _ = cache
  from huggingface_hub import constants
  with monkeypatch.context() as m:  # online, Pythia's "all" is its published schedule (no request needed)
    m.setattr(constants, "HF_HUB_OFFLINE", False)
    allp = hub.resolve("EleutherAI/pythia-1b", "all")
  assert len(allp) == 154 and allp[:3] == ["step0", "step1", "step2"] and allp[-1] == "step143000"
  assert hub.resolve("EleutherAI/pythia-1b", "paper")[:3] == ["step1", "step4", "step16"]
  assert len(hub.resolve("allenai/OLMoE-1B-7B-0924", "paper")) == 10
  assert len(hub.PYTHIA_SCHEDULE) == 154 and hub.PYTHIA_SCHEDULE[:4] == (0, 1, 2, 4)
  assert hub.PYTHIA_SCHEDULE[10:12] == (512, 1000) and hub.PYTHIA_SCHEDULE[-1] == 143000
  assert hub.resolve("local/tiny-pythia", "all", c) == ["step1", "step16", "step256"]  # offline: the cache
  assert hub.resolve("local/tiny-olmo", "all", c) == ["step1000-tokens2B", "step2000-tokens4B"]
  revs = hub.revisions("local/tiny-pythia", "step1,step256", cache_dir=c)
  assert [(r.name, r.step, r.tokens) for r in revs] == [("step1", 1, 2_097_152.0), ("step256", 256, 256 * 2_097_152.0)]
  o = hub.revisions("local/tiny-olmo", "all", cache_dir=c)
  assert [(r.step, r.tokens) for r in o] == [(1000, 2e9), (2000, 4e9)]


def test_fetch_converts_in_memory_equal_to_hf(cache):
  import torch
  c, src = cache
  (rev,) = hub.revisions("local/tiny-pythia", "step16", cache_dir=c)
  cfg, model = rev.load()
  tokens = np.random.RandomState(0).randint(0, F.VOCAB, (2, 12)).astype(np.int32)
  ours = np.asarray(model(tokens).logits_BxTxV)
  ref = F.load_hf_model(src)
  with torch.no_grad():
    theirs = ref(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
  assert cfg.family == "pythia"


def test_torch_pickle_branch(cache):
  c, _ = cache
  p = hub.fetch("local/tiny-olmo", "step1000-tokens2B", c)
  assert (p / "pytorch_model.bin").exists() and not list(p.glob("*.safetensors"))
  a = hub.revisions("local/tiny-olmo", "step1000-tokens2B", cache_dir=c)[0].load()[1]
  b = hub.revisions("local/tiny-olmo", "step2000-tokens4B", cache_dir=c)[0].load()[1]
  tok = np.arange(10, dtype=np.int32)[None]
  np.testing.assert_allclose(np.asarray(a(tok).logits_BxTxV), np.asarray(b(tok).logits_BxTxV), atol=1e-5)


def test_clear_errors(cache, tmp_path):
  c, _ = cache
  with pytest.raises(hub.HubError, match="not in the local Hugging Face cache"):
    hub.fetch("local/tiny-pythia", "step999", c)
  with pytest.raises(hub.HubError, match=r"\['step999'\] not in the local Hugging Face cache"):
    hub.revisions("local/tiny-pythia", "step1,step999", cache_dir=c)
  with pytest.raises(hub.HubError, match="expected owner/name"):
    hub.revisions("pythia-1b", "paper")
  with pytest.raises(hub.HubError, match="the paper measured"):
    hub.resolve("local/tiny-pythia", "paper")
  with pytest.raises(hub.HubError, match="listed twice"):
    hub.resolve("local/tiny-pythia", "step1,step1")
  with pytest.raises(hub.HubError, match="assumes Pythia"):
    hub.revisions("local/tiny-olmo", "step5", cache_dir=c)
  # an interrupted download: the cached tree listing names a weights file that never arrived
  c2 = tmp_path / "c2"
  shutil.copytree(c, c2, symlinks=True)
  root = c2 / "models--local--tiny-pythia"
  commit = (root / "refs" / "step1").read_text()
  from huggingface_hub import _tree_cache as tc
  files = {p.name: tc.TreeCacheEntry(size=p.stat().st_size, blob_id="0" * 40)
           for p in (root / "snapshots" / commit).iterdir()}
  files["model-00002-of-00002.safetensors"] = tc.TreeCacheEntry(size=10, blob_id="1" * 40)
  tc.write_tree_cache(str(root), commit, files)  # the library's own writer, as after a listed download
  tc._IN_MEMORY_TREE_CACHE.clear()  # pylint: disable=protected-access
  assert tc.read_tree_cache(str(root), commit) is not None  # the listing is valid for huggingface_hub
  with pytest.raises(hub.HubError, match="incomplete"):
    hub.fetch("local/tiny-pythia", "step1", c2)
  assert (root / "snapshots" / commit / "model.safetensors").exists()  # nothing deleted


def test_plan_offline_lists_the_cache(cache):
  c, _ = cache
  rows = hub.plan("local/tiny-pythia", ["step1", "step2"], c)
  assert rows[0]["cached"] and rows[0]["files"] == 2 and rows[0]["bytes"] > 0
  assert not rows[1]["cached"]


def _cli(cache_dir, *args):
  env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-m", "launch.discover", "--hf_repo", "local/tiny-pythia", "--cache_dir",
                         str(cache_dir), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_cli_hub_sweep_dry_run_and_errors(cache, tmp_path):
  """The one-command path, offline from the cache: a dry run lists the cached revisions; a sweep writes
  the table of every revision; a revision missing from the cache is one line and exit 2, writing nothing."""
  import pandas as pd
  c, _ = cache
  r = _cli(c, "--revisions", "all", "--dry_run")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "3 revision(s) of local/tiny-pythia; 3 cached" in r.stdout and "step256" in r.stdout
  out = tmp_path / "out"
  r = _cli(c, "--revisions", "all", "--out", str(out), "--n", "8", "--seq_len", "24", "--ablations=false",
           "--analyze=false", "--progress=false")
  assert r.returncode == 0, r.stderr[-2000:]
  df = pd.read_csv(out / "table.csv")
  assert sorted(df["revision"].unique()) == ["step1", "step16", "step256"] and len(df) == 3 * 2 * 4
  r = _cli(c, "--revisions", "step1,step999", "--out", str(tmp_path / "bad"), "--n", "8", "--seq_len", "24")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "step999" in r.stderr


def test_revisions_pass_dtype_and_moe_impl(tmp_path):
  """hub.revisions(dtype=, moe_impl=) (the CLI's --dtype / --moe_impl) reach the converted model; defaults: fp32
  parameters and the config's expert computation (ragged)."""
  from flax import nnx
  import jax
  from circuits.convert import random_hf
  c = dict(random_hf.PUBLISHED["allenai/OLMoE-1B-7B-0924"], hidden_size=32, num_hidden_layers=2, intermediate_size=16,
           vocab_size=96, num_attention_heads=4, num_key_value_heads=4, num_experts=4, num_experts_per_tok=2)
  _put(tmp_path / "cache", "local/tiny-olmoe", "step10-tokens1B", random_hf.write(tmp_path / "src", c, dtype="bfloat16"))
  got = {}
  for kw in ({}, {"dtype": "bfloat16", "moe_impl": "dense"}):
    (rev,) = hub.revisions("local/tiny-olmoe", "step10-tokens1B", cache_dir=tmp_path / "cache", **kw)
    cfg, model = rev.load()
    dtypes = {str(x.dtype) for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
    got[cfg.moe_impl] = (cfg.param_dtype, dtypes)
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6) % 96
    got[cfg.moe_impl] += (np.asarray(model(tokens).logits_BxTxV),)
  assert got["ragged"][:2] == ("float32", {"float32"}) and got["dense"][:2] == ("bfloat16", {"bfloat16"})
  np.testing.assert_allclose(got["dense"][2], got["ragged"][2], atol=1e-5, rtol=1e-5)  # bf16 file: same weights
