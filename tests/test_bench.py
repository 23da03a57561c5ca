"""`python -m launch.bench --quick` end to end (a subprocess, the tiniest settings): bench.json holds every
section and field, and every ratio is finite and positive. No timing thresholds (the machine is shared)."""

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from circuits import bench  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN_FIELDS = {"family", "size", "params_total", "params_active_N", "batch", "seq_len", "warmup", "repeats",
                "tokens_per_step", "flops_per_token", "step_s", "step_s_diag_off", "step_s_probe_ran",
                "step_s_probe_skipped", "step_s_reference", "tokens_per_s", "tokens_per_s_diag_off",
                "tokens_per_s_reference", "probe_every_K", "probe_extra_s", "probe_amortised_frac", "compile_s",
                "ratios", "step_s_bf16"}
TRAIN_RATIOS = {"mfu", "mfu_diag_off", "mfu_reference", "diagnostics_on_over_off", "probe_skipped_over_plain",
                "ours_over_reference", "ours_diag_off_over_reference", "bf16_over_fp32"}


def _ratios(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      if k == "ratios":
        yield from ((f"{prefix}{rk}", rv) for rk, rv in v.items())
      else:
        yield from _ratios(v, f"{prefix}{k}.")
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _ratios(v, f"{prefix}{i}.")


def test_bench_quick(tmp_path):
  out = tmp_path / "bench"
  r = subprocess.run([sys.executable, "-m", "launch.bench", "--quick", "--out", str(out)], cwd=ROOT,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((out / "bench.json").read_text())
  assert (out / "bench.md").read_text().count("|") > 20
  assert "Peak" in r.stdout and "Discovery" in r.stdout

  m = res["meta"]
  for k in ("date_utc", "command", "backend", "devices", "cpu_count", "load_average_start", "load_average_end",
            "flop_formula", "timing", "settings", "wall_s"):
    assert k in m, k
  assert m["complete"] and m["devices"] and m["settings"]["quick"]
  for k in ("f32_gflops", "bf16_f32acc_gflops", "bf16_over_f32", "n", "warmup", "repeats"):
    assert res["peak"][k] > 0, k

  assert res["train"], "no trainer rows"
  for row in res["train"]:
    assert TRAIN_FIELDS <= set(row), TRAIN_FIELDS - set(row)
    assert TRAIN_RATIOS <= set(row["ratios"]), TRAIN_RATIOS - set(row["ratios"])
    assert set(row["compile_s"]) == {"train_step", "train_step_diag_off", "train_step_probe", "reference_step"}
    assert math.isfinite(row["probe_amortised_frac"])
    assert row["params_total"] >= row["params_active_N"] > 0

  d = res["discovery"]
  for k in ("n", "seq_len", "ours_s", "reference_s", "compile_s", "warmup", "repeats"):
    assert k in d, k
  assert set(d["ratios"]) == {"reference_over_ours"}
  assert set(res["io"]["conversion"]["ratios"]) == {"read_convert_mb_per_s", "save_converted_mb_per_s",
                                                    "load_converted_mb_per_s"}
  assert set(res["io"]["checkpoint"]["ratios"]) == {"save_blocking_mb_per_s", "save_total_mb_per_s",
                                                    "restore_mb_per_s", "blocking_over_total"}
  sc = res["scaling"]
  assert sc["diagnostics_vs_seq_len"] and all("diagnostics_on_over_off" in r["ratios"]
                                              for r in sc["diagnostics_vs_seq_len"])
  assert [r["revisions"] for r in sc["discovery"]["vs_revisions"]] == m["settings"]["disc_revisions"]
  assert [r["n"] for r in sc["discovery"]["vs_n"]] == m["settings"]["disc_ns"]

  att = res["attention"]
  assert {r["section"] for r in att} == {"diag", "impls", "memory", "cost"}
  assert all(r["transcendentals_on_over_off"] > 0 and r["bytes_off"] > 0 for r in att if r["section"] == "cost")
  assert all(r["on_over_off"] > 0 for r in att if r["section"] == "diag")
  for row in [r["on_over_off_paired"] for r in att if r["section"] == "diag"] + \
      [r["diagnostics_on_over_off_paired"] for r in res["train"]]:
    assert row["rounds"] >= 1 and row["ci95"][0] <= row["median"] <= row["ci95"][1]
  assert "on/off paired [95% CI]" in r.stdout
  mem = {(r["impl"], r["seq_len"]): r for r in att if r["section"] == "memory"}
  assert mem[("exact", 512)]["ts_shapes"] and mem[("blockwise", 512)]["temp_bytes"] > 0  # at T <= block (512)
  # blockwise is one T x T block too; T >= 1024 is tests/test_attention_impls.py::test_memory_grows_linearly_in_T
  (pub,) = res["public"]
  assert pub["repo"] == "EleutherAI/pythia-1b" and pub["peak_rss_gib"] > 0 and pub["checkpoint_gib"] > 0
  assert all(v["next_rev_s"] > 0 and v["wall_s"] > v["first_rev_s"] > 0 for v in pub["per_n"].values())
  assert "Discovery CLI on 1B-shaped checkpoints" in r.stdout and "exact vs blockwise" in r.stdout

  ratios = dict(_ratios(res))
  assert len(ratios) >= 15, sorted(ratios)  # quick: 7 trainer + 1 discovery + 7 io + 4 scaling
  bad = {k: v for k, v in ratios.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)}
  assert not bad, bad


def test_interleaved_rotates_the_order_and_times_every_call():
  calls = []
  fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
  res = bench.interleaved(fns, warmup=1, repeats=3)
  assert calls == list("abc" "bca" "cab" "abc")  # round r starts at variant r mod 3
  assert all(len(v["timed_s"]) == 3 and v["first_s"] >= 0 for v in res.values())


def test_paired_ratio_reads_rounds_side_by_side():
  # load that moves between rounds (here 1x, 3x, 2x) cancels in the per-round ratios: exactly 0.9 every round
  off = [1.0, 3.0, 2.0, 3.0, 1.0, 2.0, 3.0]
  p = bench.paired_ratio([0.9 * x for x in off], off)
  assert p["rounds"] == 7 and p["median"] == pytest.approx(0.9) and p["ci95"] == pytest.approx([0.9, 0.9])
  # noisy rounds: the interval holds the median and narrows with more rounds (fixed seeds throughout)
  rng = __import__("numpy").random.default_rng(1)
  ratios = 0.95 + 0.03 * rng.standard_normal(400)
  few, many = bench.paired_ratio(ratios[:10], [1.0] * 10), bench.paired_ratio(ratios, [1.0] * 400)
  for q in (few, many):
    assert q["ci95"][0] <= q["median"] <= q["ci95"][1]
  assert many["ci95"][1] - many["ci95"][0] < few["ci95"][1] - few["ci95"][0]
  assert many["ci95"][0] < 0.95 < many["ci95"][1]
