"""launch.device_check: `--tiny` runs the whole check (peak, train steps of the three tiny configs, a discovery
pass) on the CPU in a subprocess and writes its table and JSON; the OOM back-off order and the nominal peaks."""

import json
import math
import os
import subprocess
import sys

from circuits import device_check as dc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_attempts_double_microbatches_then_halve_rows():
  assert list(dc._attempts(16, 4)) == [(16, 4), (16, 8), (16, 16), (8, 4), (8, 8), (4, 4), (2, 2), (1, 1)]
  assert list(dc._attempts(6, 4)) == [(6, 3), (6, 6), (3, 3), (1, 1)]  # microbatches always divide the rows
  for rows, m in dc._attempts(12, 8):
    assert rows % m == 0


def test_nominal_peaks_and_oom_detection():
  assert dc.nominal_peak_tflops("NVIDIA H200") == 989.0 and dc.nominal_peak_tflops("TPU v5 lite") == 197.0
  assert dc.nominal_peak_tflops("TPU v5p") == 459.0 and dc.nominal_peak_tflops("cpu") is None
  assert dc.is_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"))
  assert not dc.is_oom(ValueError("shapes do not match"))


def test_tiny_device_check_on_cpu(tmp_path):
  out = tmp_path / "dc.json"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-m", "launch.device_check", "--tiny", f"--out={out}"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-4000:]
  assert "| what | batch x T" in p.stdout and "s/revision" in p.stdout
  res = json.loads(out.read_text())
  assert res["tiny"] and res["backend"] == "cpu" and res["peak_source"] == "measured"
  assert res["peak"]["bf16_gflops"] > 0
  assert [r["config"] for r in res["train"]] == ["pythia_tiny", "olmo_tiny", "olmoe_tiny"]
  for r in res["train"]:
    assert r["ok"], r
    assert r["global_batch"] == r["rows_per_device"] * r["devices"] and r["diagnostics"]
    assert r["step_s"] > 0 and r["tokens_per_s"] == r["global_batch"] * r["seq_len"] / r["step_s"]
    assert 0 < r["mfu"] and math.isclose(r["mfu"], r["mfu_vs_measured_peak"])  # no nominal CPU peak
    assert math.isfinite(r["loss"]) and r["compiled_gib"] > 0
  assert res["train"][2]["moe_impl"] == "ragged"
  d = res["discovery"]
  assert d["n"] == 16 and d["seq_len"] == 32 and d["s_per_revision"] > 0 and d["rows"] == 2 * 4  # L x H
