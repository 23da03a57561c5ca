"""Trainer benchmarks: tokens/s, MFU, diagnostics on/off, the probe amortised at K, ours vs a bare reference
step, and the diagnostics ratio vs T (definitions: the package docstring, circuits/bench/__init__.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from circuits.bench.harness import MOE, SIZES, Settings, interleaved, paired_ratio

def model_fields(family: str, size: str) -> dict:
  from configs.families import PUBLISHED

  f = dict(PUBLISHED[family])
  f.update(SIZES[size])
  if family == "olmoe":
    f.update(MOE[size])
  return f


def run_config(family: str, size: str, batch: int, seq_len: int, *, diagnostics: bool = True,
               probe_every: int = 0, probe_n: int = 32, dtype: str = "float32"):
  """A trainer config (configs.base) of `family` at bench size `size`; no checkpoints, no progress bar;
  dtype: model.dtype (activations; params, optimizer, softmax, loss and diagnostics stay fp32)."""
  from configs.base import base_config
  from configs.base import model_fields as mf

  c = base_config()
  c.model = mf(**model_fields(family, size))
  c.model.dtype = dtype
  c.data.seq_len = seq_len
  c.train.update(batch_size=batch, steps=1_000_000, warmup_steps=10, diagnostics=diagnostics, progress=False)
  c.checkpoint.enabled = False
  c.probe.update(every=probe_every, n=probe_n)
  return c


def param_counts(model_cfg) -> dict:
  """total parameters, and N of the FLOP formula (active matmul parameters per token)."""
  from circuits.train import step as step_lib

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
    from circuits.train import setup
    from circuits.train import step as step_lib
    from circuits.train.data import SyntheticRepeatSource

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
    import optax
    from flax import nnx

    from circuits import losses
    from circuits.models import build_model

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
  """One family at one size: diagnostics on (default trainer, fp32), off, probe at K, bare reference, and (with
  st.bf16) the default trainer with bf16 activations."""
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

  fns = {"diag_on": on, "diag_off": off, "probe_ran": probe_ran, "probe_skipped": probe_skipped, "reference": ref}
  if st.bf16:
    fns["bf16"] = _Ours(run_config(family, size, st.batch, st.seq_len, diagnostics=True, dtype="bfloat16"))
  warmup, repeats = st.timing(size)
  r = interleaved(fns, warmup, repeats)
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
  # the same ratio read round by round, with its 95% bootstrap interval (harness.paired_ratio)
  out["diagnostics_on_over_off_paired"] = paired_ratio(r["diag_off"]["timed_s"], r["diag_on"]["timed_s"])
  if st.bf16:  # throughput with bf16 activations / fp32 (the default), same step otherwise
    out["step_s_bf16"] = r["bf16"]["median_s"]
    out["ratios"]["bf16_over_fp32"] = t_on / r["bf16"]["median_s"]
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
