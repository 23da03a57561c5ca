"""End-to-end discovery sweep over a fake run: 3 revisions of a tiny random model saved as converted
checkpoints (circuits.convert.save_converted), listed in a JSON-lines file. Checks the table, the
ablations, summary.json and report.html, and that a sweep interrupted mid-revision resumes to
byte-identical tables. N = 32, T = 32.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from circuits.data.probes import natural_induction_batch, synthetic_induction_batch
from circuits.discovery import ablate, measure, revisions, sweep
from circuits.discovery import table as T

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
