"""Attention implementations at scale, measured: rows for the benchmark report (`make bench` wires them in).

    rows = run(quick=False)             # list of dicts, one per measurement (section, ...)
    python -m circuits.bench.attention memory --seq_lens 1024,2048 --impls exact,blockwise   # JSON rows
    python -m circuits.bench.attention train_1b --config pythia_1b --seq_len 2048 --batch 8 --devices 8

Sections:
  diag        blockwise train step, diagnostics on/off throughput ratio (timed interleaved, paired per round) at
              T = 256..4096 for a 1-layer stress model and at T = 256, 1024, 4096 for the trainer benchmark's Pythia 10M
  cost        exact and blockwise, diagnostics on/off: XLA cost analysis (FLOPs, bytes, transcendentals) of the
              compiled step
  impls       blockwise vs exact: train step seconds (interleaved) and XLA temp memory, side by side
  memory      XLA `memory_analysis()` temp bytes of a tiny model's train step (value_and_grad) vs T, per impl,
              compiled from abstract inputs in a subprocess under the memory-optimized CPU scheduler
              (the default XLA:CPU scheduler overstates temp and hides rematerialisation, SCALE.md section 3)
  train_1b    the trainer's step of a 1B config (circuits.train.setup) compiled abstractly on a fake-device
              mesh: per-device memory and the HLO shapes that hold a [T, S] pair (`ts_shapes`)
Timings use `circuits.bench.interleaved` (median of the timed rounds, variants rotated each round).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from circuits.train.memory import MEMORY_FLAGS  # noqa: E402  (one definition)
TINY = dict(family="pythia", vocab_size=256, d_model=64, n_layers=1, n_heads=2, d_ff=128, rotary_pct=0.25,
            parallel_residual=True, qkv_bias=True)
# the models of the diagnostics rows: a 1-layer stress case (attention is nearly the whole step, so every
# extra operation of the stats shows) and the trainer benchmark's Pythia 10M (8 layers, d_model 256)
DIAG_MODELS = ("1-layer d64", "pythia 10M")


def diag_model(name: str) -> dict:
  if name == "1-layer d64":
    return TINY
  from circuits.bench.train import model_fields
  family, size = name.split()
  return model_fields(family, size)


def _loss_and_grad(model_cfg, stats: bool):
  """(graphdef, params abstract, f(params, tokens, targets) -> (loss, (grads, stats))) of a plain CE step."""
  import jax
  import optax
  from flax import nnx

  from circuits.models import Capture, build_model

  model = nnx.eval_shape(lambda: build_model(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)

  def loss_fn(p, tokens_BxT, targets_BxT):
    out = nnx.merge(graphdef, p)(tokens_BxT, Capture(stats=stats))
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits_BxTxV, targets_BxT).mean()
    return loss, out.attn_stats

  def f(p, tokens_BxT, targets_BxT):
    (loss, st), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens_BxT, targets_BxT)
    return loss, g, st

  return graphdef, params, jax.jit(f)


def ts_shapes(hlo_text: str, seq_len: int) -> list[str]:
  """Distinct array shapes in an HLO text with at least two dimensions equal to T (candidates for a [T, S])."""
  out = set()
  for dt, dims in re.findall(r"\b(f32|bf16|f16|pred|s32|f64)\[([\d,]+)\]", hlo_text):
    d = [int(x) for x in dims.split(",") if x]
    if d.count(seq_len) >= 2:
      out.add(f"{dt}[{dims}]")
  return sorted(out)


def step_memory(model_cfg, seq_len: int, batch: int = 1, stats: bool = True) -> dict:
  """XLA memory figures (bytes) of the value_and_grad step at T = seq_len, compiled from abstract inputs."""
  import jax
  import numpy as np

  _, params, f = _loss_and_grad(model_cfg, stats)
  tok = jax.ShapeDtypeStruct((batch, seq_len), np.int32)
  t0 = time.time()
  compiled = f.lower(params, tok, tok).compile()
  m = compiled.memory_analysis()
  big = [s for s in ts_shapes(compiled.as_text(), seq_len)]
  return dict(temp_bytes=int(m.temp_size_in_bytes), argument_bytes=int(m.argument_size_in_bytes),
              output_bytes=int(m.output_size_in_bytes), compile_s=time.time() - t0, ts_shapes=big)


def memory_rows(seq_lens, impls, model: dict | None = None, batch: int = 1) -> list[dict]:
  """Rows (impl, seq_len, temp_bytes, ...) in THIS process (set MEMORY_FLAGS before jax is imported)."""
  from circuits.models import ModelConfig

  rows = []
  for impl in impls:
    for t in seq_lens:
      cfg = ModelConfig(**dict(model or TINY, attention_impl=impl))
      rows.append(dict(section="memory", impl=impl, seq_len=int(t), batch=batch,
                       **step_memory(cfg, int(t), batch)))
  return rows


def memory_rows_subprocess(seq_lens, impls, model: dict | None = None, batch: int = 1, timeout: float = 600) -> list:
  """`memory_rows` in a fresh process under the memory-optimized CPU scheduler (the flag must precede jax)."""
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + MEMORY_FLAGS).strip(),
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "circuits.bench.attention", "memory", "--seq_lens", ",".join(map(str, seq_lens)),
         "--impls", ",".join(impls), "--batch", str(batch), "--model", json.dumps(model or TINY)]
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
  if res.returncode:
    raise RuntimeError(f"memory subprocess failed:\n{res.stderr[-4000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def train_1b_memory(config_name: str = "pythia_1b", seq_len: int = 2048, batch: int = 8, impl: str = "blockwise",
                    diagnostics: bool = True) -> dict:
  """Per-device memory (GiB) of the trainer's step of configs/<config_name> on the current devices, compiled
  abstractly (circuits.train.setup), and the HLO shapes with two dims equal to T. Run in a process whose
  XLA_FLAGS set the fake device count and MEMORY_FLAGS."""
  import importlib

  import jax

  from circuits.train import setup

  c = importlib.import_module(f"configs.{config_name}").get_config()
  c.data.seq_len, c.train.batch_size, c.train.diagnostics = seq_len, batch, diagnostics
  c.model.attention_impl = impl
  s = setup(c)
  t0 = time.time()
  compiled = s.step.lower(s.abstract_state, s.abstract_batch(), s.abstract_probe()).compile()
  m = compiled.memory_analysis()
  gib = lambda b: b / 2**30
  mc = s.model_cfg
  shapes = ts_shapes(compiled.as_text(), seq_len)
  # a [B_local, H, T, S] buffer holds >= H * T * T elements (B_local >= 1); [B, T, D] with D == T holds less
  # when B_local < H
  per_head = [x for x in shapes if _numel(x) >= mc.n_heads * seq_len * seq_len]
  return dict(section="train_1b", config=config_name, impl=impl, diagnostics=diagnostics, seq_len=seq_len,
              batch=batch, devices=len(jax.devices()), mesh=dict(s.mesh.shape), compile_s=time.time() - t0,
              argument_gib=gib(m.argument_size_in_bytes), output_gib=gib(m.output_size_in_bytes),
              temp_gib=gib(m.temp_size_in_bytes), alias_gib=gib(m.alias_size_in_bytes),
              total_gib=gib(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                            - m.alias_size_in_bytes),
              ts_shapes=shapes, bxhxtxs_shapes=per_head)


def _numel(shape: str) -> int:
  n = 1
  for x in shape[shape.index("[") + 1:-1].split(","):
    n *= int(x)
  return n


def _timed_step(model_cfg, seq_len: int, batch: int, stats: bool):
  import jax
  import numpy as np
  from flax import nnx

  from circuits.models import build_model

  _, _, f = _loss_and_grad(model_cfg, stats)
  params = nnx.state(build_model(model_cfg, rngs=nnx.Rngs(0)), nnx.Param)
  rng = np.random.default_rng(0)
  tok = jax.numpy.asarray(rng.integers(0, model_cfg.vocab_size, (batch, seq_len)), jax.numpy.int32)
  return lambda: jax.block_until_ready(f(params, tok, tok))


def bench_diag(seq_lens=(256, 512, 1024, 2048, 4096), tokens: int = 4096, model: str = "1-layer d64",
               warmup: int = 1, repeats: int = 5) -> list[dict]:
  """Blockwise train step (loss and grads) of `model` (DIAG_MODELS) with diagnostics on vs off at each T
  (batch = tokens // T), interleaved."""
  from circuits.bench import interleaved, paired_ratio
  from circuits.models import ModelConfig

  rows = []
  for t in seq_lens:
    b = max(1, tokens // t)
    cfg = ModelConfig(**dict(diag_model(model), attention_impl="blockwise"))
    r = interleaved({"on": _timed_step(cfg, t, b, True), "off": _timed_step(cfg, t, b, False)}, warmup, repeats)
    rows.append(dict(section="diag", impl="blockwise", model=model, seq_len=t, batch=b,
                     step_s_on=r["on"]["median_s"],
                     step_s_off=r["off"]["median_s"], on_over_off=r["on"]["median_s"] and
                     r["off"]["median_s"] / r["on"]["median_s"],
                     on_over_off_paired=paired_ratio(r["off"]["timed_s"], r["on"]["timed_s"])))
  return rows


def bench_impls(seq_lens=(256, 1024, 2048), tokens: int = 4096, model: dict | None = None, warmup: int = 1,
                repeats: int = 5, memory: bool = True) -> list[dict]:
  """Exact vs blockwise (diagnostics on): step seconds (interleaved) and, when memory, XLA temp bytes."""
  from circuits.bench import interleaved
  from circuits.models import ModelConfig

  rows = []
  mem = {}
  if memory:
    mem = {(r["impl"], r["seq_len"]): r["temp_bytes"]
           for r in memory_rows_subprocess(seq_lens, ("exact", "blockwise"), model, batch=1)}
  for t in seq_lens:
    b = max(1, tokens // t)
    fns = {impl: _timed_step(ModelConfig(**dict(model or TINY, attention_impl=impl)), t, b, True)
           for impl in ("exact", "blockwise")}
    r = interleaved(fns, warmup, repeats)
    rows.append(dict(section="impls", seq_len=t, batch=b, step_s_exact=r["exact"]["median_s"],
                     step_s_blockwise=r["blockwise"]["median_s"],
                     blockwise_over_exact_throughput=r["exact"]["median_s"] / r["blockwise"]["median_s"],
                     temp_bytes_exact_b1=mem.get(("exact", t)), temp_bytes_blockwise_b1=mem.get(("blockwise", t))))
  return rows


def bench_cost(seq_lens=(256, 512, 1024), tokens: int = 4096, models=DIAG_MODELS, impl: str = "exact") -> list:
  """XLA's cost analysis of the compiled loss-and-grad step, diagnostics on / off: FLOPs, bytes accessed and
  transcendentals (exp, log, ...). Compile only, no timing: load does not move it, so it shows what the
  diagnostics add where timings are too noisy to. XLA counts a loop body once, so `blockwise` is costed with one
  key block (attention_block = T): its scans run once and every element is counted; the work per element is
  that of any block size (smaller blocks only skip the causal blocks above the diagonal, on and off alike)."""
  import jax
  import jax.numpy as jnp

  from circuits.models import ModelConfig

  rows = []
  for name in models:
    for t in seq_lens:
      b = max(1, tokens // t)
      cost = {}
      for stats in (True, False):
        block = dict(attention_block=t) if impl == "blockwise" else {}
        _, params, f = _loss_and_grad(ModelConfig(**dict(diag_model(name), attention_impl=impl, **block)), stats)
        tok = jax.ShapeDtypeStruct((b, t), jnp.int32)
        c = f.lower(params, tok, tok).compile().cost_analysis()
        cost[stats] = c[0] if isinstance(c, list) else c
      on, off = cost[True], cost[False]
      key = {"flops": "flops", "bytes": "bytes accessed", "transcendentals": "transcendentals"}
      rows.append(dict(section="cost", impl=impl, model=name, seq_len=t, batch=b,
                       **{f"{k}_off": off.get(v, 0.0) for k, v in key.items()},
                       **{f"{k}_on_over_off": on.get(v, 0.0) / max(off.get(v, 0.0), 1.0) for k, v in key.items()}))
  return rows


def run(quick: bool = False) -> list[dict]:
  """Every section's rows (quick: tiny shapes, one timed round)."""
  if quick:
    return (bench_diag((64,), tokens=128, warmup=1, repeats=1) +
            bench_cost((64,), tokens=128, models=DIAG_MODELS[:1]) +
            bench_impls((64,), tokens=128, warmup=1, repeats=1, memory=False) +
            memory_rows_subprocess((256, 512), ("exact", "blockwise")))
  # rounds: enough for a paired interval of about +-2% on this CPU (docs/benchmarks.md, section 8)
  return (bench_diag(repeats=81) + bench_diag((256, 1024, 4096), model="pythia 10M", warmup=1, repeats=21) +
          bench_cost() +
          bench_cost(impl="blockwise") + bench_impls() +
          memory_rows_subprocess((1024, 2048, 4096, 8192), ("blockwise",)) +
          memory_rows_subprocess((1024, 2048, 4096), ("exact",)))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("what", choices=("memory", "train_1b", "run"))
  ap.add_argument("--seq_lens", default="1024,2048,4096,8192")
  ap.add_argument("--impls", default="exact,blockwise")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--model", default="")
  ap.add_argument("--config", default="pythia_1b")
  ap.add_argument("--seq_len", type=int, default=2048)
  ap.add_argument("--devices", type=int, default=0, help="train_1b: fake CPU devices (sets XLA_FLAGS; fresh process)")
  ap.add_argument("--no_diagnostics", action="store_true")
  ap.add_argument("--quick", action="store_true")
  a = ap.parse_args()
  if a.what == "memory":
    rows = memory_rows([int(x) for x in a.seq_lens.split(",")], a.impls.split(","),
                       json.loads(a.model) if a.model else None, a.batch)
  elif a.what == "train_1b":
    if a.devices:
      from jax._src import xla_bridge  # XLA reads XLA_FLAGS when the first backend starts, not at import
      if xla_bridge.backends_are_initialized():
        raise RuntimeError("--devices must be set before jax starts a backend; run it as a fresh process")
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {MEMORY_FLAGS} "
                                 f"--xla_force_host_platform_device_count={a.devices}").strip()
      os.environ.setdefault("JAX_PLATFORMS", "cpu")
    rows = [train_1b_memory(a.config, a.seq_len, a.batch, impl, not a.no_diagnostics) for impl in a.impls.split(",")]
  else:
    rows = run(a.quick)
  print(json.dumps(rows))


if __name__ == "__main__":
  main()
