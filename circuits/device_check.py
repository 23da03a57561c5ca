"""Device check: the bf16 matmul peak, a few real train steps of each 1B config, one discovery pass.

`run(tiny=False)` (entry point: `python -m launch.device_check`, `make device-check`) measures on the devices
present, in this order:
  peak: bf16 x bf16 -> f32 matmul GFLOP/s at n = 8192 (circuits.bench.bench_peak; tiny: n = 256);
  train: each 1B config (configs/pythia_1b.py, olmo_1b_0724.py, olmoe_1b_7b.py; tiny: the *_tiny configs) on
    an fsdp mesh over every device, random tokens, diagnostics on, the config's remat / bf16 / loss_chunk (OLMoE:
    moe_impl "gmm" on TPU, the config's "ragged" elsewhere); the
    global batch is `rows_per_device` x devices rows (16: the published 1024 rows on 64 chips) and the
    microbatches start at the config's and double on out-of-memory (then the rows halve). After one call
    (compile + first step), `steps` timed steps: tokens/s, MFU and memory;
  discovery: circuits.discovery.measure.measure_revision of a randomly initialised Pythia-1B-shaped model on
    the synthetic induction probe at N = 2000, T = 256 (tiny: the pythia_tiny model, N = 16, T = 32): one
    call to compile, one timed call = seconds per revision.

Definitions. tokens/s = global batch x T / median step seconds. MFU = tokens/s x circuits.bench.flops_per_token
(6 N_active + 12 L T H K, no remat recompute counted) / peak, where the peak is the device's nominal dense bf16
peak when its kind is in NOMINAL_BF16_TFLOPS ("peak source: nominal"), else the measured matmul peak
("measured"); both MFUs are in the JSON. Memory: the compiled step's XLA memory_analysis (arguments + outputs +
temp - aliased, per device) and, where the backend reports it, the allocator's peak_bytes_in_use of device 0
(process-wide: it never decreases, so a config's figure includes the earlier ones' peaks).
"""

from __future__ import annotations

import dataclasses
import importlib
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

CONFIGS = ("pythia_1b", "olmo_1b_0724", "olmoe_1b_7b")
TINY_CONFIGS = {"pythia_1b": "pythia_tiny", "olmo_1b_0724": "olmo_tiny", "olmoe_1b_7b": "olmoe_tiny"}
# dense (no sparsity) bf16 peaks in TFLOP/s per device, from the vendors' data sheets; matched by substring of
# jax's device_kind, first match wins
NOMINAL_BF16_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("TPU v6", 918.0),
                       ("TPU v5p", 459.0), ("TPU v5", 197.0), ("TPU v4", 275.0))
GOALS = dict(mfu=0.40, discovery_s=5.0)  # issue 16: on an H100/H200-class GPU


@dataclasses.dataclass
class CheckSettings:
  tiny: bool = False
  configs: tuple = CONFIGS
  rows_per_device: int = 16  # tiny: 1
  steps: int = 3  # timed steps after the first call
  peak_n: int = 8192
  disc_n: int = 2000
  disc_seq_len: int = 256

  @classmethod
  def make(cls, tiny: bool, **kw) -> "CheckSettings":
    if tiny:
      kw = dict(dict(rows_per_device=1, steps=2, peak_n=256, disc_n=16, disc_seq_len=32), **kw)
    return cls(tiny=tiny, **kw)


def nominal_peak_tflops(device_kind: str) -> float | None:
  for key, tf in NOMINAL_BF16_TFLOPS:
    if key.lower() in device_kind.lower():
      return tf
  return None


def is_oom(e: BaseException) -> bool:
  s = str(e)
  return "RESOURCE_EXHAUSTED" in s or "Out of memory" in s or "out of memory" in s


def device_peak_bytes() -> int | None:
  """The allocator's peak bytes in use on device 0 (None where the backend reports none, e.g. CPU)."""
  try:
    st = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return None if not st else st.get("peak_bytes_in_use")


def peak(st: CheckSettings) -> dict:
  from circuits.bench import Settings, bench_peak
  r = bench_peak(Settings(peak_n=st.peak_n))
  return dict(n=r["n"], bf16_gflops=r["bf16_f32acc_gflops"], f32_gflops=r["f32_gflops"])


def random_batch(s, seed: int = 0) -> dict:
  """Random tokens in [0, vocab) for every integer key of the step's batch (positions 0..T-1, one segment),
  loss mask 1, placed with the step's batch sharding."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, a in s.abstract_batch().items():
    if k == "loss_mask_BxT":
      x = np.ones(a.shape, a.dtype)
    elif k == "positions_BxT":
      x = np.broadcast_to(np.arange(a.shape[1], dtype=a.dtype), a.shape).copy()
    elif k == "segment_ids_BxT":
      x = np.ones(a.shape, a.dtype)
    else:
      x = rng.integers(0, s.model_cfg.vocab_size, a.shape).astype(a.dtype)
    out[k] = jax.device_put(x, a.sharding)
  return out


def _attempts(rows: int, micro: int):
  """(rows per device, microbatches) to try in order: the microbatches double up to `rows`, then the rows halve."""
  while rows >= 1:
    m = max(1, min(micro, rows))
    while rows % m:
      m -= 1
    while True:
      yield rows, m
      if m >= rows:
        break
      m *= 2
      while rows % m:
        m += 1
    rows //= 2


def train_steps(name: str, st: CheckSettings, peak_tflops: float, peak_source: str, measured_gflops: float) -> dict:
  """A few steps of config `name` on an fsdp mesh over all devices; see the module docstring."""
  from circuits.bench import flops_per_token
  from circuits.train import setup

  n_dev = jax.device_count()
  cname = TINY_CONFIGS[name] if st.tiny else name
  base = importlib.import_module(f"configs.{cname}").get_config()
  tried, last_err = [], ""
  for rows, micro in _attempts(st.rows_per_device, int(base.train.microbatches)):
    c = importlib.import_module(f"configs.{cname}").get_config()
    c.mesh.update(data=1, fsdp=-1, tensor=1, expert=1)
    c.train.batch_size = rows * n_dev
    c.train.microbatches = micro
    c.train.diagnostics = True
    c.probe.every = 0
    if c.model.get("n_experts", 0) and jax.default_backend() == "tpu":
      c.model.moe_impl = "gmm"  # megablox on TPU (as launch/tpu_pod.sh runs OLMoE); elsewhere the config's
    tried.append(f"{rows}x{micro}")
    state = batch = None
    try:
      s = setup(c)
      t0 = time.perf_counter()
      compiled = s.step.lower(s.abstract_state, s.abstract_batch(), {}).compile()
      compile_s = time.perf_counter() - t0
      mem = compiled.memory_analysis()
      state, batch = s.init(), random_batch(s)
      t0 = time.perf_counter()
      state, m = compiled(state, batch, {})
      jax.block_until_ready(m["loss"])
      first_s = time.perf_counter() - t0
      times = []
      for _ in range(st.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, {})
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    except Exception as e:  # pylint: disable=broad-except
      if not is_oom(e):
        raise
      last_err = str(e).splitlines()[0][:300]
      del state, batch
      continue
    step_s = statistics.median(times)
    t = int(c.data.seq_len)
    tokens = c.train.batch_size * t
    fpt = flops_per_token(s.model_cfg, t)
    tps = tokens / step_s
    mfu = lambda tflops: tps * fpt / (tflops * 1e12 * n_dev)
    gib = lambda b: b / 2**30
    pk = device_peak_bytes()
    return dict(
        config=cname, ok=True, devices=n_dev, mesh=dict(s.mesh.shape), global_batch=c.train.batch_size,
        rows_per_device=rows, microbatches=micro, seq_len=t, remat=c.train.remat, dtype=s.model_cfg.dtype,
        loss_chunk=int(c.train.loss_chunk), moe_impl=s.model_cfg.moe_impl if s.model_cfg.is_moe else None,
        diagnostics=True, tried=tried, compile_s=compile_s, first_step_s=first_s, step_s=step_s, steps=st.steps,
        loss=float(m["loss"]), tokens_per_s=tps, flops_per_token=fpt, mfu=mfu(peak_tflops), peak_source=peak_source,
        mfu_vs_measured_peak=mfu(measured_gflops / 1e3),
        compiled_gib=gib(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                         - mem.alias_size_in_bytes),
        temp_gib=gib(mem.temp_size_in_bytes), device_peak_gib=None if pk is None else gib(pk))
  return dict(config=cname, ok=False, tried=tried, error=f"out of memory at every setting tried: {last_err}")


def discovery(st: CheckSettings) -> dict:
  """measure_revision of a random Pythia-1B-shaped model (tiny: pythia_tiny's) at N = disc_n, T = disc_seq_len."""
  from circuits.data.probes import synthetic_induction_batch
  from circuits.discovery.measure import measure_revision
  from circuits.models import ModelConfig, build_model
  from configs.families import family_config

  cfg = ModelConfig.from_dict(family_config("pythia", "tiny" if st.tiny else "1b").model)
  model = build_model(cfg, rngs=0)
  hi = min(10000, cfg.vocab_size)
  probe = synthetic_induction_batch(n=st.disc_n, seq_len=st.disc_seq_len, lo=min(100, hi // 4), hi=hi)
  t0 = time.perf_counter()
  df, _ = measure_revision(model, probe, revision="random", step=0, tokens=0.0)
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  df, _ = measure_revision(model, probe, revision="random", step=0, tokens=0.0)
  s = time.perf_counter() - t0
  return dict(model=f"random pythia {'tiny' if st.tiny else '1b'} (d_model {cfg.d_model}, {cfg.n_layers} layers)",
              n=st.disc_n, seq_len=st.disc_seq_len, rows=len(df), first_s=first_s, s_per_revision=s)


def run(st: CheckSettings, log: Callable[[str], Any] = print) -> dict:
  devs = jax.devices()
  kind = devs[0].device_kind
  res: dict[str, Any] = dict(backend=jax.default_backend(), device_kind=kind, devices=len(devs),
                             jax=jax.__version__, tiny=st.tiny, goals=GOALS)
  t0 = time.perf_counter()
  res["peak"] = peak(st)
  log(f"# peak: {res['peak']['bf16_gflops']:.0f} GFLOP/s bf16 ({time.perf_counter() - t0:.0f} s)")
  nominal = nominal_peak_tflops(kind)
  if nominal is not None:
    peak_tflops, source = nominal, f"nominal {nominal:.0f} TFLOP/s ({kind})"
  else:
    peak_tflops, source = res["peak"]["bf16_gflops"] / 1e3, "measured"
  res["peak_source"] = source
  res["train"] = []
  for name in st.configs:
    t0 = time.perf_counter()
    r = train_steps(name, st, peak_tflops, source, res["peak"]["bf16_gflops"])
    res["train"].append(r)
    log(f"# {r['config']}: {'ok' if r['ok'] else r['error']} ({time.perf_counter() - t0:.0f} s)")
  t0 = time.perf_counter()
  res["discovery"] = discovery(st)
  log(f"# discovery: {res['discovery']['s_per_revision']:.2f} s/revision ({time.perf_counter() - t0:.0f} s)")
  return res


def markdown(res: dict) -> str:
  """One table: a row per 1B config, then the peak and discovery rows."""
  f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
  lines = [f"Device check: {res['devices']} x {res['device_kind']} ({res['backend']}, jax {res['jax']}"
           f"{', tiny configs' if res['tiny'] else ''}); MFU peak: {res['peak_source']}; "
           f"measured bf16 matmul peak {res['peak']['bf16_gflops']:.0f} GFLOP/s per device (n {res['peak']['n']})",
           "",
           "| what | batch x T (rows/device, microbatches) | step s | tokens/s | MFU | MFU vs measured peak "
           "| compiled GiB/device | device peak GiB |",
           "|---|---|---|---|---|---|---|---|"]
  for r in res["train"]:
    if not r["ok"]:
      lines.append(f"| {r['config']} | tried {', '.join(r['tried'])} | {r['error']} | | | | | |")
      continue
    lines.append(f"| {r['config']} (remat {r['remat']}, {r['dtype']}, diagnostics on) | {r['global_batch']} x "
                 f"{r['seq_len']} ({r['rows_per_device']}, {r['microbatches']}) | {f(r['step_s'], 3)} "
                 f"| {r['tokens_per_s']:.0f} | {f(100 * r['mfu'], 1)}% | {f(100 * r['mfu_vs_measured_peak'], 1)}% "
                 f"| {f(r['compiled_gib'], 3)} | {f(r['device_peak_gib'], 3)} |")
  d = res["discovery"]
  lines.append(f"| discovery pass, {d['model']} | N {d['n']} x T {d['seq_len']} "
               f"| {f(d['s_per_revision'], 2)} s/revision | | | | | |")
  return "\n".join(lines)
