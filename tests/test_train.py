"""Train loop on tiny configs (1 CPU device): each family writes diagnostics, probes, checkpoints;
bad configs and workdirs fail before compute; NaN policies."""

import json
import os

import numpy as np
import pytest

from circuits.discovery.measure import MeasureConfig, measure_revision
from circuits.discovery.revisions import model_from_params
from circuits.models import ConfigError
from circuits.train import NonFiniteLossError, WorkdirError, read_index, restore_params, train
from circuits.train import config as config_lib
from circuits.train.data import SyntheticRepeatSource
from circuits.train.step import probe_batch
from configs.families import family_config


def tiny(family="pythia", **train_kw):
  c = family_config(family, "tiny")
  c.model.d_model, c.model.d_ff = 32, 64
  c.data.seq_len = 16
  c.train.update(dict(steps=9, log_every=1, progress=False), **train_kw)
  c.checkpoint.update(dict(log_until=4, every=0, resume_every=3, keep_resume=1))
  return c


def read_jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


@pytest.mark.parametrize("family", ["pythia", "olmo", "olmoe"])
def test_family_run_writes_everything(family, tmp_path):
  c = tiny(family)
  c.probe.update(every=4, n=8)
  s = train(c, str(tmp_path))
  assert s["steps_done"] == 9 and not s["interrupted"]
  rows = read_jsonl(tmp_path)
  assert [r["step"] for r in rows] == list(range(9))
  L, H = c.model.n_layers, c.model.n_heads
  for r in rows:
    assert np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tokens_seen"] == r["step"] * 8 * 16
    for k in ("first_mass", "entropy", "prev_mass", "self_mass"):
      assert np.asarray(r[f"attn/{k}"]).shape == (L, H)
    if family == "olmoe":
      assert np.asarray(r["moe/load"]).shape == (L, c.model.n_experts)
      assert np.allclose(np.asarray(r["moe/load"]).sum(-1), 1.0, atol=1e-5)
      for k in ("imbalance", "router_entropy", "lb_loss", "z_loss"):
        assert np.asarray(r[f"moe/{k}"]).shape == (L,)
    has_probe = r["step"] % 4 == 0
    assert r["probe_ran"] == has_probe and ("probe/sel_induction" in r) == has_probe
    if has_probe:
      for k in ("sel_induction", "sel_previous", "sel_first", "pr", "pr_classic"):
        assert np.all(np.isfinite(np.asarray(r[f"probe/{k}"], float))), k
  assert rows[0]["lr"] == 0.0 and rows[1]["lr"] > 0  # warmup starts at 0
  assert os.listdir(tmp_path / "tb") and any(f.startswith("events.out") for f in os.listdir(tmp_path / "tb"))
  # permanent 0,1,2,4 and the final step; of the resume steps (3, 6, 9) only the latest is kept
  assert s["checkpoints"] == [0, 1, 2, 4, 9]
  index = read_index(str(tmp_path))
  assert [(m["step"], m["tokens_seen"]) for m in index] == [(st, st * 128) for st in s["checkpoints"]]
  params, meta = restore_params(str(tmp_path), 4)
  assert meta["step"] == 4 and params["embed"]["embedding"].shape == (c.model.vocab_size, 32)
  # the in-loop probe (captures only) and the offline discovery pass agree on checkpoint 4's parameters
  _, model_cfg = config_lib.validate(c)
  pb = probe_batch(c, model_cfg)
  tok, ab = pb["tokens_NxT"], pb["ab_N"]
  n, t = tok.shape
  probe = dict(tokens_NxT=tok, ab_N=ab, query_pos_N=np.full(n, t - 1), target_N=tok[np.arange(n), ab + 1])
  df, _ = measure_revision(model_from_params(model_cfg, params), probe, revision="step4", step=4, tokens=512.0,
                           cfg=MeasureConfig(n_detect=0, null_draws=5), baseline_pos_P=pb["baseline_P"])
  for k in ("sel_induction", "sel_first", "pr"):
    offline = df[k].to_numpy().reshape(L, H)
    np.testing.assert_allclose(np.asarray(rows[4][f"probe/{k}"], float), offline, rtol=1e-4, atol=1e-6, err_msg=k)


class NaNAt:
  """Synthetic batches whose targets at `bad_step` are out of range: the loss is NaN there."""

  def __init__(self, c, bad_step):
    self.src, self.bad, self.v = SyntheticRepeatSource(c.model.vocab_size, c.data.seq_len, c.train.batch_size), bad_step, c.model.vocab_size

  def batch(self, step):
    b = self.src.batch(step)
    if step == self.bad:
      b["targets_BxT"] = np.full_like(b["targets_BxT"], self.v + 7)
    return b


def test_nan_abort_names_step_and_saves_nothing_bad(tmp_path):
  c = tiny(nan_policy="abort")
  c.checkpoint.update(resume_every=1, keep_resume=20)
  with pytest.raises(NonFiniteLossError, match="at step 5"):
    train(c, str(tmp_path), source=NaNAt(c, 5))
  assert max(m["step"] for m in read_index(str(tmp_path))) <= 5  # state after the NaN step (6) never saved


def test_nan_skip_leaves_state_unchanged(tmp_path):
  c = tiny(nan_policy="skip")
  c.checkpoint.update(resume_every=1, keep_resume=20)
  s = train(c, str(tmp_path), source=NaNAt(c, 5))
  assert s["steps_done"] == 9 and s["n_skipped"] == 1
  p5, _ = restore_params(str(tmp_path), 5)
  p6, m6 = restore_params(str(tmp_path), 6)
  p7, _ = restore_params(str(tmp_path), 7)
  import jax
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p5), jax.tree.leaves(p6)))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p6), jax.tree.leaves(p7)))
  assert m6["n_skipped"] == 1
  rows = {r["step"]: r for r in read_jsonl(tmp_path)}
  assert rows[5]["finite"] is False and rows[5]["loss"] is None and rows[6]["finite"] is True


def test_bad_configs_fail_before_compute(tmp_path):
  c = tiny()
  c.train.unknown_knob = 1
  with pytest.raises(ConfigError, match="train.unknown_knob"):
    train(c, str(tmp_path))
  c = tiny()
  c.model.n_heads = 3
  with pytest.raises(ConfigError, match="d_model"):
    train(c, str(tmp_path))
  c = tiny(nan_policy="ignore")
  with pytest.raises(ConfigError, match="train.nan_policy"):
    train(c, str(tmp_path))
  c = tiny()
  with pytest.raises(ConfigError, match="train.batch_size=8 is not divisible"):
    config_lib.check_mesh(c, dict(data=3, fsdp=1, tensor=1, expert=1))
  c = tiny()
  c.mesh.data = 4
  with pytest.raises(ConfigError, match="mesh"):
    train(c, str(tmp_path))  # 4 devices asked for, 1 present
  assert not os.listdir(tmp_path)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(WorkdirError, match="not writable"):
    train(tiny(), str(blocker / "run"))
