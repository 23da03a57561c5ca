"""The seeds study (circuits.study.seeds, configs/study_seeds.py): the aggregation over seeds and the median
curves against hand-computed numpy values, the PR lead (F5) on trajectories whose answer is known and against
circuits.discovery.analysis.pr_lead, the config (>= 5 distinct replicates, the laptop recipe otherwise) and a
tiny two-seed study through the real pipeline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from circuits import study
from circuits.study import config as C
from circuits.study import pipeline
from circuits.study import report as R
from circuits.study import seeds as S
from tests.test_study import _tiny

TPS = 2048.0  # tokens per step of the constructed runs


def _per_seed(rng, n_seeds=5):
  """Constructed family_markers outputs: marker `a` reached by every seed, `b` by some, `c` by none; the gap
  a-minus-b from the steps (as analysis._gap)."""
  out = {}
  for i in range(n_seeds):
    sa = int(rng.integers(1, 30)) * 100
    sb = None if i % 2 else int(rng.integers(1, 30)) * 10
    mk = {"a": {"step": sa, "tokens": sa * TPS}, "b": None if sb is None else {"step": sb, "tokens": sb * TPS},
          "c": None}
    gap = ({"steps": None, "tokens": None, "order": "undefined: sink marker never reached"} if sb is None else
           {"steps": sa - sb, "tokens": (sa - sb) * TPS,
            "order": "sink first" if sa > sb else ("induction first" if sa < sb else "same checkpoint")})
    out[f"fam_s{i}"] = {"markers": mk, "gaps": {"a minus b": gap}}
  return out


def test_aggregate_counts_medians_ranges_and_gaps():
  rng = np.random.default_rng(3)
  per = _per_seed(rng)
  a = S.aggregate(per)
  runs = list(per)
  sa = np.array([per[r]["markers"]["a"]["step"] for r in runs], float)
  sb = np.array([per[r]["markers"]["b"]["step"] for r in runs if per[r]["markers"]["b"]], float)
  assert a["n_seeds"] == 5 and a["runs"] == runs
  ma, mb, mc = a["markers"]["a"], a["markers"]["b"], a["markers"]["c"]
  assert (ma["n_reached"], mb["n_reached"], mc["n_reached"]) == (5, 3, 0)
  assert ma["step_stats"] == {"median": np.median(sa), "min": sa.min(), "max": sa.max()}
  assert ma["tokens_stats"]["median"] == pytest.approx(np.median(sa) * TPS, rel=1e-12)
  assert mb["step_stats"] == {"median": np.median(sb), "min": sb.min(), "max": sb.max()}
  assert mb["step"] == [per[r]["markers"]["b"]["step"] if per[r]["markers"]["b"] else None for r in runs]
  assert mc["step_stats"] == {"median": None, "min": None, "max": None}
  g = a["gaps"]["a minus b"]
  d = np.array([sa[i] - per[r]["markers"]["b"]["step"] for i, r in enumerate(runs) if per[r]["markers"]["b"]])
  assert g["n_defined"] == 3 and g["steps"][1] is None and g["steps"][3] is None
  assert g["steps_stats"] == {"median": np.median(d), "min": d.min(), "max": d.max()}
  assert g["n_sink_first"] == int((d > 0).sum()) and g["n_induction_first"] == int((d < 0).sum())
  assert g["n_sink_first"] + g["n_induction_first"] + g["n_same"] == 3


def test_median_curve_over_unshared_steps_and_nans():
  curves = {"s0": ([0, 10, 20, 30], [1.0, 2.0, 3.0, 4.0]),
            "s1": ([0, 10, 20], [3.0, np.nan, 5.0]),
            "s2": ([0, 20, 40], [2.0, 9.0, 7.0])}
  steps, med, n = S.median_curve(curves)
  np.testing.assert_array_equal(steps, [0, 10, 20, 30, 40])
  np.testing.assert_array_equal(n, [3, 1, 3, 1, 1])
  np.testing.assert_allclose(med, [np.median([1, 3, 2]), 2.0, np.median([3, 5, 9]), 4.0, 7.0], rtol=0, atol=0)
  rng = np.random.default_rng(0)
  v = rng.normal(size=(4, 7))
  s, m, k = S.median_curve({i: (np.arange(7) * 5, v[i]) for i in range(4)})
  np.testing.assert_allclose(m, np.median(v, axis=0), rtol=0, atol=1e-15)
  assert (k == 4).all() and (s == np.arange(7) * 5).all()


STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300])


@pytest.mark.parametrize("pr, sel, verdict, rise, cross", [
    # PR_0 = 3 (PR - 1 = 2): rises past 1 + 2 x 2 = 5 at index 5 (step 16); sel crosses 50 at index 8 (step 100)
    ([3, 3.1, 3, 2.9, 4, 5.5, 6, 7, 8, 8, 8], [1, 1, 1, 2, 3, 5, 9, 20, 60, 70, 80], "lead", 5, 8),
    ([3, 3, 3, 3, 3, 3, 3, 3, 6, 6, 6], [1, 1, 1, 1, 1, 1, 1, 1, 55, 60, 60], "same checkpoint", 8, 8),
    ([3, 3, 3, 3, 3, 3, 3, 3, 4, 5.5, 6], [1, 1, 1, 1, 1, 1, 1, 1, 55, 60, 60], "after", 9, 8),
    ([3, 3, 2, 2, 1.5, 1.5, 1.2, 1.2, 1.1, 1.1, 1.1], [1, 1, 1, 1, 1, 1, 1, 1, 55, 60, 60], "no PR rise", None, 8),
    ([3, 3, 3, 3, 6, 7, 8, 9, 9, 9, 9], [1, 1, 1, 1, 2, 5, 9, 20, 40, 45, 49.9], "never crosses", 4, None),
])
def test_pr_lead_head_known_answers(pr, sel, verdict, rise, cross):
  r = S.pr_lead_head(STEPS, pr, sel, k=2.0, threshold=50.0)
  assert r["verdict"] == verdict and r["rise_index"] == rise and r["cross_index"] == cross
  if rise is not None and cross is not None:
    assert r["lead_checkpoints"] == cross - rise and r["lead_steps"] == int(STEPS[cross] - STEPS[rise])
    assert r["pr_before_cross"] == pr[cross - 1] and r["pr_at_cross"] == pr[cross]
  else:
    assert r["lead_steps"] is None and r["lead_checkpoints"] is None
  with pytest.raises(ValueError, match="increase"):
    S.pr_lead_head(STEPS[::-1], pr, sel)


def _table(rng, n_rev=9, n_layers=2, n_heads=3):
  """A sweep table with random PR and selectivities; L1H0 and L0H2 cross 50 (L0H2 falls back before the end)."""
  from circuits.discovery import table as T
  steps = np.array([0, 1, 2, 4, 8, 100, 200, 300, 400])[:n_rev]
  rows = []
  for i, s in enumerate(steps):
    for l in range(n_layers):
      for h in range(n_heads):
        r = {T.REVISION: f"step{s}", T.STEP: int(s), T.TOKENS: float(s) * TPS, T.LAYER: l, T.HEAD: h}
        for c in T.SEL_COLUMNS + T.SEL_UNIFORM_COLUMNS:
          r[c] = float(rng.uniform(0.5, 20))
        r[T.PR] = float(1.5 + rng.uniform(0, 0.4) + (2.0 * i if (l, h) == (1, 0) else 0.3 * i if (l, h) == (0, 1) else 0))
        r[T.PR_CLASSIC] = r[T.PR]
        rows.append(r)
  df = pd.DataFrame(rows)
  ind = (df[T.LAYER] == 1) & (df[T.HEAD] == 0) & (df[T.STEP] >= 200)
  df.loc[ind, "sel_induction"] = rng.uniform(60, 90, ind.sum())
  fall = (df[T.LAYER] == 0) & (df[T.HEAD] == 2) & df[T.STEP].isin([100, 200])
  df.loc[fall, "sel_induction"] = 55.0
  return df


def test_pr_lead_rows_agree_with_the_discovery_analysis():
  from circuits.discovery import analysis as A
  df = _table(np.random.default_rng(11))
  mine = S.pr_lead_table(df, k=2.0, threshold=50.0)
  assert [tuple(x) for x in mine[["layer", "head"]].to_numpy()] == [(0, 2), (1, 0)]
  assert mine.set_index(["layer", "head"]).loc[(0, 2), "in_final_circuit"] == False  # noqa: E712
  ref = A.pr_lead(df, k=2.0, induction_threshold=50.0)  # the final circuit's heads only: L1H0
  assert len(ref) == 1
  fin = mine[mine["in_final_circuit"]].reset_index(drop=True)
  assert (fin["layer"].tolist(), fin["head"].tolist()) == (ref["layer"].tolist(), ref["head"].tolist())
  np.testing.assert_array_equal(fin["cross_index"].to_numpy(float), ref["sel_cross_index"].to_numpy(float))
  np.testing.assert_array_equal(fin["rise_index"].to_numpy(float), ref["pr_rise_index"].to_numpy(float))
  np.testing.assert_array_equal(fin["lead_checkpoints"].to_numpy(float), ref["lead_revisions"].to_numpy(float))
  run = S.pr_lead_run(df)
  assert run["n_heads"] == 2 and sum(run["counts"].values()) == 2
  none = S.pr_lead_run(df.assign(sel_induction=1.0))
  assert none["n_heads"] == 0 and none["all_at_or_before"] is None and none["measured"]
  fam = S.pr_lead_family({"x_s0": run, "x_s1": none, "x_s2": S.pr_lead_run(None)})
  assert (fam["n_seeds"], fam["n_measured"], fam["n_seeds_with_induction_heads"], fam["heads"]) == (3, 2, 1, 2)
  assert "1 seed(s) with an induction head" in S.pr_lead_sentence("x", fam)


def test_verdicts_sink_first_and_induction_in_all_seeds():
  def fam(orders, reached):
    per = {}
    for i, (o, r) in enumerate(zip(orders, reached)):
      st = {"sink first": 100, "induction first": -100, None: None}[o]
      per[f"f_s{i}"] = {"markers": {"ind": {"step": 500, "tokens": 1.0} if r else None, "sink": {"step": 10, "tokens": 1.0}},
                        "gaps": {"g": {"steps": st, "tokens": None if st is None else float(st),
                                       "order": o or "undefined: induction marker never reached"}}}
    return S.aggregate(per)
  agg = {"pythia": fam(["sink first"] * 5, [True] * 5), "olmo": fam(["sink first"] * 4 + [None], [True] * 4 + [False])}
  v = S.verdicts(agg, "g", ["ind"])
  assert v["sink_first_every_seed"] == {"pythia": True, "olmo": False} and v["sink_first_everywhere"] is False
  assert v["induction_all_seeds"] == {"ind": ["pythia"]}
  assert any("NO" in x for x in v["sentences"]) and any("olmo (4 of 5)" in x for x in v["sentences"])
  agg["olmo"] = fam(["sink first"] * 5, [True] * 5)
  v = S.verdicts(agg, "g", ["ind"], incomplete=["olmo_s4"])
  assert v["sink_first_everywhere"] is True and v["induction_all_seeds"]["ind"] == ["pythia", "olmo"]
  assert v["sentences"][0].startswith("INCOMPLETE") and v["sentences"][1].endswith("YES.")


def test_seeds_config_replicates_the_laptop_recipe():
  from configs.study_laptop import study_config
  c = study.load("configs/study_seeds.py")
  lap = study.resolve(study_config())
  grp = S.groups(c)
  assert list(grp) == ["pythia", "olmo", "olmoe"]
  pairs = S.seed_pairs(c)
  for f, runs in grp.items():
    assert len(set(pairs[f])) == len(runs) >= 5
    assert len({m for m, _ in pairs[f]}) >= 5 and len({d for _, d in pairs[f]}) >= 5  # both varied
    for r in runs:
      rc, ref = study.run_config(c, r, "w").to_dict(), study.run_config(lap, f, "w").to_dict()
      assert rc.pop("seed") == c.families[r].seed and rc["data"].pop("cache") == f"w/cache_data{c.families[r].data_seed}"
      ref.pop("seed"), ref["data"].pop("cache")
      assert rc["checkpoint"].pop("every") == 100 and ref["checkpoint"].pop("every") == 200
      assert rc == ref, r  # nothing else of the recipe differs
  assert len(C.caches(c)) == 5 and C.caches(lap) == {"cache": 0}
  from circuits.train import config as TC
  from configs import study_seeds
  for f in grp:  # `launch.train --config configs/study_seeds.py:<run>` gets a valid trainer config
    full, model = TC.validate(study_seeds.get_config(f"{f}_s4"))
    assert model.family == f and full.seed == 4 and full.data.cache.endswith("cache_data4")
  assert {r["choice"] for r in R.pilot_choice_rows(c)} >= {
      "span lengths (m of the repeated span)", "model seed", "data seed (training rows)", "query/key init std"}
  edited = study.load("configs/study_seeds.py")
  edited.pilot_choices["model seed"].note = "edited"
  assert C.fingerprint(edited) == C.fingerprint(c)  # notes are documentation: editing one reruns nothing
  edited.families.olmo_s2.data_seed = 7
  assert C.fingerprint(edited) != C.fingerprint(c)
  bad = study.load("configs/study_seeds.py")
  bad.seeds.data_seeds = (0, 1, 2, 3)
  with pytest.raises(study.StudyError, match="one length"):
    study.resolve(bad)
  bad.seeds.data_seeds = (0, 0, 2, 3, 0)
  bad.seeds.model_seeds = (0, 0, 2, 3, 1)
  with pytest.raises(study.StudyError, match="repeat"):
    study.resolve(bad)
  bad = study.load("configs/study_seeds.py").to_dict()
  bad["families"]["olmo_s1"]["data_seed"] = "1"  # e.g. a hand-edited study_config.json
  with pytest.raises(study.StudyError, match="data_seed"):
    study.resolve(bad)


def test_tiny_two_seed_study_end_to_end(tmp_path):
  import ml_collections

  from circuits.data import reader
  c = _tiny()
  recipe = c.families.pythia.to_dict()
  c.families = ml_collections.ConfigDict({f"pythia_s{i}": dict(recipe, family="pythia", seed=i, data_seed=10 + i)
                                          for i in range(2)})
  c.family_order = ("pythia_s0", "pythia_s1")
  c.seeds = ml_collections.ConfigDict(dict(families=("pythia",), model_seeds=(0, 1), data_seeds=(10, 11)))
  c.pilot_choices = ml_collections.ConfigDict({"span lengths": dict(fields=("data.synthetic.span_min",
                                                                        "data.synthetic.span_max"), note="n")})
  c = study.resolve(c)
  w = tmp_path / "seeds"
  done = study.run(c, w, parallel=False, progress=False)
  assert list(done) == study.job_names(c)
  p = pipeline.study_paths(w)
  rows = [reader.TokenCache(str(p.cache_at(f"cache_data{s}"))).rows(0, 8)["tokens_BxT1"] for s in (10, 11)]
  assert reader.read_meta(str(p.cache_at("cache_data11")))["seed"] == 11 and (rows[0] != rows[1]).mean() > 0.5
  loss = [json.loads(p.metrics(r).read_text().splitlines()[0])["span_copy_loss"] for r in c.family_order]
  assert loss[0] != loss[1]  # another initialisation
  summ = json.loads((p.report / "summary.json").read_text())
  ss = summ["seeds"]
  assert ss["seeds"] == {"pythia": {"pythia_s0": "model 0 / data 10", "pythia_s1": "model 1 / data 11"}}
  a = ss["families"]["pythia"]
  for n, m in a["markers"].items():
    per = [summ["families"][r]["markers"][n] for r in c.family_order]
    assert m["n_reached"] == sum(x is not None for x in per) and m["n_seeds"] == 2
  assert set(ss["pr_lead"]["pythia"]["per_seed"]) == set(c.family_order)
  assert ss["pr_lead"]["pythia"]["family"]["n_measured"] == 2 and ss["verdicts"]["sentences"]
  md = (p.report / "report.md").read_text()
  assert (p.report / "seeds.png").exists() and "![seeds.png](seeds.png)" in md
  for title in ("Seeds: what the spread says", "Seeds: markers", "PR lead (F5) on our runs",
                "Choices that moved a result in the pilots", "| span lengths | data.synthetic.span_min"):
    assert title in md, title
