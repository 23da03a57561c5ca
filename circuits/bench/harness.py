"""The timing harness: the benchmark's Settings, model sizes, the interleaved median timer, the matmul peak.

Every timed figure is the MEDIAN of `repeats` measurements after `warmup` untimed calls; compared variants
are timed INTERLEAVED (`interleaved`: one call of each per round, the order rotated each round).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

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
  bf16: bool = True  # also time the trainer with bf16 activations (model.dtype), interleaved with fp32
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
  sections: tuple = ("core", "attention", "public")  # core: peak, discovery, io, train, scaling
  public_repos: tuple = ("EleutherAI/pythia-1b", "allenai/OLMo-1B-0724-hf")  # 1B-shaped discovery CLI rows
  public_ns: tuple = (8, 24)  # two N for the per-example slope (circuits.bench.public)
  quick: bool = False

  @classmethod
  def quick_settings(cls) -> "Settings":
    return cls(families=("pythia",), sizes=("tiny",), batch=2, seq_len=32, warmup=1, repeats=1, peak_n=256,
               probe_every=4, probe_n=4, scaling_size="tiny", scaling_seq_lens=(32,), scaling_tokens=64, disc_n=16,
               disc_seq_len=32, disc_repeats=1, disc_real_vocab=0, disc_revisions=(1, 2), disc_ns=(16,), conv_dims={},
               ckpt_size="tiny", io_repeats=1, public_repos=("EleutherAI/pythia-1b",), public_ns=(2, 4), quick=True)

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


def paired_ratio(num_s, den_s, *, draws: int = 2000, seed: int = 0) -> dict:
  """The ratio num / den of two interleaved variants read round by round (the two calls of one round ran
  side by side, so load that drifts between rounds cancels): the median of the per-round ratios and a 95%
  bootstrap interval of that median (percentiles 2.5 and 97.5 over `draws` resamples of the rounds, fixed
  seed). With few rounds the interval is wide; it is what a reader compares a goal with."""
  import numpy as np

  r = np.asarray(num_s, float) / np.asarray(den_s, float)
  boot = np.median(r[np.random.default_rng(seed).integers(0, len(r), (draws, len(r)))], 1)
  return dict(median=float(np.median(r)), ci95=[float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
              rounds=len(r))


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


def settings_from(quick: bool = False, families=None, sizes=None, size_families=(), disc_repeats=None,
                  repeats=None, warmup=None, sections=None) -> Settings:
  """Settings of the command line: the full (or `quick`) defaults with what is given replaced.

  size_families: items "SIZE=FAM+FAM" restricting the families at a size (e.g. "50M=pythia").
  """
  st = Settings.quick_settings() if quick else Settings()
  if families:
    st.families = tuple(families)
  if sizes:
    st.sizes = tuple(sizes)
  for item in size_families or ():
    size, fams = item.split("=")
    st.size_families[size] = tuple(fams.split("+"))
  if disc_repeats:
    st.disc_repeats = disc_repeats
  if repeats:
    st.repeats = repeats
  if warmup is not None:
    st.warmup = warmup
  if sections:
    unknown = sorted(set(sections) - set(Settings.sections))
    if unknown:
      from circuits.errors import CircuitsError
      raise CircuitsError(f"--sections: unknown {unknown}; choose from {','.join(Settings.sections)}")
    st.sections = tuple(sections)
  return st
