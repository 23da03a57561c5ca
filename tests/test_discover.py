"""End-to-end discovery sweep over a fake run: 3 revisions of a tiny random model saved as converted
checkpoints (circuits.convert.save_converted), listed in a JSON-lines file. Checks the table, the
ablations, summary.json and report.html, and that a sweep interrupted mid-revision resumes to
byte-identical tables. N = 32, T = 32.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from circuits.data.probes import natural_induction_batch, synthetic_induction_batch
from circuits.discovery import ablate, measure, revisions, sweep
from circuits.discovery import table as T

ROOT = Path(__file__).resolve().parents[1]

N, T_LEN, VOCAB = 32, 32, 96
CFG = sweep.SweepConfig(measure=measure.MeasureConfig(chunk=32, n_detect=2), n_seeds=20)


def _fake_run(tmp: Path) -> Path:
  from flax import nnx

  from circuits.convert import save_converted
  from circuits.models import ModelConfig, build_model

  cfg = ModelConfig(family="pythia", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                    rotary_pct=0.25, parallel_residual=True, qkv_bias=True)
  lines = []
  for i, step in enumerate((1, 16, 256)):
    params = nnx.to_pure_dict(nnx.state(build_model(cfg, i), nnx.Param))
    save_converted(tmp / f"ck{step}", cfg, _np(params))
    lines.append(json.dumps({"name": f"step{step}", "path": f"ck{step}"}))  # tokens from the Pythia name
  (tmp / "revs.jsonl").write_text("\n".join(lines) + "\n")
  return tmp / "revs.jsonl"


def _np(tree):
  return {k: _np(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree)


def _probes():
  probe = synthetic_induction_batch(n=N, seq_len=T_LEN, lo=3, hi=VOCAB)
  rng = np.random.RandomState(3)
  natural = natural_induction_batch([rng.randint(3, 30, size=T_LEN) for _ in range(100)], seq_len=T_LEN, n=8,
                                    min_id=3)
  return probe, natural


def _bytes(out: Path) -> dict:
  files = sorted(p for sub in ("revisions", "ablations") for p in (out / sub).glob("*.csv"))
  files += [out / "table.csv", out / "ablations.csv"]
  return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_sweep_resumes_to_byte_identical_tables(tmp_path, monkeypatch):
  lst = _fake_run(tmp_path)
  revs = revisions.from_list(lst)
  assert [r.name for r in revs] == ["step1", "step16", "step256"]
  assert revs[1].tokens == 16 * 2_097_152 and revs[1].step == 16
  probe, natural = _probes()

  clean = sweep.sweep(revs, tmp_path / "clean", probe=probe, natural=natural, cfg=CFG, progress=False)
  tab = clean["table"]
  assert len(tab) == 3 * 8 and list(T.revisions_in_order(tab)) == ["step1", "step16", "step256"]
  for c in T.REQUIRED_COLUMNS + ("pr_2000", "null_sel_p99", "tl_induction", "gu_alpha", "icl_score"):
    assert c in tab.columns and tab[c].notna().all(), c
  abl = clean["ablations"]
  per = abl[(abl.revision == "step16") & (abl.probe == "synthetic")]
  assert (per.condition == "random_zero").sum() == 20 and (per.condition == "random_mean").sum() == 20
  assert set(abl.probe) == {"synthetic", "natural"}
  assert {"clean", "circuit_zero", "circuit_mean", "layers_zero", "layers_mean"} <= set(abl.condition)
  assert ((abl.top1 >= 0) & (abl.top1 <= abl.top5) & (abl.top5 <= 1)).all()
  summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
  assert summary["models"]["table"]["n_revisions"] == 3 and "ablations" in summary
  assert (tmp_path / "clean" / "report.html").stat().st_size > 1000

  # interrupted in the middle of the second revision (after its measurement, before any file of it)
  out = tmp_path / "killed"
  real, calls = ablate.ablate_revision, {"n": 0}

  def dying(*a, **k):
    calls["n"] += 1
    if calls["n"] == 2:
      raise KeyboardInterrupt("simulated kill")
    return real(*a, **k)

  monkeypatch.setattr(sweep.ablate_lib, "ablate_revision", dying)
  with pytest.raises(KeyboardInterrupt):
    sweep.sweep(revs, out, probe=probe, natural=natural, cfg=CFG, progress=False)
  assert T.completed_revisions(out) == ["step1"]
  (out / "revisions" / "step16.csv.tmp-stray").write_text("partial")  # a killed write's leftover
  monkeypatch.setattr(sweep.ablate_lib, "ablate_revision", real)
  quick = dataclasses.replace(CFG, analyze=False)  # the report was checked above
  res = sweep.sweep(revs, out, probe=probe, natural=natural, cfg=quick, progress=False)
  assert res["done"] == ["step16", "step256"]
  assert _bytes(out) == _bytes(tmp_path / "clean")
  again = sweep.sweep(revs, out, probe=probe, natural=natural, cfg=quick, progress=False)
  assert again["done"] == [] and _bytes(out) == _bytes(tmp_path / "clean")


def test_revision_lists_and_circuit_selection(tmp_path):
  (tmp_path / "r.csv").write_text("name,path,tokens\nstep2,a,\nmine,b,1.5e9\nstep10-tokens23B,c,\n")
  revs = revisions.from_list(tmp_path / "r.csv", loader=lambda p: p)
  assert [(r.name, r.step, r.tokens) for r in revs] == [("step2", 2, 2 * 2_097_152.0), ("mine", 1, 1.5e9),
                                                        ("step10-tokens23B", 10, 23e9)]
  assert revs[1].load() == tmp_path / "b"
  (tmp_path / "bad.csv").write_text("name,path,tokens\nfoo,a,\n")
  with pytest.raises(revisions.RevisionError, match="tokens"):
    revisions.from_list(tmp_path / "bad.csv")
  sel = np.array([[1.0, 80.0, 2.0, 3.0], [60.0, 1.0, 1.0, 1.0]])
  assert ablate.select_circuit(sel) == ([(0, 1), (1, 0)], "sel_induction>=50")
  heads, src = ablate.select_circuit(sel / 100)
  assert heads == [(0, 1), (0, 3), (1, 0)] and src.startswith("fallback_top3")
  rnd = ablate.matched_random([(0, 1), (1, 0)], 4, seed=0)
  assert [l for l, _ in rnd] == [0, 1] and (0, 1) not in rnd and (1, 0) not in rnd


# ----- mixed and shuffled revision lists; failures mid-sweep -----

MIXED_CFG = dataclasses.replace(CFG, analyze=False, n_seeds=2)


def _mixed_list(tmp: Path) -> Path:
  """One list, two models: Pythia (vocab 96; step1, step143000) and OLMoE (vocab 80, 4 experts, top-2;
  step10-tokens1B, step20-tokens2B). The Pythia final has the most tokens of the list, so a reference chosen
  for the list as a whole (not per model) would be a dense model."""
  from flax import nnx

  from circuits.convert import save_converted
  from circuits.models import ModelConfig, build_model

  pythia = ModelConfig(family="pythia", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                       rotary_pct=0.25, parallel_residual=True, qkv_bias=True)
  olmoe = ModelConfig(family="olmoe", vocab_size=80, d_model=32, n_layers=2, n_heads=4, d_ff=32, n_experts=4,
                      top_k=2)
  lines = []
  for i, (cfg, name) in enumerate([(pythia, "step1"), (olmoe, "step10-tokens1B"), (pythia, "step143000"),
                                   (olmoe, "step20-tokens2B")]):
    save_converted(tmp / name, cfg, _np(nnx.to_pure_dict(nnx.state(build_model(cfg, i), nnx.Param))))
    lines.append(json.dumps({"name": name, "path": name}))
  (tmp / "mixed.jsonl").write_text("\n".join(lines) + "\n")
  return tmp / "mixed.jsonl"


def _no_temp_files(out: Path) -> bool:
  return not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_mixed_and_shuffled_lists_give_the_same_table(tmp_path, monkeypatch):
  from circuits.discovery import spread
  revs = revisions.from_list(_mixed_list(tmp_path))
  groups = spread.model_groups(revs)
  assert groups == {"step1": "pythia-L2-H4-D32-V96", "step143000": "pythia-L2-H4-D32-V96",
                    "step10-tokens1B": "olmoe-L2-H4-D32-V80-E4", "step20-tokens2B": "olmoe-L2-H4-D32-V80-E4"}
  assert [r.name for r in spread.canonical(revs[::-1], groups)] == ["step10-tokens1B", "step20-tokens2B",
                                                                    "step1", "step143000"]
  assert spread.model_groups(revs[:1]) == {"step1": None}
  assert set(spread.model_groups([revs[0], revs[2]]).values()) == {None}  # one model: no model column

  kw = dict(cfg=MIXED_CFG, n=N, seq_len=T_LEN, progress=False)
  vocabs, real = [], sweep.default_probe
  monkeypatch.setattr(sweep, "default_probe", lambda v, *a: vocabs.append(v) or real(v, *a))
  a = sweep.sweep(revs, tmp_path / "listed", **kw)
  b = sweep.sweep([revs[i] for i in (3, 0, 2, 1)], tmp_path / "shuffled", **kw)
  assert _bytes(tmp_path / "listed") == _bytes(tmp_path / "shuffled")
  tab = a["table"]
  assert a["models"] == ["olmoe-L2-H4-D32-V80-E4", "pythia-L2-H4-D32-V96"] == b["models"]
  assert list(tab.columns[:2]) == ["model", "revision"] and len(tab) == 4 * 8
  assert tab.groupby("model").revision.unique().map(list).to_dict() == {
      "olmoe-L2-H4-D32-V80-E4": ["step10-tokens1B", "step20-tokens2B"],
      "pythia-L2-H4-D32-V96": ["step1", "step143000"]}
  # the MoE reference is OLMoE's own final revision: overlap 1 there, a fraction before; NaN for Pythia
  ov = tab.groupby("revision").moe_topk_overlap_final.first()
  assert ov["step20-tokens2B"] == 1.0 and 0.0 < ov["step10-tokens1B"] < 1.0
  assert np.isnan(ov["step1"]) and np.isnan(ov["step143000"])
  assert set(a["ablations"].model) == set(a["models"])
  assert sorted(vocabs) == [80, 80, VOCAB, VOCAB]  # the default probe: built per vocabulary (once per sweep)
  # a given probe must fit every model's vocabulary
  big = synthetic_induction_batch(n=N, seq_len=T_LEN, lo=85, hi=VOCAB)
  with pytest.raises(sweep.SweepError, match=r"step10-tokens1B.*token id 9\d, outside .* vocabulary of 80"):
    sweep.sweep([revs[1]], tmp_path / "badprobe", probe=big, **kw)


class _FullDiskOs:
  """The `os` module, except that writing the temp file of `<out>/revisions/<victim>.csv` fills the disk
  after half its bytes (ENOSPC), as a real full disk would."""

  def __init__(self, victim: str):
    import os
    self._os, self._victim = os, f"{os.sep}revisions{os.sep}{victim}.csv.tmp-"

  def __getattr__(self, name):
    return getattr(self._os, name)

  def fdopen(self, fd, mode="r", *a, **k):
    f = self._os.fdopen(fd, mode, *a, **k)
    if self._victim not in self._os.readlink(f"/proc/self/fd/{fd}"):
      return f
    import errno

    class Full:
      def __enter__(self):
        return self

      def __exit__(self, *exc):
        f.close()

      def write(self, data):
        f.write(data[:len(data) // 2])
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    return Full()


def test_failed_revision_and_full_disk_leave_files_consistent(tmp_path, monkeypatch):
  revs = revisions.from_list(_fake_run(tmp_path))
  probe, natural = _probes()
  kw = dict(probe=probe, cfg=MIXED_CFG, progress=False)
  out = tmp_path / "out"
  sweep.sweep(revs[:1], out, **kw)
  before = {p: (out / p).read_bytes() for p in ("table.csv", "ablations.csv")}

  def unreadable():
    raise revisions.RevisionError("ck16: simulated unreadable checkpoint")

  bad = [revs[0], dataclasses.replace(revs[1], loader=unreadable), revs[2]]
  with pytest.raises(sweep.SweepError, match=r"1 revision\(s\) failed: revision step16 \(.*ck16\): RevisionError: "
                     r"ck16: simulated unreadable checkpoint; 1 revision\(s\) finished .*rerun the same command"):
    sweep.sweep(bad, out, **kw)  # the others go on; the combined files stay as they were
  assert T.completed_revisions(out) == ["step1", "step256"] and _no_temp_files(out)
  assert {p: (out / p).read_bytes() for p in before} == before

  from circuits import files
  monkeypatch.setattr(files, "os", _FullDiskOs("step16"))  # the project's one atomic writer
  with pytest.raises(sweep.SweepError, match=r"revision step16 .*No space left on device.*the disk is full: "
                     r"free space under .*no partial file was left"):
    sweep.sweep(revs, out, **kw)
  monkeypatch.undo()
  assert T.completed_revisions(out) == ["step1", "step256"] and _no_temp_files(out)
  assert not (out / "ablations" / "step16.csv").exists()  # written before the table file, removed with it
  assert {p: (out / p).read_bytes() for p in before} == before
  res = sweep.sweep(revs, out, **kw)  # a rerun resumes
  assert res["done"] == ["step16"] and list(T.revisions_in_order(res["table"])) == ["step1", "step16", "step256"]


_TEMP_CODE = """
import sys
if sys.argv[1] == "cli":
  import launch.discover  # pylint: disable=unused-import  # sets XLA_FLAGS as the command line does
import jax, jax.numpy as jnp
from flax import nnx
from circuits.convert import random_hf
from circuits.convert.hf import config_from_hf
from circuits.discovery import measure
from circuits.models import build_model
temps = []
for layers in (2, 4):
  hf = dict(random_hf.PUBLISHED["allenai/OLMoE-1B-7B-0924"], hidden_size=256, num_hidden_layers=layers,
            intermediate_size=256, vocab_size=128, num_experts=16, num_experts_per_tok=2)
  cfg = config_from_hf(hf, param_dtype="bfloat16", moe_impl="dense")
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=0)))
  tokens = jax.ShapeDtypeStruct((2, 64), jnp.int32)
  ma = measure._detect_chunk.lower(graphdef, state, tokens, False, False, 0).compile().memory_analysis()
  temps.append(ma.temp_size_in_bytes)
print(temps[0], temps[1])
"""


@pytest.mark.parametrize("mode", ["cli", "default"])
def test_cli_scheduler_frees_fp32_weight_copies_layer_by_layer(mode):
  """bfloat16 weights with fp32 compute (`--dtype bfloat16`): XLA:CPU's default scheduler keeps the fp32 copies
  of every layer's expert weights live at once (the XLA temp grows by about one layer's fp32 experts per layer;
  OLMoE-1B-7B ran out of memory allocating 25 GiB), the scheduler launch.discover selects does not (the temp of
  4 layers is within a quarter layer of that of 2)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  if mode == "default":
    env["XLA_FLAGS"] = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"
  else:
    env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, "-c", _TEMP_CODE, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600, check=True)
  t2, t4 = map(int, r.stdout.split()[-2:])
  layer_fp32 = 3 * 16 * 256 * 256 * 4  # gate, up, down of 16 experts, d_model 256, width 256, fp32
  if mode == "cli":
    assert t4 - t2 < layer_fp32 / 4, (t2, t4)
  else:
    assert t4 - t2 > 1.5 * layer_fp32, (t2, t4)
