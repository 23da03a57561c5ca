"""The decoder shell every family shares: embed -> blocks -> final norm -> untied unembedding.

Legend: B batch, T length, D d_model, V vocab, L layers, H heads, K head_dim, S keys, E experts.
A family supplies its block (how attention and MLP are composed) and its norm.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from circuits.models import layers as L
from circuits.models import remat as remat_lib
from circuits.models.attention import Capture
from circuits.models.config import ModelConfig


@struct.dataclass
class ModelOutput:
  logits_BxTxV: jax.Array | None  # None for capture_only calls
  attn_stats: dict | None = None  # name -> [L, H] (circuits.diagnostics.ATTN_REDUCTIONS)
  rows_BxLxHxS: jax.Array | None = None  # attention rows at query_pos_B
  z_BxLxHxK: jax.Array | None = None  # pre-output-projection vectors at query_pos_B
  moe: dict | None = None  # load_LxE, imbalance_L, router_entropy_L, lb_loss_L, z_loss_L, topk_idx_LxNxK
  pattern_sums_BxLxPxH: jax.Array | None = None  # attention mass on given key patterns, per example
  extremes: dict | None = None  # resid_absmax_L, resid_absmedian_L, v_norm_first_LxG, v_norm_mean_LxG
  hidden_BxTxD: jax.Array | None = None  # final-normed hidden states (hidden_only calls; logits = hidden @ unembed)


def _stack(dicts: list[dict]) -> dict:
  return {k: jnp.stack([d[k] for d in dicts]) for k in dicts[0]}


class LM(nnx.Module):
  """Decoder LM. `block_fn(cfg, rngs)` builds one block; `norm_fn(cfg)` builds a norm."""

  def __init__(self, cfg: ModelConfig, block_fn: Callable, norm_fn: Callable, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = L.Embed(cfg.vocab_size, cfg.d_model, std=cfg.init_std, rngs=rngs, dtype=cfg.param_dtype)
    self.blocks = nnx.List([block_fn(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = norm_fn(cfg)
    self.unembed = L.param(rngs, (cfg.d_model, cfg.vocab_size), (L.EMBED, L.VOCAB), std=cfg.init_std,
                           dtype=cfg.param_dtype)

  def _scan_blocks(self, x_BxTxD, positions_BxT, segment_ids_BxT, capture: Capture, attention_impl, remat: str,
                   constrain):
    """The blocks as one lax.scan over their stacked states: (x_BxTxD, attn_aux list, moe_aux list)."""
    if (capture.query_pos_B is not None or capture.patterns_BxPxTxS is not None or capture.extremes
        or capture.head_scale_LxH is not None or capture.replace_mask_LxH is not None):
      raise ValueError("scan_layers: the scanned blocks take no per-layer captures or ablations (query rows, "
                       "patterns, extremes, head_scale/replace); call without scan_layers for those")
    graphdef, _ = nnx.split(self.blocks[0])  # every block of a family has the same structure
    states = [nnx.split(b)[1] for b in self.blocks]
    stacked_L = jax.tree.map(lambda *a: jnp.stack(a), *states)
    probe = capture.layer(0, attention_impl)  # no per-layer arrays (checked above): the same for every layer

    def body(x, state):
      x, a_aux, m_aux = nnx.merge(graphdef, state)(x, positions_BxT, segment_ids_BxT, probe)
      return constrain(x), (a_aux, m_aux)

    if remat != "none":
      body = jax.checkpoint(body, policy=remat_lib.policy(remat), prevent_cse=False)  # scan: no CSE to fear
    x_BxTxD, (a_L, m_L) = jax.lax.scan(body, x_BxTxD, stacked_L)
    unstack = lambda t: [jax.tree.map(lambda a: a[i], t) for i in range(self.cfg.n_layers)]
    return x_BxTxD, unstack(a_L), ([] if m_L is None else unstack(m_L))

  def __call__(self, tokens_BxT, capture: Capture = Capture(), *, positions_BxT=None, segment_ids_BxT=None,
               remat: str = "none", residual_sharding=None, attention_impl: str | None = None,
               scan_layers: bool = False) -> ModelOutput:
    """Logits, and what `capture` asks for: per-head statistics, query-row captures, head ablations, ...

    capture: a `circuits.models.attention.Capture` (what the call captures or changes; see its docstring).
    segment_ids_BxT: when given, attention is masked between packed documents (positions should then
    restart per document).
    remat: a circuits.models.remat policy name; each block call is wrapped in nnx.remat with it ("none": not).
    residual_sharding: a sharding of the [B, T, D] residual stream (the trainer's: batch over the data axes),
    imposed after the embedding and after every block; without it GSPMD may replicate activations across
    the fsdp axis to contract with fsdp-sharded weights (measured: 4x the per-device temp at 1B).
    attention_impl: override model.attention_impl for this call (calls with query_pos_B or patterns always
    use the exact attention: they read its weights).
    scan_layers: run the blocks as one `lax.scan` over their stacked parameters (the remat policy around the
    scan body) instead of unrolled: the program holds one block, compiles once, and its backward pass is a
    loop in which each layer's recomputation and parameter-gradient reduction happen in that layer's
    iteration (unrolled on a sharded mesh, XLA:CPU combined every layer's gradient all-reduce into one after the
    backward, deferring every layer's weight-gradient matmuls and keeping their inputs alive: Pythia-1B 21.6 GiB
    against 4.3 GiB scanned; the 1B configs scan). The same math within float rounding;
    captures with per-layer arrays, query rows, patterns or extremes need the unrolled path.
    """
    cfg = self.cfg
    if not isinstance(capture, Capture):
      raise TypeError(f"capture must be a circuits.models.Capture (got {type(capture).__name__}); e.g. "
                      "model(tokens_BxT, Capture(stats=True, query_pos_B=q_B))")
    capture.validate(cfg.n_layers)
    b, t = tokens_BxT.shape
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    constrain = lambda x: x if residual_sharding is None else jax.lax.with_sharding_constraint(x, residual_sharding)
    x_BxTxD = constrain(self.embed(tokens_BxT, jnp.dtype(cfg.dtype)))
    attn_aux, moe_aux, ext = [], [], []
    policy = remat_lib.policy(remat)
    if scan_layers:
      x_BxTxD, attn_aux, moe_aux = self._scan_blocks(x_BxTxD, positions_BxT, segment_ids_BxT, capture,
                                                     attention_impl, remat, constrain)
    for i, block in enumerate(() if scan_layers else self.blocks):
      probe = capture.layer(i, attention_impl)
      if capture.capture_only and i == cfg.n_layers - 1:  # every family's block opens with attn(ln1(x))
        _, a_aux = block.attn(block.ln1(x_BxTxD), positions_BxT, segment_ids_BxT,
                              dataclasses.replace(probe, query_rows_only=True))
        attn_aux.append(a_aux)
        break
      call = lambda blk, x: blk(x, positions_BxT, segment_ids_BxT, probe)  # called at once: this probe
      if remat != "none":  # nnx.remat refuses bound methods: the block is an argument
        call = nnx.remat(call, policy=policy)
      x_BxTxD, a_aux, m_aux = call(block, x_BxTxD)
      x_BxTxD = constrain(x_BxTxD)
      attn_aux.append(a_aux)
      if m_aux is not None:
        moe_aux.append(m_aux)
      if capture.extremes:
        ax = jnp.abs(x_BxTxD.astype(jnp.float32))
        ext.append({"resid_absmax_L": ax.max(), "resid_absmedian_L": jnp.median(ax),
                    "v_norm_first_LxG": a_aux["v_norm_first_G"], "v_norm_mean_LxG": a_aux["v_norm_mean_G"]})
    out: dict[str, Any] = {"logits_BxTxV": None}
    if capture.hidden_only:
      out["hidden_BxTxD"] = self.final_norm(x_BxTxD)
    elif not capture.capture_only:
      logits_BxTxV = self.final_norm(x_BxTxD) @ self.unembed[...].astype(x_BxTxD.dtype)
      out["logits_BxTxV"] = logits_BxTxV.astype(jnp.float32)
    if capture.stats:
      out["attn_stats"] = _stack([a["stats"] for a in attn_aux])
    if capture.query_pos_B is not None:
      out["rows_BxLxHxS"] = jnp.stack([a["rows_BxHxS"] for a in attn_aux], axis=1)
      out["z_BxLxHxK"] = jnp.stack([a["z_BxHxK"] for a in attn_aux], axis=1)
    if capture.patterns_BxPxTxS is not None:
      out["pattern_sums_BxLxPxH"] = jnp.stack([a["pattern_sums_BxPxH"] for a in attn_aux], axis=1)
    if moe_aux:
      m = _stack(moe_aux)
      out["moe"] = {"load_LxE": m["load"], "imbalance_L": m["imbalance"],
                    "router_entropy_L": m["router_entropy"], "lb_loss_L": m["lb_loss"],
                    "z_loss_L": m["z_loss"], "topk_idx_LxNxK": m["topk_idx_NxK"]}
    if capture.extremes:
      out["extremes"] = _stack(ext)
    return ModelOutput(**out)
