"""circuits.study: the named markers on hand-made inputs, and a tiny study end to end (data -> train ->
sweep -> metrics -> report), its resume (a rerun runs nothing), stage invalidation (a retrained family is
re-swept) and the parallel runner (one job as a pinned subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from circuits import study
from circuits.study import analysis as SA
from circuits.study import pipeline


def _tiny():
  from configs.study_laptop import study_config
  c = study_config()
  c.name = "test"
  c.family_order = ("pythia",)
  c.families.pythia.update(dict(steps=12, n_layers=1, warmup_steps=2))
  c.checkpoint.update(dict(log_until=4, every=6, resume_every=6))
  c.sweep.update(dict(probes=("combined",), n=16, ablation_examples=16, n_seeds=2, n_detect=1, chunk=16,
                      n_heldout=16))
  c.train.update(dict(probe_every=6, probe_n=8))
  c.parallel.cores = "0"
  return study.resolve(c)


def test_run_config_is_the_family_plus_the_recipe():
  from configs.families import PUBLISHED
  c = study.resolve(_tiny())
  c.families.pythia.lr = 1e-2
  rc = study.run_config(c, "pythia", "w")
  assert rc.model.parallel_residual is PUBLISHED["pythia"]["parallel_residual"]
  assert rc.model.rotary_pct == PUBLISHED["pythia"]["rotary_pct"] and rc.model.qk_init_std == 0.1
  assert rc.train.lr == 1e-2 and rc.train.steps == 12 and rc.data.cache == str(Path("w") / "cache")
  assert (rc.probe.token_lo, rc.probe.token_hi) == (67, 323)  # the span ids
  with pytest.raises(study.StudyError, match="not a family"):
    study.run_config(c, "olmo")
  bad = _tiny()
  bad.data.vocab_size = 100
  with pytest.raises(study.StudyError, match="vocab_size"):
    study.resolve(bad)


def _fake_family(p, fam="pythia"):
  """Sink (first_mass >= 0.5 in layer 0) at step 20; induction (loss < 2, attention >= 0.5 in layer 1) at 40."""
  run = p.run(fam)
  run.mkdir(parents=True)
  with open(run / "metrics.jsonl", "w") as f:
    for s in range(0, 60, 10):
      fm = [[0.9 if (l == 0 and s >= 20) else 0.1] * 2 for l in range(2)]
      f.write(json.dumps({"step": s, "loss": 3.0, "attn/first_mass": fm}) + "\n")
  with open(p.metrics(fam), "w") as f:
    for s in (0, 20, 40, 50):
      ia = [[0.1, 0.1], [0.8 if s >= 40 else 0.1, 0.1]]
      f.write(json.dumps({"step": s, "tokens": s * 2048.0, "revision": f"step{s}", "span_copy_loss": 1.0 if s >= 40 else 5.0,
                          "span_first_copy_loss": 5.5, "chain_loss": 2.0, "induction_attention": ia,
                          "first_mass": ia, "combined_probe_top1": 0.5}) + "\n")
  rows = []
  for s in (0, 20, 40, 50):
    for l in range(2):
      for h in range(2):
        rows.append(dict(revision=f"step{s}", step=s, tokens=s * 2048.0, layer=l, head=h,
                         sel_induction=60.0 if (s >= 50 and l == 1 and h == 0) else 2.0,
                         sel_first=40.0 if (s >= 20 and l == 0) else 1.0))
  d = p.sweep(fam, "combined")
  d.mkdir(parents=True)
  pd.DataFrame(rows).to_csv(d / "table.csv", index=False)


def test_markers_gaps_and_layers(tmp_path):
  c = _tiny()
  p = pipeline.study_paths(tmp_path)
  _fake_family(p)
  s = SA.family_markers(c, p, "pythia")
  mk = s["markers"]
  assert mk["sink_first_mass_ge_0.5"] == {"step": 20, "tokens": 20 * 2048.0, "layers": [0]}
  assert mk["induction_span_copy_loss_lt_2"]["step"] == 40 and mk["induction_span_copy_loss_lt_2"]["layers"] == [1]
  assert mk["induction_attention_ge_0.5"]["layers"] == [1]
  assert mk["induction_sel_ge_50_combined"] == {"step": 50, "tokens": 50 * 2048.0, "layers": [1]}
  assert mk["sink_sel_first_ge_30_combined"]["layers"] == [0]
  assert mk["sink_bos_fraction_ge_50pct_combined"]["step"] == 20  # 2 of 4 heads
  assert mk["induction_3_heads_sel_ge_50_combined"] is None  # never: stated as not reached
  assert mk["induction_sel_ge_50_synthetic"] is None  # no synthetic table
  g = s["gaps"]["induction_span_copy_loss_lt_2 minus sink_first_mass_ge_0.5"]
  assert g == {"steps": 20, "tokens": 20 * 2048.0, "order": "sink first"}
  assert s["final_sink_layers_sel_first_ge_T_combined"] == [0]


def test_tiny_study_end_to_end_resume_and_invalidation(tmp_path):
  c = _tiny()
  w = tmp_path / "study"
  done = study.run(c, w, parallel=False, progress=False)
  assert list(done) == study.job_names(c)
  p = pipeline.study_paths(w)
  for f in ("report.html", "report.md", "summary.json", "first_mass.png", "induction.png", "span_loss.png",
            "ablations.png"):
    assert (p.report / f).exists(), f
  summ = json.loads((p.report / "summary.json").read_text())
  fam = summ["families"]["pythia"]
  assert set(fam["markers"]) == set(SA.marker_defs(c.markers))
  assert fam["causal"]["random_zero"]["n_seeds"] == 2
  assert "not reached" in (p.report / "report.md").read_text() or all(v for v in fam["markers"].values())
  steps = [json.loads(l)["step"] for l in p.metrics("pythia").read_text().splitlines()]
  assert steps == [0, 1, 2, 4, 6, 12]
  assert study.run(c, w, parallel=False, progress=False) == {}  # resumes: nothing left to do
  # a retrained family (its train marker newer than its sweep's) invalidates what depends on it
  m = p.stages / "train_pythia.json"
  info = json.loads(m.read_text())
  m.write_text(json.dumps(dict(info, finished=info["finished"] + 1e6)))
  assert [j for j in study.job_names(c) if not pipeline.is_done(c, p, j)] == ["sweep:pythia", "metrics:pythia",
                                                                                "report"]
  m.write_text(json.dumps(info))
  # the parallel runner: one job in a pinned, single-threaded subprocess
  done = study.run(c, w, parallel=True, progress=False, force=["report"], poll_s=0.2)
  assert list(done) == ["report"]
  log = (p.logs / "report.log").read_text()
  assert "--job=report" in log and ("taskset -c 0" in log or not __import__("shutil").which("taskset"))
