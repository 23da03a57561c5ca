"""The train state, the optimizer, and the pure step `(state, batch, probe) -> (state, metrics)`.

Legend: B batch, T length, V vocab, L layers, H heads, E experts, N probe examples, P baseline positions.
The state is a pure pytree (nested dicts of arrays):
  params     nnx.to_pure_dict of the model's nnx.Param state
  opt_state  optax state (clip -> AdamW with warmup + cosine decay)
  step       int32: updates applied so far (= index of the next data batch)
  rng        uint32[2]: the run's PRNG key (the models use no dropout; kept for completeness)
  n_skipped  int32: steps skipped by nan_policy="skip"
Metrics of step t describe the parameters of checkpoint t (loss, grad norm, attention stats, probe); lr
is the rate of the update t -> t+1.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from circuits import diagnostics, losses
from circuits.models import Capture, ModelConfig, build_model

PROBE_SEL = ("sel_induction", "sel_previous", "sel_first", "sel_induction_uniform", "sel_previous_uniform",
             "sel_first_uniform")


def lr_schedule(tr) -> optax.Schedule:
  """Linear warmup from 0 to train.lr over warmup_steps, then cosine to lr * min_lr_ratio at train.steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(tr.lr), warmup_steps=int(tr.warmup_steps),
      decay_steps=int(tr.steps), end_value=float(tr.lr) * float(tr.min_lr_ratio))


def make_optimizer(tr) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW; weight decay only on matrices (ndim >= 2), not biases or norms."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  parts = [optax.clip_by_global_norm(float(tr.grad_clip))] if tr.grad_clip > 0 else []
  parts.append(optax.adamw(lr_schedule(tr), b1=float(tr.b1), b2=float(tr.b2), eps=float(tr.eps),
                           weight_decay=float(tr.weight_decay), mask=decay_mask))
  return optax.chain(*parts)


def abstract_model(model_cfg: ModelConfig, seed: int = 0):
  """(graphdef, abstract Param state) without allocating anything."""
  model = nnx.eval_shape(lambda: build_model(model_cfg, rngs=nnx.Rngs(seed)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise NotImplementedError("the model holds non-Param state; the trainer only carries nnx.Param")
  return graphdef, params


def init_state(model_cfg: ModelConfig, tx, seed: int) -> dict:
  """A fresh train state (call under jax.jit with out_shardings to place it directly)."""
  model = build_model(model_cfg, rngs=nnx.Rngs(seed))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
              rng=jax.random.PRNGKey(seed), n_skipped=jnp.zeros((), jnp.int32))


# ----- the probe batch -----

def probe_batch(config, model_cfg: ModelConfig) -> dict[str, np.ndarray]:
  """The fixed synthetic induction batch (tokens_NxT, ab_N) and baseline positions (baseline_P).

  The paper's generator (circuits.data.probes, numpy only), with token ids in the model's range.
  """
  from circuits.data import probes
  from circuits.train.config import probe_token_range

  pr = config.probe
  t = int(pr.seq_len or config.data.seq_len)
  lo, hi = probe_token_range(config, model_cfg)
  n_base = min(int(pr.n_baseline), len(set(range(1, t - 1)) - {0, *range(t - 6, t)}))
  b = probes.synthetic_induction_batch(n=int(pr.n), seq_len=t, lo=lo, hi=hi, seed=int(pr.seed))
  base = probes.baseline_positions(seq_len=t, n=n_base)
  return dict(tokens_NxT=np.asarray(b.tokens_NxT, np.int32), ab_N=np.asarray(b.ab_N, np.int32),
              baseline_P=np.asarray(base, np.int32))


# ----- the step -----

@dataclasses.dataclass(frozen=True)
class StepOptions:
  """diagnostics: per-head attention reductions in the metrics; z_loss: output z-loss coefficient;
  nan_policy: "abort" | "skip"; probe_every: K (0: no probe); segment_mask: attention masked by document;
  remat: circuits.models.remat policy around each block; microbatches: m, the global batch is split into
  m microbatches (rows i::m) whose gradients are summed inside the step before one update; loss_chunk: C > 0
  forms the logits C positions at a time (circuits.losses chunked path; 0: whole, the plain path);
  residual_sharding: imposed on the residual stream after the embedding and every block (None: GSPMD's choice);
  scan_layers: the blocks run as one lax.scan over their stacked parameters (LM.__call__(scan_layers=True))."""
  diagnostics: bool = True
  z_loss: float = 0.0
  nan_policy: str = "abort"
  probe_every: int = 0
  segment_mask: bool = False
  remat: str = "none"
  microbatches: int = 1
  loss_chunk: int = 0
  scan_layers: bool = False
  residual_sharding: Any = None  # sharding of the [B, T, D] residual stream (set by circuits.train.setup)


# metrics of one microbatch that are sums over its tokens (normalised by the whole batch's token count), so
# that their sum over microbatches is the whole batch's value; every other metric is a mean over microbatches
_SUMMED = ("loss", "z_loss", "tokens", "loss_total")


def split_microbatches(batch: dict, m: int) -> dict:
  """[B, ...] -> [m, B/m, ...] with microbatch i = rows i::m (MaxText's strided split): each device's
  contiguous shard of the batch holds its own rows of every microbatch, so no data moves between devices."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1), batch)


def combine_microbatch_aux(aux_m: dict) -> dict:
  """Metrics of the whole batch from those of its m microbatches (leading axis m): sums for _SUMMED, means
  otherwise (equal-sized microbatches: a mean of means is the mean); MoE imbalance = max/mean of the
  averaged load (not the mean of the microbatches' ratios)."""
  out = {k: (v.sum(0) if k in _SUMMED else jax.tree.map(lambda a: a.mean(0), v)) for k, v in aux_m.items()}
  if "moe" in out:
    load_LxE = out["moe"]["load"]
    out["moe"]["imbalance"] = load_LxE.max(-1) / load_LxE.mean(-1)
  return out


def _batch_mesh(opts: StepOptions):
  """The abstract mesh of a batch-splitting residual sharding as the active mesh (else no mesh)."""
  if opts.residual_sharding is None:
    return contextlib.nullcontext()
  return jax.sharding.use_abstract_mesh(opts.residual_sharding.mesh.abstract_mesh)


def make_grad_fn(graphdef, model_cfg: ModelConfig, opts: StepOptions) -> Callable:
  """`(params, batch) -> (total_loss, aux, grads)` of the whole batch: the step's loss and gradients.

  Loss: mean over the batch's unmasked tokens of the next-token cross-entropy (circuits.losses), plus
  z_loss * mean lse^2, plus for MoE router_aux_loss_coef * lb_loss + router_z_loss_coef * router z-loss (each
  the mean over layers). With m microbatches the token means keep the whole batch's denominator (the sum of
  the microbatches' unnormalised sums, divided once), so loss, gradients and update equal m = 1's up to float
  rounding; the MoE router losses are the mean over microbatches of each microbatch's value (as MaxText
  does; lb_loss is not linear in the tokens, so for m > 1 it is not the whole batch's lb_loss).
  """
  m = int(opts.microbatches)

  def loss_fn(params, batch, denom):
    model = nnx.merge(graphdef, params)
    kw = {}
    if opts.segment_mask:
      kw = dict(segment_ids_BxT=batch["segment_ids_BxT"], positions_BxT=batch["positions_BxT"])
    kw.update(remat=opts.remat, residual_sharding=opts.residual_sharding, scan_layers=opts.scan_layers)
    capture = Capture(stats=opts.diagnostics, hidden_only=bool(opts.loss_chunk))
    targets_BxT = batch["targets_BxT"]
    with _batch_mesh(opts):  # MoE routes each device's tokens locally under it (circuits.models.moe)
      out = model(batch["tokens_BxT"], capture, **kw)
    if opts.loss_chunk:
      nll_BxT, lse_BxT = losses.cross_entropy(targets_BxT, hidden_BxTxD=out.hidden_BxTxD,
                                              unembed_DxV=params["unembed"], chunk=opts.loss_chunk)
    else:
      nll_BxT, lse_BxT = losses.cross_entropy(targets_BxT, out.logits_BxTxV)
    mask_BxT = batch["loss_mask_BxT"]
    ce = jnp.sum(nll_BxT * mask_BxT) / denom
    zl = jnp.sum(jnp.square(lse_BxT) * mask_BxT) / denom
    total = ce + opts.z_loss * zl if opts.z_loss else ce
    aux: dict[str, Any] = {"loss": ce, "z_loss": zl, "tokens": mask_BxT.sum()}
    if out.moe is not None:
      lb, rz = out.moe["lb_loss_L"].mean(), out.moe["z_loss_L"].mean()
      router = model_cfg.router_aux_loss_coef * lb + model_cfg.router_z_loss_coef * rz
      total = total + (router / m if m > 1 else router)  # summed over microbatches: their mean
      aux["moe"] = {"load": out.moe["load_LxE"], "imbalance": out.moe["imbalance_L"],
                    "router_entropy": out.moe["router_entropy_L"], "lb_loss": out.moe["lb_loss_L"],
                    "z_loss": out.moe["z_loss_L"]}
    if opts.diagnostics:
      aux["attn"] = dict(out.attn_stats)
    aux["loss_total"] = total
    return total, jax.lax.stop_gradient(aux)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def loss_and_grads(params, batch):
    """(total, aux, grads) of the whole batch; with m > 1 a lax.scan over microbatches sums the grads."""
    denom = jnp.maximum(batch["loss_mask_BxT"].sum(), 1.0)
    if m == 1:
      (total, aux), grads = grad_fn(params, batch, denom)
      return total, aux, grads

    def body(acc, mb):
      (_, aux), g = grad_fn(params, mb, denom)
      return jax.tree.map(jnp.add, acc, g), aux

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, aux_m = jax.lax.scan(body, zeros, split_microbatches(batch, m))
    aux = combine_microbatch_aux(aux_m)
    return aux["loss_total"], aux, grads

  return loss_and_grads


def make_step(graphdef, model_cfg: ModelConfig, tx, schedule: optax.Schedule, opts: StepOptions) -> Callable:
  """The pure train step `(state, batch, probe) -> (state, metrics)` (jit it with shardings); loss and
  gradients from `make_grad_fn`, one optimizer update per step whatever train.microbatches is."""
  loss_and_grads = make_grad_fn(graphdef, model_cfg, opts)

  def run_probe(params, probe):
    model = nnx.merge(graphdef, params)
    tokens_NxT = probe["tokens_NxT"]
    n, t = tokens_NxT.shape
    # captures only: the last layer at the query row, no last MLP and no unembedding (the probe needs no logits)
    out = model(tokens_NxT, Capture(query_pos_B=jnp.full((n,), t - 1, jnp.int32), capture_only=True))
    sel = diagnostics.selectivity(out.rows_BxLxHxS, probe["ab_N"], probe["baseline_P"], t - 1)
    res = {k: sel[k] for k in PROBE_SEL}
    res.update(diagnostics.participation_ratio(out.z_BxLxHxK))
    return res

  def step(state, batch, probe):
    params, opt_state = state["params"], state["opt_state"]
    total, aux, grads = loss_and_grads(params, batch)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    n_skipped = state["n_skipped"]
    if opts.nan_policy == "skip":
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      new_params, new_opt = keep(new_params, params), keep(new_opt, opt_state)
      n_skipped = n_skipped + (~finite).astype(jnp.int32)
    metrics = dict(aux, grad_norm=grad_norm, lr=schedule(state["step"]), finite=finite, n_skipped=n_skipped)
    if opts.probe_every:
      ran = state["step"] % opts.probe_every == 0
      shapes = jax.eval_shape(run_probe, params, probe)
      nan = lambda p, b: jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)
      metrics["probe"] = jax.lax.cond(ran, run_probe, nan, params, probe)
      metrics["probe_ran"] = ran
    new_state = dict(params=new_params, opt_state=new_opt, step=state["step"] + 1, rng=state["rng"],
                     n_skipped=n_skipped)
    return new_state, metrics

  return step
