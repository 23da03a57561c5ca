"""Table-level analyses on a synthetic table with planted values; atomic write/resume; launch.analyze."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from circuits.discovery import analysis as A
from circuits.discovery import table as T

REPO = Path(__file__).resolve().parents[1]
LN10 = math.log(10.0)
REVS = ["r0", "r1", "r2", "r3"]
TOKENS = [1e8, 1e9, 1e10, 1e11]


def make_table() -> pd.DataFrame:
  """4 revisions x 4 layers x 2 heads. All selectivities 1 and PR 2 except:
  - induction (sel_induction 60): (1,0) from r1; (2,0) from r2; (0,1) at r2 only; (3,1) at r3
    -> counts 0, 1, 3, 3; final circuit {(1,0), (2,0), (3,1)}; recall 0, 1/3, 2/3, 1.
  - first-token: (3,0) becomes first-token at r3 (sel_first 40, best class first);
    (2,1) sel_first 35 but sel_previous 200 (best class previous) at r2, r3;
    (3,1) sel_first 45 at r3 (best class induction); (1,1) sel_first 50 at r3 (layer 1: breaks the floor).
    -> BOS (b) 0, 0, 1/8, 4/8; BOS (a) 0, 0, 0, 2/8.
  - PR: (1,0) and (2,0) PR 4 from r1 (rise at index 1); (3,1) PR stays 2 (never rises).
  """
  rows = []
  for i, (rev, tok) in enumerate(zip(REVS, TOKENS)):
    for layer in range(4):
      for head in range(2):
        r = {T.REVISION: rev, T.STEP: 10 ** (i + 1), T.TOKENS: tok, T.LAYER: layer, T.HEAD: head}
        r.update({c: 1.0 for c in T.SEL_COLUMNS})
        r.update({c: np.nan for c in T.SEL_UNIFORM_COLUMNS})
        r[T.PR], r[T.PR_CLASSIC] = 2.0, np.nan
        lh = (layer, head)
        if (lh == (1, 0) and i >= 1) or (lh == (2, 0) and i >= 2) or (lh == (0, 1) and i == 2) \
            or (lh == (3, 1) and i == 3):
          r["sel_induction"] = 60.0
        if lh == (3, 0) and i == 3:
          r["sel_first"] = 40.0
        if lh == (2, 1) and i >= 2:
          r["sel_first"], r["sel_previous"] = 35.0, 200.0
        if lh == (3, 1) and i == 3:
          r["sel_first"] = 45.0
        if lh == (1, 1) and i == 3:
          r["sel_first"] = 50.0
        if lh in ((1, 0), (2, 0)) and i >= 1:
          r[T.PR] = 4.0
        rows.append(r)
  return pd.DataFrame(rows)


@pytest.fixture
def df():
  return T.validate(make_table())


def test_validate_names_missing_columns():
  bad = make_table().drop(columns=["sel_first", "pr"])
  with pytest.raises(T.TableError, match=r"\['sel_first', 'pr'\]"):
    T.validate(bad)
  dup = pd.concat([make_table(), make_table().iloc[:1]])
  with pytest.raises(T.TableError, match="duplicate"):
    T.validate(dup)


def test_classify(df):
  c = A.classify(df).set_index([T.REVISION, T.LAYER, T.HEAD])
  assert c.loc[("r3", 3, 0), "best_class"] == "first" and c.loc[("r3", 3, 0), "classified"]
  assert c.loc[("r3", 2, 1), "best_class"] == "previous" and c.loc[("r3", 2, 1), "sel_best"] == 200.0
  assert c.loc[("r3", 3, 1), "best_class"] == "induction"
  assert not c.loc[("r0", 0, 0), "classified"]  # all 1.0: tie -> first class, unclassified


def test_trajectory_bos_both_definitions(df):
  tr = A.trajectory(df)
  assert tr[T.REVISION].tolist() == REVS
  assert tr["bos_fraction_sel_first_ge_30"].tolist() == [0, 0, 1 / 8, 4 / 8]
  assert tr["bos_fraction_best_class_first_and_sel_best_ge_30"].tolist() == [0, 0, 0, 2 / 8]
  assert tr["n_induction_heads_sel_induction_ge_50"].tolist() == [0, 1, 3, 3]
  assert tr["n_previous_token_heads_best_class_previous_and_sel_ge_100"].tolist() == [0, 0, 1, 1]
  # thresholds are parameters and appear in the keys
  tr40 = A.trajectory(df, sel_threshold=41)
  assert tr40["bos_fraction_sel_first_ge_41"].tolist() == [0, 0, 0, 2 / 8]


def test_floor_check(df):
  pl = A.per_layer_counts(df)
  r3 = pl[pl[T.REVISION] == "r3"].set_index(T.LAYER)["n_heads_sel_first_ge_30"].to_dict()
  assert r3 == {0: 0, 1: 1, 2: 1, 3: 2}
  f = A.floor_check(df)
  assert f["max_over_revisions_n_heads_sel_first_ge_30_in_layers_0_1"] == 1
  assert f["revisions_with_head_sel_first_ge_30_in_layers_0_1"] == ["r3"]
  assert not f["floor_holds_no_head_sel_first_ge_30_in_layers_0_1"]
  ok = df.copy()
  ok.loc[(ok[T.LAYER] == 1) & (ok[T.HEAD] == 1), "sel_first"] = 1.0
  f = A.floor_check(ok)
  assert f["floor_holds_no_head_sel_first_ge_30_in_layers_0_1"]
  assert f["floor_holds_no_head_best_class_first_and_sel_best_ge_30_in_layers_0_1"]


def test_milestones(df):
  m = A.milestones(df)
  at = lambda i: {"revision": REVS[i], "step": 10 ** (i + 1), "tokens": TOKENS[i]}
  assert m["first_revision_n_induction_heads_sel_induction_ge_50_at_least_3"] == at(2)
  assert m["first_revision_n_induction_heads_sel_induction_ge_50_at_least_5"] is None
  b = "first_revision_bos_fraction_sel_first_ge_30_at_least_"
  assert [m[b + p] for p in ("10pct", "30pct", "50pct", "70pct")] == [at(2), at(3), at(3), None]
  a = "first_revision_bos_fraction_best_class_first_and_sel_best_ge_30_at_least_"
  assert [m[a + p] for p in ("10pct", "30pct")] == [at(3), None]
  name = "bos_fraction_sel_first_ge_30_at_least_50pct_over_n_induction_heads_sel_induction_ge_50_at_least_3"
  assert m["tokens_ratio_" + name] == pytest.approx(10.0)
  assert m["revisions_between_" + name] == 1


def test_recall_curve(df):
  c = A.recall_curve(df)
  assert c["recall_of_final_induction_circuit"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
  assert c["n_final_circuit"].iloc[0] == 3
  assert c["tokens_fraction_of_final"].tolist() == pytest.approx([1e-3, 1e-2, 1e-1, 1])
  r = A.recall_milestone(c, 2 / 3)
  assert r["revision"] == "r2" and r["tokens_fraction_of_final"] == pytest.approx(0.1)
  assert A.induction_circuit(df)["r3"] == frozenset({(1, 0), (2, 0), (3, 1)})


def test_pr_lead(df):
  lead = A.pr_lead(df, k=2.0).set_index([T.LAYER, T.HEAD])
  assert lead.loc[(1, 0), "pr_rise_index"] == 1 and lead.loc[(1, 0), "sel_cross_index"] == 1
  assert lead.loc[(1, 0), "lead_revisions"] == 0
  assert lead.loc[(2, 0), "lead_revisions"] == 1
  assert np.isnan(lead.loc[(3, 1), "lead_revisions"]) and lead.loc[(3, 1), "sel_cross_revision"] == "r3"
  s = A.summarize(df)["models"]["table"]
  assert s["pr_lead_k_2_fraction_lead_ge_0_of_final_heads"] == pytest.approx(2 / 3)
  assert s["pr_lead_k_2_fraction_lead_ge_0_of_heads_with_pr_rise"] == 1.0
  assert s["pr_lead_k_2_median_lead_revisions"] == 0.5
  # k = 4: PR - 1 = 3 is not > 4, so no head rises
  assert A.pr_lead(df, k=4.0)["lead_revisions"].isna().all()


def test_pr_integral(df):
  x = A.pr_integral(df).set_index([T.LAYER, T.HEAD])["pr_integral"]
  assert x[(1, 0)] == pytest.approx(8 * LN10)  # y = 1, 3, 3, 3 on x = ln 0.1, 0, ln 10, ln 100
  assert x[(0, 0)] == pytest.approx(3 * LN10)
  c = A.pr_integral(df, clamp_below_1b=True).set_index([T.LAYER, T.HEAD])["pr_integral"]
  assert c[(1, 0)] == pytest.approx(6 * LN10) and c[(0, 0)] == pytest.approx(2 * LN10)


def test_pr_integral_skips_zero_tokens(df):
  """A revision at 0 tokens (step 0 of a run) has no log-token position: left out, no -inf, no warning."""
  d = df.copy()
  d.loc[d[T.REVISION] == "r0", T.TOKENS] = 0.0
  with np.errstate(all="raise"):
    x = A.pr_integral(d).set_index([T.LAYER, T.HEAD])["pr_integral"]
  assert x[(1, 0)] == pytest.approx(6 * LN10)  # y = 3, 3, 3 on x = 0, ln 10, ln 100
  assert x[(0, 0)] == pytest.approx(2 * LN10)


def test_null_floor(df):
  assert A.null_floor(df) is None
  s = A.summarize(df)["models"]["table"]
  assert s["null_floor_available"] is False and s["null_floor"].startswith("unavailable")
  d = df.copy()
  p99 = dict(zip(REVS, [1.5, 1.6, 1.7, 2.0]))
  d["null_sel_p95"] = d[T.REVISION].map(p99) - 0.2
  d["null_sel_p99"] = d[T.REVISION].map(p99)
  d["null_sel_max"] = d[T.REVISION].map(p99) + 1
  nf = A.null_floor(d)
  assert nf["null_sel_p99_median_over_heads"].tolist() == [1.5, 1.6, 1.7, 2.0]
  assert nf["n_heads_sel_best_above_null_sel_p99"].tolist() == [0, 1, 4, 6]
  s = A.summarize(d)["models"]["table"]
  assert s["null_sel_p99_median_over_heads_max_over_revisions"] == 2.0


def make_ablations() -> pd.DataFrame:
  rows = []
  for rev, tok in (("r2", 1e10), ("r3", 1e11)):
    base = dict(revision=rev, step=0, tokens=tok, probe="synthetic", loss=1.0, target_logit=5.0, top5=0.9)
    rows.append(dict(base, condition="none", seed=np.nan, top1=0.8))
    rows.append(dict(base, condition="circuit_zero", seed=np.nan, top1=0.1))
    rows.append(dict(base, condition="layers_all_zero", seed=np.nan, top1=0.0))
    for s in range(20):
      rows.append(dict(base, condition="random_zero", seed=s, top1=0.7 + 0.01 * (s % 5)))
  return pd.DataFrame(rows)


def test_ablation_interval():
  ab = A.summarize_ablations(make_ablations())
  r = ab[(ab[T.REVISION] == "r3") & (ab["condition"] == "random_zero")].iloc[0]
  v = 0.7 + 0.01 * (np.arange(20) % 5)
  half = 2.093024 * v.std(ddof=1) / math.sqrt(20)  # t_{0.975, 19}
  assert r["n_seeds"] == 20 and r["top1_mean"] == pytest.approx(v.mean())
  assert r["top1_mean_ci95_low"] == pytest.approx(v.mean() - half, rel=1e-6)
  assert r["top1_mean_ci95_high"] == pytest.approx(v.mean() + half, rel=1e-6)
  one = ab[(ab[T.REVISION] == "r3") & (ab["condition"] == "none")].iloc[0]
  assert one["top1_mean_ci95_low"] == one["top1_mean"] == 0.8


def test_multi_model_summary_is_json(df):
  d2 = pd.concat([df.assign(model="a"), df.assign(model="b")], ignore_index=True)
  s = A.summarize(d2)
  assert sorted(s["models"]) == ["a", "b"]
  json.dumps(s, allow_nan=False)
  with pytest.raises(T.TableError, match="one model"):
    A.trajectory(d2)


def test_atomic_write_and_resume(tmp_path, df):
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  for rev in REVS:
    T.write_revision(df[df[T.REVISION] == rev], full)
  for rev in REVS[:2]:  # rows shuffled: the bytes must not depend on row order
    T.write_revision(df[df[T.REVISION] == rev].sample(frac=1, random_state=0), resumed)
  stray = resumed / T.REVISIONS_DIR / "r2.csv.tmp-killed"
  stray.write_text("revision,step\nr2,")  # a killed write
  assert T.completed_revisions(resumed) == ["r0", "r1"]
  pd.testing.assert_frame_equal(T.load_table(resumed), T.canonical_order(df[df[T.REVISION].isin(["r0", "r1"])]))
  for rev in REVS:
    if rev not in T.completed_revisions(resumed):
      T.write_revision(df[df[T.REVISION] == rev], resumed)
  for rev in REVS:
    a = (full / T.REVISIONS_DIR / f"{rev}.csv").read_bytes()
    assert a == (resumed / T.REVISIONS_DIR / f"{rev}.csv").read_bytes()
  ta, tb = T.load_table(full), T.load_table(resumed)
  pd.testing.assert_frame_equal(ta, tb)
  pd.testing.assert_frame_equal(ta, T.canonical_order(df))
  assert T.write_table(ta, tmp_path / "a.csv").read_bytes() == T.write_table(tb, tmp_path / "b.csv").read_bytes()
  # a combined file round-trips to the same bytes
  assert T.write_table(T.load_table(tmp_path / "a.csv"), tmp_path / "c.csv").read_bytes() == \
      (tmp_path / "a.csv").read_bytes()
  with pytest.raises(T.TableError, match="one revision"):
    T.write_revision(df, full)


def test_launch_analyze_end_to_end(tmp_path, df):
  sweep = tmp_path / "sweep"
  for rev in REVS:
    T.write_revision(df[df[T.REVISION] == rev], sweep)
  make_ablations().to_csv(tmp_path / "abl.csv", index=False)
  out = tmp_path / "out"
  env = dict(os.environ, MPLBACKEND="Agg")
  p = subprocess.run([sys.executable, "-m", "launch.analyze", f"--table={sweep}", f"--out={out}",
                      f"--ablations={tmp_path / 'abl.csv'}", "--pr_lead_k=2"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  s = json.loads((out / "summary.json").read_text())
  assert s["models"]["table"]["trajectory"][3]["bos_fraction_sel_first_ge_30"] == 0.5
  assert len(s["ablations"]) == 8
  page = (out / "report.html").read_text()
  pngs = ["bos_fraction.png", "recall.png", "per_layer_bos_table.png", "final_circuit_table.png",
          "ablations_table.png"]
  for name in pngs:
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert f"src='{name}'" in page
