"""Benchmarks of the whole pipeline, importable: `run(settings) -> results dict` (launch/bench.py is the CLI).

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

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

FLOP_FORMULA = ("flops_per_token = 6*N + 12*L*T*(n_heads*head_dim); N = all params - input embedding (V*d) "
                "- MoE inactive experts L*(E-k)*3*d*d_ff")

# Model sizes of the trainer benchmark (vocabulary 8192 for every size; the 1B configs use 50304).
# Parameter counts (total / N of the FLOP formula) are computed from the built model and reported.
SIZES = {
    "10M": dict(vocab_size=8192, d_model=256, n_layers=8, n_heads=4, d_ff=1024),
    "50M": dict(vocab_size=8192, d_model=512, n_layers=12, n_heads=8, d_ff=2048),
    "tiny": dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128),  # --quick only
}
# OLMoE at each size: 8 experts, top-2, expert width d_ff (about the dense size in ACTIVE parameters).
MOE = {"10M": dict(n_experts=8, top_k=2, d_ff=256), "50M": dict(n_experts=8, top_k=2, d_ff=512),
       "tiny": dict(n_experts=4, top_k=2, d_ff=32)}
FAMILIES = ("pythia", "olmo", "olmoe")


@dataclasses.dataclass
class Settings:
  """Knobs of one benchmark run (defaults: the full run; `quick()` for a smoke test)."""
  families: tuple = FAMILIES
  sizes: tuple = ("10M", "50M")
  batch: int = 8  # sequences per train step
  seq_len: int = 256  # T of the train step
  warmup: int = 2  # untimed calls before timing (the first includes the compile)
  repeats: int = 5  # timed calls; the median is reported
  size_timing: dict = dataclasses.field(default_factory=lambda: {"50M": (1, 3)})  # size -> (warmup, repeats)
  size_families: dict = dataclasses.field(default_factory=dict)  # size -> families (default: `families`)
  peak_n: int = 2048  # matmul side n of the peak measurement
  probe_every: int = 100  # K of the in-loop probe
  probe_n: int = 32  # in-loop probe examples (config probe.n default)
  scaling_family: str = "pythia"
  scaling_size: str = "10M"
  scaling_seq_lens: tuple = (256, 512, 1024)  # batch = tokens_per_step // T
  scaling_tokens: int = 2048  # tokens per step of the T scan
  disc_n: int = 500  # probe examples N of the pass-vs-reference timing
  disc_seq_len: int = 256  # T of discovery
  disc_repeats: int = 3
  disc_real_vocab: int = 50304  # a second discovery row at the 1B models' vocabulary (0: skip)
  disc_revisions: tuple = (1, 2, 4)
  disc_ns: tuple = (250, 500, 1000)
  conv_dims: dict = dataclasses.field(default_factory=lambda: dict(
      hidden_size=512, num_hidden_layers=8, intermediate_size=2048, vocab_size=8192, num_attention_heads=8))
  ckpt_size: str = "50M"  # train state (params + AdamW moments) saved and restored
  io_repeats: int = 3
  quick: bool = False

  @classmethod
  def quick_settings(cls) -> "Settings":
    return cls(families=("pythia",), sizes=("tiny",), batch=2, seq_len=32, warmup=1, repeats=1, peak_n=256,
               probe_every=4, probe_n=4, scaling_size="tiny", scaling_seq_lens=(32,), scaling_tokens=64, disc_n=16,
               disc_seq_len=32, disc_repeats=1, disc_real_vocab=0, disc_revisions=(1, 2), disc_ns=(16,), conv_dims={},
               ckpt_size="tiny", io_repeats=1, quick=True)

  def timing(self, size: str) -> tuple[int, int]:
    """(warmup, repeats) of the trainer benchmark at `size`."""
    return tuple(self.size_timing.get(size, (self.warmup, self.repeats)))


def _median(xs) -> float:
  return float(statistics.median(xs))


def _now() -> float:
  return time.perf_counter()


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, dict]:
  """Calls each fn once per round for warmup + repeats rounds, the order rotated by one each round (no
  variant always runs first). Per name: first_s (the first call, which includes compiling), median_s of the
  timed rounds, all timed seconds."""
  times = {k: [] for k in fns}
  names = list(fns)
  for r in range(warmup + repeats):
    for k in names[r % len(names):] + names[:r % len(names)]:
      t0 = _now()
      fns[k]()
      times[k].append(_now() - t0)
  return {k: dict(first_s=v[0], median_s=_median(v[warmup:]), timed_s=v[warmup:]) for k, v in times.items()}


# ------------------------------------------------------------------------------------------------ peak

def bench_peak(st: Settings) -> dict:
  """Matmul GFLOP/s = 2 n^3 / median seconds / 1e9 for f32 x f32 -> f32 and bf16 x bf16 -> f32 accumulation."""
  n = st.peak_n
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a32, b32 = jax.random.normal(ka, (n, n), jnp.float32), jax.random.normal(kb, (n, n), jnp.float32)
  a16, b16 = a32.astype(jnp.bfloat16), b32.astype(jnp.bfloat16)
  f32 = jax.jit(lambda a, b: a @ b)
  bf16 = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  r = interleaved({"f32": lambda: f32(a32, b32).block_until_ready(),
                   "bf16_f32acc": lambda: bf16(a16, b16).block_until_ready()},
                  max(st.warmup, 2), max(st.repeats, 5))
  flops = 2.0 * n ** 3
  g32, g16 = flops / r["f32"]["median_s"] / 1e9, flops / r["bf16_f32acc"]["median_s"] / 1e9
  return dict(n=n, flops_per_matmul=flops, f32_gflops=g32, bf16_f32acc_gflops=g16, bf16_over_f32=g16 / g32,
              warmup=max(st.warmup, 2), repeats=max(st.repeats, 5))


# ----------------------------------------------------------------------------------------------- train

def model_fields(family: str, size: str) -> dict:
  from configs.families import PUBLISHED  # pylint: disable=import-outside-toplevel

  f = dict(PUBLISHED[family])
  f.update(SIZES[size])
  if family == "olmoe":
    f.update(MOE[size])
  return f


def run_config(family: str, size: str, batch: int, seq_len: int, *, diagnostics: bool = True,
               probe_every: int = 0, probe_n: int = 32):
  """A trainer config (configs.base) of `family` at bench size `size`; no checkpoints, no progress bar."""
  from configs.base import base_config  # pylint: disable=import-outside-toplevel
  from configs.base import model_fields as mf  # pylint: disable=import-outside-toplevel

  c = base_config()
  c.model = mf(**model_fields(family, size))
  c.data.seq_len = seq_len
  c.train.update(batch_size=batch, steps=1_000_000, warmup_steps=10, diagnostics=diagnostics, progress=False)
  c.checkpoint.enabled = False
  c.probe.update(every=probe_every, n=probe_n)
  return c


def param_counts(model_cfg) -> dict:
  """total parameters, and N of the FLOP formula (active matmul parameters per token)."""
  from circuits.train import step as step_lib  # pylint: disable=import-outside-toplevel

  _, params = step_lib.abstract_model(model_cfg)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  n = total - model_cfg.vocab_size * model_cfg.d_model
  if model_cfg.is_moe:
    n -= model_cfg.n_layers * (model_cfg.n_experts - model_cfg.top_k) * 3 * model_cfg.d_model * model_cfg.d_ff
  return dict(params_total=total, params_active_N=n)


def flops_per_token(model_cfg, seq_len: int) -> float:
  n = param_counts(model_cfg)["params_active_N"]
  return 6.0 * n + 12.0 * model_cfg.n_layers * seq_len * model_cfg.n_heads * model_cfg.hd


class _Ours:
  """Our trainer's jitted step (circuits.train.setup) on one fixed synthetic batch."""

  def __init__(self, config):
    from circuits.train import setup  # pylint: disable=import-outside-toplevel
    from circuits.train import step as step_lib  # pylint: disable=import-outside-toplevel
    from circuits.train.data import SyntheticRepeatSource  # pylint: disable=import-outside-toplevel

    self.s = setup(config)
    self.state = self.s.init()
    src = SyntheticRepeatSource(self.s.model_cfg.vocab_size, int(config.data.seq_len), int(config.train.batch_size))
    self.batch = jax.device_put(src.batch(0), self.s.batch_sharding)
    self.probe = {}
    if config.probe.every:
      self.probe = jax.device_put(step_lib.probe_batch(self.s.config, self.s.model_cfg), self.s.probe_sharding)

  def __call__(self, step_value: int | None = None):
    if step_value is not None:  # the probe runs iff step % K == 0
      self.state = dict(self.state, step=jax.device_put(np.int32(step_value), self.s.state_shardings["step"]))
    self.state, m = self.s.step(self.state, self.batch, self.probe)
    jax.block_until_ready((self.state, m))
    return m


class _Reference:
  """The bare reference step: same model, plain next-token cross-entropy, plain optax.adamw, nnx.jit."""

  def __init__(self, model_cfg, batch: dict):
    import optax  # pylint: disable=import-outside-toplevel
    from flax import nnx  # pylint: disable=import-outside-toplevel

    from circuits import losses  # pylint: disable=import-outside-toplevel
    from circuits.models import build_model  # pylint: disable=import-outside-toplevel

    self.model = build_model(model_cfg, rngs=nnx.Rngs(0))
    self.opt = nnx.Optimizer(self.model, optax.adamw(3e-4, b1=0.9, b2=0.95), wrt=nnx.Param)
    self.tokens, self.targets = jnp.asarray(batch["tokens_BxT"]), jnp.asarray(batch["targets_BxT"])

    @nnx.jit
    def step(model, opt, tokens_BxT, targets_BxT):
      def loss_fn(model):
        logits_BxTxV = model(tokens_BxT).logits_BxTxV
        return losses.cross_entropy(targets_BxT, logits_BxTxV)[0].mean()

      loss, grads = nnx.value_and_grad(loss_fn)(model)
      opt.update(model, grads)
      return loss

    self.step = step

  def __call__(self):
    jax.block_until_ready(self.step(self.model, self.opt, self.tokens, self.targets))


def bench_train_one(st: Settings, family: str, size: str, peak_f32_gflops: float) -> dict:
  """One family at one size: diagnostics on (default trainer), off, probe at K, bare reference."""
  k = st.probe_every
  on = _Ours(run_config(family, size, st.batch, st.seq_len, diagnostics=True))
  off = _Ours(run_config(family, size, st.batch, st.seq_len, diagnostics=False))
  pr = _Ours(run_config(family, size, st.batch, st.seq_len, diagnostics=True, probe_every=k, probe_n=st.probe_n))
  ref = _Reference(on.s.model_cfg, jax.device_get(on.batch))
  rounds = {"n": 0}

  def probe_ran():
    m = pr(k * (rounds["n"] + 1))
    assert bool(m["probe_ran"])

  def probe_skipped():
    m = pr(k * (rounds["n"] + 1) + 1)
    assert not bool(m["probe_ran"])
    rounds["n"] += 1

  warmup, repeats = st.timing(size)
  r = interleaved({"diag_on": on, "diag_off": off, "probe_ran": probe_ran, "probe_skipped": probe_skipped,
                   "reference": ref}, warmup, repeats)
  cfg = on.s.model_cfg
  tokens = st.batch * st.seq_len
  fpt = flops_per_token(cfg, st.seq_len)
  t_on, t_off = r["diag_on"]["median_s"], r["diag_off"]["median_s"]
  t_pr, t_skip, t_ref = r["probe_ran"]["median_s"], r["probe_skipped"]["median_s"], r["reference"]["median_s"]
  probe_extra = t_pr - t_skip
  out = dict(family=family, size=size, **param_counts(cfg), batch=st.batch, seq_len=st.seq_len, warmup=warmup,
             repeats=repeats,
             tokens_per_step=tokens, flops_per_token=fpt,
             step_s=t_on, step_s_diag_off=t_off, step_s_probe_ran=t_pr, step_s_probe_skipped=t_skip,
             step_s_reference=t_ref, tokens_per_s=tokens / t_on, tokens_per_s_diag_off=tokens / t_off,
             tokens_per_s_reference=tokens / t_ref, probe_every_K=k, probe_extra_s=probe_extra,
             # fraction of a step's time the probe costs, amortised over K steps (goal <= 0.01)
             probe_amortised_frac=probe_extra / k / t_on,
             compile_s=dict(train_step=r["diag_on"]["first_s"] - t_on,
                            train_step_diag_off=r["diag_off"]["first_s"] - t_off,
                            train_step_probe=r["probe_ran"]["first_s"] - t_pr,
                            reference_step=r["reference"]["first_s"] - t_ref),
             ratios=dict(
                 # model FLOP utilisation against the measured f32 matmul peak
                 mfu=fpt * tokens / t_on / (peak_f32_gflops * 1e9),
                 mfu_diag_off=fpt * tokens / t_off / (peak_f32_gflops * 1e9),
                 mfu_reference=fpt * tokens / t_ref / (peak_f32_gflops * 1e9),
                 # throughput with diagnostics on / off = step_s_diag_off / step_s (goal >= 0.98)
                 diagnostics_on_over_off=t_off / t_on,
                 # throughput of the probe-compiled step on a non-probe step / plain diag-on step (the cond's cost)
                 probe_skipped_over_plain=t_on / t_skip,
                 # throughput ours (diag on, the default) / bare reference; > 1: ours is faster
                 ours_over_reference=t_ref / t_on,
                 ours_diag_off_over_reference=t_ref / t_off))
  del on, off, pr, ref
  return out


def bench_diag_scaling(st: Settings, train_rows: list[dict] = ()) -> list[dict]:
  """Diagnostics on/off throughput ratio at each T, batch = scaling_tokens // T. A (T, batch) that the
  trainer table already measured (same family and size) is taken from it (source: "train")."""
  rows = []
  for t in st.scaling_seq_lens:
    b = max(1, st.scaling_tokens // t)
    same = [r for r in train_rows if (r["family"], r["size"], r["seq_len"], r["batch"]) ==
            (st.scaling_family, st.scaling_size, t, b)]
    if same:
      on_s, off_s, src = same[0]["step_s"], same[0]["step_s_diag_off"], "train"
    else:
      on = _Ours(run_config(st.scaling_family, st.scaling_size, b, t, diagnostics=True))
      off = _Ours(run_config(st.scaling_family, st.scaling_size, b, t, diagnostics=False))
      r = interleaved({"on": on, "off": off}, *st.timing(st.scaling_size))
      on_s, off_s, src = r["on"]["median_s"], r["off"]["median_s"], "scan"
      del on, off
    rows.append(dict(family=st.scaling_family, size=st.scaling_size, seq_len=t, batch=b, source=src,
                     step_s=on_s, step_s_diag_off=off_s, ratios=dict(diagnostics_on_over_off=off_s / on_s)))
  return rows


# ------------------------------------------------------------------------------------------- discovery

def _fixture_model(tmp: Path, name: str, seq_len: int, seed: int = 0, **overrides):
  """(our converted model, the HF eager model) of a random tiny local HF fixture (tests/hf_fixtures.py)."""
  from circuits.convert import from_hf  # pylint: disable=import-outside-toplevel
  from tests import hf_fixtures as F  # pylint: disable=import-outside-toplevel

  tag = "".join(f"_{k}{v}" for k, v in sorted(overrides.items()))
  d = F.make_hf_dir(tmp / f"{name}_{seed}_{seq_len}{tag}", name, seed=seed, max_position_embeddings=max(64, seq_len),
                    **overrides)
  _, model = from_hf(d)
  return model, F.load_hf_model(d), d


def _time_discovery(st: Settings, tmp: Path, probe_ids: tuple, **overrides) -> dict:
  """time_pass_vs_reference on the converted neox_rot25 fixture: one warm-up call (compile), then the
  median of disc_repeats calls (each call times one pass of ours and one of the reference)."""
  from circuits.data.probes import synthetic_induction_batch  # pylint: disable=import-outside-toplevel
  from circuits.discovery.measure import time_pass_vs_reference  # pylint: disable=import-outside-toplevel

  model, hf_model, _ = _fixture_model(tmp, "neox_rot25", st.disc_seq_len, **overrides)
  probe = synthetic_induction_batch(n=st.disc_n, seq_len=st.disc_seq_len, lo=probe_ids[0], hi=probe_ids[1])
  first = time_pass_vs_reference(model, hf_model, probe)
  runs = [time_pass_vs_reference(model, hf_model, probe) for _ in range(st.disc_repeats)]
  ours, ref = _median([x["ours_s"] for x in runs]), _median([x["reference_s"] for x in runs])
  c = model.cfg
  return dict(model=f"tests/hf_fixtures neox_rot25 (d_model {c.d_model}, {c.n_layers} layers, {c.n_heads} heads, "
                    f"vocab {c.vocab_size}), converted by from_hf", probe_ids=list(probe_ids),
              n=st.disc_n, seq_len=st.disc_seq_len, warmup=1, repeats=st.disc_repeats, ours_s=ours,
              reference_s=ref, compile_s=first["ours_compile_s"] - ours)


def bench_discovery(st: Settings, tmp: Path) -> dict:
  """Our pass vs the paper-style reference on the tiny fixture (vocab 128, probe ids 3..127) and, unless
  disc_real_vocab is 0, on the same fixture with the 1B models' vocabulary (probe ids 100..9999 as in the
  paper), where the reference's unembedding of every position counts and ours computes none."""
  from tests import hf_fixtures as F  # pylint: disable=import-outside-toplevel

  out = _time_discovery(st, tmp, (3, F.VOCAB))
  out["ratios"] = dict(reference_over_ours=out["reference_s"] / out["ours_s"])
  if st.disc_real_vocab:
    rv = _time_discovery(st, tmp, (100, 10000), vocab_size=st.disc_real_vocab)
    out["real_vocab"] = rv
    out["ratios"]["reference_over_ours_real_vocab"] = rv["reference_s"] / rv["ours_s"]
  return out


def bench_discovery_scaling(st: Settings, tmp: Path) -> dict:
  """measure_revision (the full per-revision pass, detectors included) seconds vs revisions and vs N."""
  from circuits.data.probes import synthetic_induction_batch  # pylint: disable=import-outside-toplevel
  from circuits.discovery.measure import measure_revision  # pylint: disable=import-outside-toplevel
  from tests import hf_fixtures as F  # pylint: disable=import-outside-toplevel

  t = st.disc_seq_len
  n_max = max(st.disc_ns + (st.disc_n,))
  probe_all = synthetic_induction_batch(n=n_max, seq_len=t, lo=3, hi=F.VOCAB)

  def sub(n):
    d = probe_all.as_dict()
    return {k: v[:n] for k, v in d.items()}

  models = [_fixture_model(tmp, "neox_rot25", t, seed=s)[0] for s in range(max(st.disc_revisions) + 1)]
  measure_revision(models[-1], sub(st.disc_n), revision="warm", step=0, tokens=0.0)  # compile
  rev_rows = []
  for k in st.disc_revisions:
    ts = []
    for _ in range(st.disc_repeats):
      t0 = _now()
      for i in range(k):
        measure_revision(models[i], sub(st.disc_n), revision=f"r{i}", step=i, tokens=float(i))
      ts.append(_now() - t0)
    rev_rows.append(dict(revisions=k, n=st.disc_n, total_s=_median(ts), per_revision_s=_median(ts) / k))
  n_rows = []
  for n in st.disc_ns:
    measure_revision(models[0], sub(n), revision="warm", step=0, tokens=0.0)
    ts = []
    for _ in range(st.disc_repeats):
      t0 = _now()
      measure_revision(models[0], sub(n), revision="r0", step=0, tokens=0.0)
      ts.append(_now() - t0)
    n_rows.append(dict(n=n, seconds=_median(ts), seconds_per_1000_examples=_median(ts) / n * 1000))
  for r in rev_rows:
    # per-revision seconds relative to one revision (1.0: linear in revisions)
    r["ratios"] = dict(per_revision_over_one=r["per_revision_s"] / rev_rows[0]["per_revision_s"])
  for r in n_rows:
    # seconds per example relative to the smallest N (1.0: linear in N; < 1: fixed costs amortised)
    r["ratios"] = dict(per_example_over_smallest=(r["seconds"] / r["n"]) / (n_rows[0]["seconds"] / n_rows[0]["n"]))
  return dict(seq_len=t, warmup=1, repeats=st.disc_repeats, vs_revisions=rev_rows, vs_n=n_rows)


# --------------------------------------------------------------------------------------------------- io

def _nbytes(tree) -> int:
  return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes for x in jax.tree.leaves(tree)))


def bench_conversion(st: Settings, tmp: Path) -> dict:
  """load_hf (read + transform) MB/s of a random GPT-NeoX checkpoint; save_converted / load_converted MB/s."""
  from circuits.convert import load_converted, load_hf, save_converted  # pylint: disable=import-outside-toplevel
  from tests import hf_fixtures as F  # pylint: disable=import-outside-toplevel

  dims = dict(st.conv_dims)
  if dims:
    dims.setdefault("max_position_embeddings", 2048)
  hf_dir = F.make_hf_dir(tmp / "conv_hf", "neox_rot25", std=0.02, **dims)
  read, save, load = [], [], []
  info = None
  for i in range(1 + st.io_repeats):
    t0 = _now()
    cfg, params, info = load_hf(hf_dir)
    read.append(_now() - t0)
    out = tmp / f"conv_out_{i}"
    t0 = _now()
    save_converted(out, cfg, params)
    save.append(_now() - t0)
    t0 = _now()
    _, model = load_converted(out)
    jax.block_until_ready(jax.tree.leaves(model))
    load.append(_now() - t0)
    shutil.rmtree(out)
  mb_file, mb_params = info["bytes_read"] / 1e6, _nbytes(params) / 1e6
  r, s, l = _median(read[1:]), _median(save[1:]), _median(load[1:])
  return dict(model=f"GPT-NeoX fixture {dims or 'tiny'}", file_mb=mb_file, params_mb=mb_params, warmup=1,
              repeats=st.io_repeats, read_convert_s=r, save_s=s, load_s=l,
              ratios=dict(read_convert_mb_per_s=mb_file / r, save_converted_mb_per_s=mb_params / s,
                          load_converted_mb_per_s=mb_params / l))


def bench_checkpoint(st: Settings, tmp: Path) -> dict:
  """Orbax train-state checkpoint (circuits.train.checkpoint): async save blocking part and total; restore."""
  from circuits.train import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  from circuits.train import setup  # pylint: disable=import-outside-toplevel

  s = setup(run_config("pythia", st.ckpt_size, 1, 16))
  state = s.init()
  jax.block_until_ready(state)
  mb = _nbytes(state) / 1e6
  steps = list(range(1, 2 + st.io_repeats))
  mgr = ckpt.make_manager(tmp / "ckpt", permanent=steps, resume_every=0, keep_resume=1, async_save=True)
  block, total, restore = [], [], []
  try:
    for step in steps:
      t0 = _now()
      ckpt.save(mgr, step, state, dict(step=step), force=True)
      block.append(_now() - t0)
      mgr.wait_until_finished()
      total.append(_now() - t0)
    for step in steps:
      t0 = _now()
      restored, _ = ckpt.restore(mgr, step, s.abstract_state)
      jax.block_until_ready(restored)
      restore.append(_now() - t0)
      del restored
  finally:
    mgr.close()
  b, t, r = _median(block[1:]), _median(total[1:]), _median(restore[1:])
  return dict(state=f"pythia {st.ckpt_size} train state (params + AdamW moments)", state_mb=mb, warmup=1,
              repeats=st.io_repeats, save_blocking_s=b, save_total_s=t, restore_s=r,
              ratios=dict(save_blocking_mb_per_s=mb / b, save_total_mb_per_s=mb / t, restore_mb_per_s=mb / r,
                          blocking_over_total=b / t))


# --------------------------------------------------------------------------------------------------- run

def run(st: Settings, log=print, command: str = "", out_dir=None) -> dict:
  """Every section; returns the results dict (JSON-serialisable). With out_dir, bench.json and bench.md are
  rewritten after each section (a run cut short keeps what it measured). The trainer goes last (slowest)."""
  t_start = _now()
  res: dict[str, Any] = dict(
      meta=dict(date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=command or "python -m launch.bench" + (" --quick" if st.quick else ""),
                backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
                cpu_count=os.cpu_count(), load_average_start=list(os.getloadavg()), jax=jax.__version__,
                flop_formula=FLOP_FORMULA, timing="median of `repeats` calls after `warmup` untimed calls; "
                "compared variants timed interleaved", settings=dataclasses.asdict(st)))

  def done(section):
    res["meta"]["load_average_end"] = list(os.getloadavg())
    res["meta"]["wall_s"] = _now() - t_start
    res["meta"].setdefault("complete", False)
    if out_dir is not None:
      write(res, out_dir)
    log(f"[bench] {section} done ({_now() - t_start:.0f} s)")

  res["peak"] = bench_peak(st)
  log(f"[bench] peak f32 {res['peak']['f32_gflops']:.0f} GFLOP/s, bf16->f32 {res['peak']['bf16_f32acc_gflops']:.0f}")
  done("peak")
  tmp = Path(tempfile.mkdtemp(prefix="circuits_bench_"))
  try:
    res["discovery"] = bench_discovery(st, tmp)
    log(f"[bench] discovery ours {res['discovery']['ours_s']:.3f} s, reference {res['discovery']['reference_s']:.3f} s")
    done("discovery")
    res["io"] = dict(conversion=bench_conversion(st, tmp), checkpoint=bench_checkpoint(st, tmp))
    done("io")
    res["scaling"] = {}
    res["train"] = []
    for si, size in enumerate(st.sizes):
      fams = tuple(st.size_families.get(size, st.families))
      for fam in fams:
        t0 = _now()
        res["train"].append(bench_train_one(st, fam, size, res["peak"]["f32_gflops"]))
        r = res["train"][-1]
        log(f"[bench] train {fam} {size}: {r['tokens_per_s']:.0f} tokens/s, diag ratio "
            f"{r['ratios']['diagnostics_on_over_off']:.3f} ({_now() - t0:.0f} s)")
        if size == st.scaling_size and fam == st.scaling_family:
          res["scaling"]["diagnostics_vs_seq_len"] = bench_diag_scaling(st, res["train"])
        done(f"train {fam} {size}")
      if si == 0:  # before the larger sizes: a run cut short keeps the scaling figures
        res["scaling"]["discovery"] = bench_discovery_scaling(st, tmp)
        done("scaling.discovery")
    if "diagnostics_vs_seq_len" not in res["scaling"]:
      res["scaling"]["diagnostics_vs_seq_len"] = bench_diag_scaling(st, res["train"])
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  res["meta"]["complete"] = True
  done("all")
  return res


def iter_ratios(res: dict, prefix: str = ""):
  """(dotted path, value) of every number under a `ratios` key."""
  if isinstance(res, dict):
    for k, v in res.items():
      if k == "ratios":
        for rk, rv in v.items():
          yield f"{prefix}{rk}", rv
      else:
        yield from iter_ratios(v, f"{prefix}{k}.")
  elif isinstance(res, list):
    for i, v in enumerate(res):
      yield from iter_ratios(v, f"{prefix}{i}.")


# ------------------------------------------------------------------------------------------------ report

def markdown(res: dict) -> str:
  """The results as markdown tables (what docs/benchmarks.md carries)."""
  m, p = res["meta"], res["peak"]
  la = lambda x: ", ".join(f"{v:.2f}" for v in x)
  st = m["settings"]
  lines = [f"Measured {m['date_utc']} on backend `{m['backend']}` ({len(m['devices'])} device(s): "
           f"{', '.join(m['devices'])}; {m['cpu_count']} CPU cores), command `{m['command']}`, "
           f"{m['wall_s']:.0f} s. Load average (1, 5, 15 min) at start {la(m['load_average_start'])}, "
           f"at end {la(m['load_average_end'])}. Timing: {m['timing']} "
           f"(train: warmup {st['warmup']}, repeats {st['repeats']}).", "",
           "**Peak** (matmul n = %d, 2n^3 FLOPs): f32 %.0f GFLOP/s; bf16 inputs, f32 accumulation %.0f GFLOP/s "
           "(ratio %.2f)." % (p["n"], p["f32_gflops"], p["bf16_f32acc_gflops"], p["bf16_over_f32"]), "",
           f"**Trainer** (batch {st['batch']} x T {st['seq_len']}; {m['flop_formula']}; MFU against the f32 peak; "
           f"probe K = {st['probe_every']}, {st['probe_n']} examples):", "",
           "| family | size | params total / N | step s | tokens/s | MFU | diag on/off (>= 0.98) | probe amortised "
           "(<= 1%) | ours / reference | compile s | warmup / repeats |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in res.get("train", []):
    q = r["ratios"]
    lines.append(f"| {r['family']} | {r['size']} | {r['params_total'] / 1e6:.1f}M / {r['params_active_N'] / 1e6:.1f}M "
                 f"| {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {q['mfu'] * 100:.1f}% | "
                 f"{q['diagnostics_on_over_off']:.3f} | {r['probe_amortised_frac'] * 100:.2f}% | "
                 f"{q['ours_over_reference']:.2f} | {r['compile_s']['train_step']:.1f} | {r['warmup']} / {r['repeats']} |")
  if "io" not in res:
    return "\n".join(lines) + "\n"
  d = res["discovery"]
  lines += ["", f"**Discovery** ({d['model']}; N = {d['n']}, T = {d['seq_len']}; median of {d['repeats']}): ours "
            f"{d['ours_s']:.3f} s/revision, paper-style HF-eager reference {d['reference_s']:.3f} s/revision: "
            f"**{d['ratios']['reference_over_ours']:.1f}x** (goal >= 10x); pass compile {d['compile_s']:.1f} s."]
  if "real_vocab" in d:
    rv = d["real_vocab"]
    lines += ["", f"The same at the 1B vocabulary ({rv['model']}; probe ids {rv['probe_ids'][0]}..{rv['probe_ids'][1] - 1}):"
              f" ours {rv['ours_s']:.3f} s/revision, reference {rv['reference_s']:.3f} s/revision: "
              f"**{d['ratios']['reference_over_ours_real_vocab']:.1f}x**; pass compile {rv['compile_s']:.1f} s."]
  lines += [""]
  c, k = res["io"]["conversion"], res["io"]["checkpoint"]
  lines += [f"**I/O** (median of {c['repeats']} after 1 warm-up): conversion ({c['model']}, {c['file_mb']:.0f} MB "
            f"safetensors) read + transform {c['ratios']['read_convert_mb_per_s']:.0f} MB/s, save_converted "
            f"{c['ratios']['save_converted_mb_per_s']:.0f} MB/s, load_converted {c['ratios']['load_converted_mb_per_s']:.0f}"
            f" MB/s. Checkpoint ({k['state']}, {k['state_mb']:.0f} MB): async save blocking part "
            f"{k['save_blocking_s']:.3f} s ({k['ratios']['save_blocking_mb_per_s']:.0f} MB/s), total {k['save_total_s']:.3f}"
            f" s ({k['ratios']['save_total_mb_per_s']:.0f} MB/s); restore {k['restore_s']:.3f} s "
            f"({k['ratios']['restore_mb_per_s']:.0f} MB/s).", ""]
  lines += ["**Scaling: diagnostics vs T** (tokens per step fixed):", "", "| family | size | T | batch | step s on | "
            "step s off | on/off |", "|---|---|---|---|---|---|---|"]
  for r in res.get("scaling", {}).get("diagnostics_vs_seq_len", []):
    lines.append(f"| {r['family']} | {r['size']} | {r['seq_len']} | {r['batch']} | {r['step_s']:.3f} | "
                 f"{r['step_s_diag_off']:.3f} | {r['ratios']['diagnostics_on_over_off']:.3f} |")
  if "discovery" not in res.get("scaling", {}):
    return "\n".join(lines) + "\n"
  s = res["scaling"]["discovery"]
  lines += ["", f"**Scaling: discovery** (measure_revision, full pass with detectors, T = {s['seq_len']}):", "",
            "| revisions | N | total s | s/revision | relative to 1 |", "|---|---|---|---|---|"]
  for r in s["vs_revisions"]:
    lines.append(f"| {r['revisions']} | {r['n']} | {r['total_s']:.3f} | {r['per_revision_s']:.3f} | "
                 f"{r['ratios']['per_revision_over_one']:.2f} |")
  lines += ["", "| N | s/revision | s per 1000 examples | per example relative to smallest N |", "|---|---|---|---|"]
  for r in s["vs_n"]:
    lines.append(f"| {r['n']} | {r['seconds']:.3f} | {r['seconds_per_1000_examples']:.3f} | "
                 f"{r['ratios']['per_example_over_smallest']:.2f} |")
  return "\n".join(lines) + "\n"


def write(res: dict, out_dir) -> tuple[Path, Path]:
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  j, md = out / "bench.json", out / "bench.md"
  j.write_text(json.dumps(res, indent=1, default=float) + "\n")
  md.write_text(markdown(res))
  return j, md
