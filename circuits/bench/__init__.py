"""Benchmarks of the whole pipeline, importable: `run(settings) -> results dict` (launch/bench.py is the CLI).

Modules: harness (Settings, sizes, the interleaved timer, matmul peak), train, discovery, storage
(conversion and checkpoints), report (run every section; JSON and markdown).

Every timed figure is the MEDIAN of `repeats` measurements taken after `warmup` untimed calls, and every
ratio is taken between figures measured in the same run. Variants that are compared (diagnostics on/off,
probe step, bare reference step) are timed INTERLEAVED (one call of each per round), so drifting load from
other processes hits both sides of a ratio alike.

Sections (keys of the results dict):
  peak        matmul GFLOP/s (2 n^3 FLOPs per n x n x n matmul): f32, and bf16 inputs with f32 accumulation
  train       per family and size: tokens/s, MFU, diagnostics on/off, probe amortised at K, ours vs a bare
              reference step (plain next-token loss, plain optax adamw, nnx.jit), compile seconds
  discovery   seconds per revision of our pass vs the paper-style HF-eager reference (same model, N, T)
  io          conversion MB/s; checkpoint save (blocking part, total) and restore MB/s
  scaling     diagnostics ratio vs T (tokens per step held fixed); discovery seconds vs revisions and vs N

FLOP convention (model FLOPs, PaLM appendix B style), per trained token:
  flops_per_token = 6 * N + 12 * L * T * (n_heads * head_dim)
  N = parameters used by a token's matmuls = all parameters - the input embedding table (a gather, V * d)
      - for MoE the inactive experts' weights, L * (E - k) * 3 * d * d_ff (only top_k of E experts count)
  the attention term counts the full T x T score and value matmuls (no causal halving), forward + backward.
MFU = flops_per_token * tokens/s / the measured f32 matmul peak (the models train in float32).
"""

from circuits.bench.discovery import bench_discovery, bench_discovery_scaling
from circuits.bench.harness import (FAMILIES, FLOP_FORMULA, MOE, SIZES, Settings, bench_peak, interleaved,
                                    paired_ratio, settings_from)
from circuits.bench.report import iter_ratios, markdown, run, write
from circuits.bench.storage import bench_checkpoint, bench_conversion
from circuits.bench.train import bench_diag_scaling, bench_train_one, flops_per_token, model_fields, param_counts, run_config

__all__ = ["FAMILIES", "FLOP_FORMULA", "MOE", "SIZES", "Settings", "bench_checkpoint", "bench_conversion",
           "bench_diag_scaling", "bench_discovery", "bench_discovery_scaling", "bench_peak", "bench_train_one",
           "flops_per_token", "interleaved", "iter_ratios", "markdown", "model_fields", "paired_ratio", "param_counts", "run",
           "run_config", "settings_from", "write"]
