"""ModelConfig: the one description of a model, shared by the three families.

Fields follow the Hugging Face `config.json` facts of METHODS.md. Unknown fields and inconsistent sizes
raise `ConfigError` naming the field, before anything is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping
from circuits.errors import CircuitsError

FAMILIES = ("pythia", "olmo", "olmoe")
ATTENTION_KINDS = ("softmax", "softmax1", "sink_logit", "gated", "sigmoid")
MOE_IMPLS = ("ragged", "gmm", "dense")
# How attention is computed (the math is the same; circuits.models.attention): "exact" materialises the
# [B, H, T, S] weights (discovery, captures, parity); "blockwise" is the pure-jnp online softmax (every backend,
# no [T, S] array kept for the backward pass); "splash" the TPU Pallas kernel; "cudnn" the GPU cuDNN kernel;
# "auto" picks splash on TPU, cudnn on GPU where it supports the variant and dtype, else blockwise.
ATTENTION_IMPLS = ("exact", "blockwise", "splash", "cudnn", "auto")
# Variants each impl supports (sigmoid has no normaliser: no fused kernel computes it).
IMPL_KINDS = {"exact": ATTENTION_KINDS, "blockwise": ATTENTION_KINDS, "auto": ATTENTION_KINDS,
              "splash": ("softmax", "gated", "softmax1", "sink_logit"), "cudnn": ("softmax", "gated")}
# Fields that change how, not what, the model computes (a resumed run may switch them).
IMPL_FIELDS = ("attention_impl", "attention_block")


class ConfigError(CircuitsError, ValueError):
  """A config field is unknown, missing or inconsistent; the message names it."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  family: str = "pythia"
  vocab_size: int = 50304
  d_model: int = 2048
  n_layers: int = 16
  n_heads: int = 8
  n_kv_heads: int = 0  # 0 -> n_heads (multi-head attention)
  head_dim: int = 0  # 0 -> d_model // n_heads
  d_ff: int = 8192  # dense MLP width; for MoE, each expert's width
  rotary_pct: float = 1.0  # fraction of head_dim that is rotated (Pythia: 0.25)
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  clip_qkv: float | None = None  # OLMo: clamp q, k, v to [-clip, clip]
  parallel_residual: bool = False  # Pythia: x + attn(ln1(x)) + mlp(ln2(x))
  qkv_bias: bool = False  # Pythia: biases on qkv and every linear
  # MoE (OLMoE)
  n_experts: int = 0
  top_k: int = 0
  norm_topk_prob: bool = False  # OLMoE: the selected gates are NOT renormalised
  router_aux_loss_coef: float = 0.01  # load-balancing loss coefficient
  router_z_loss_coef: float = 0.001
  moe_impl: str = "ragged"  # "ragged" (sort + ragged_dot), "gmm" (sort + megablox) or "dense" (circuits.models.moe)
  # attention variant (sink mitigations); "softmax" is the parity-tested default
  attention: str = "softmax"
  attention_impl: str = "exact"  # ATTENTION_IMPLS; captures, pattern sums and query-row calls always use exact
  attention_block: int = 512  # blockwise: query/key block length
  # layout of the attention projections (None: the family's: Pythia fused per-head [q, k, v]; OLMoE QK-norm)
  fused_qkv: bool | None = None
  qk_norm: bool | None = None  # RMSNorm over the full q and k projection widths, before rotary
  # init (for models we train); converted checkpoints overwrite every parameter
  init_std: float = 0.02
  qk_init_std: float = 0.02
  # numerics: activations dtype; attention logits/softmax and norms are always fp32
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def hd(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def rotary_dim(self) -> int:
    return int(self.hd * self.rotary_pct)

  @property
  def is_moe(self) -> bool:
    return self.n_experts > 0

  def __post_init__(self):
    def bad(field, why):
      raise ConfigError(f"model.{field}: {why} (got {getattr(self, field)!r})")

    if self.fused_qkv is None:  # frozen: resolve the family defaults in place
      object.__setattr__(self, "fused_qkv", self.family == "pythia")
    if self.qk_norm is None:
      object.__setattr__(self, "qk_norm", self.family == "olmoe")

    if self.family not in FAMILIES:
      bad("family", f"must be one of {FAMILIES}")
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
      if int(getattr(self, f)) <= 0:
        bad(f, "must be a positive integer")
    if not self.head_dim and self.d_model % self.n_heads:
      bad("d_model", f"must be divisible by n_heads={self.n_heads} (or set head_dim)")
    if self.n_heads % self.kv_heads:
      bad("n_kv_heads", f"must divide n_heads={self.n_heads}")
    if not 0.0 < self.rotary_pct <= 1.0:
      bad("rotary_pct", "must be in (0, 1]")
    if self.rotary_dim % 2:
      bad("rotary_pct", f"rotary dims = int(head_dim*rotary_pct) = {self.rotary_dim} must be even")
    if self.attention not in ATTENTION_KINDS:
      bad("attention", f"must be one of {ATTENTION_KINDS}")
    if self.attention_impl not in ATTENTION_IMPLS:
      bad("attention_impl", f"must be one of {ATTENTION_IMPLS}")
    if self.attention not in IMPL_KINDS[self.attention_impl]:
      ok = [i for i, kinds in IMPL_KINDS.items() if self.attention in kinds and i != "auto"]
      bad("attention_impl", f"{self.attention_impl!r} does not support attention={self.attention!r}; "
          f"use one of {ok}")
    if int(self.attention_block) < 8 or int(self.attention_block) % 8:
      bad("attention_block", "must be a positive multiple of 8")
    if self.fused_qkv and self.kv_heads != self.n_heads:
      bad("fused_qkv", "the fused [q, k, v] layout needs n_kv_heads == n_heads")
    if self.moe_impl not in MOE_IMPLS:
      bad("moe_impl", f"must be one of {MOE_IMPLS}")
    if self.family == "olmoe" and not self.is_moe:
      bad("n_experts", "the olmoe family needs n_experts > 0")
    if self.family != "olmoe" and self.is_moe:
      bad("n_experts", f"family {self.family!r} has no experts; use family='olmoe'")
    if self.is_moe and not 0 < self.top_k <= self.n_experts:
      bad("top_k", f"must be in [1, n_experts={self.n_experts}]")
    if self.clip_qkv is not None and self.clip_qkv <= 0:
      bad("clip_qkv", "must be positive or None")
    for f in ("dtype", "param_dtype"):
      if getattr(self, f) not in ("float32", "bfloat16", "float16", "float64"):
        bad(f, "must be float32, bfloat16, float16 or float64")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ConfigError(f"model: unknown field(s) {unknown}; known fields: {sorted(names)}")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **kw) -> "ModelConfig":
    return ModelConfig.from_dict({**self.to_dict(), **kw})
