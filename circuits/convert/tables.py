"""Declarative key tables: our parameter path <- Hugging Face FILE key, plus one named transform.

Legend: D d_model, H heads, G kv heads, K head_dim, F mlp/expert width, E experts, V vocab.
Paths use `{layer}` and `{expert}` placeholders. A torch `nn.Linear` weight is stored [out, in]; ours are
[in, out]. Every transform also states the HF shape it expects, given our parameter's shape, so a
mis-shaped tensor is reported as "expected vs found" before anything is reshaped.

An entry with several (key, transform) alternatives takes the first whose key is in the checkpoint
(OLMoE experts: per-expert `mlp.experts.{expert}.gate_proj.weight` or fused `mlp.experts.gate_up_proj`).
A key containing `{expert}` is read once per expert and the results are stacked on a leading E axis.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

Shape = tuple


@dataclasses.dataclass(frozen=True)
class Transform:
  """HF tensor -> our parameter. `hf_shape(ours)` is the HF shape expected for our shape `ours`."""
  name: str
  doc: str
  fn: Callable[[np.ndarray, Shape], np.ndarray]
  hf_shape: Callable[[Shape], Shape]


IDENTITY = Transform("identity", "same layout", lambda x, s: x, lambda s: tuple(s))
LINEAR = Transform("linear", "torch Linear weight [out, in] -> [in, out]", lambda x, s: x.T,
                   lambda s: (s[1], s[0]))
NEOX_QKV = Transform(
    "neox_qkv", "NeoX fused QKV weight [H*3*K, D] is (heads, 3, head_dim) on its out axis -> [D, H, 3, K]",
    lambda x, s: x.reshape(s[1], 3, s[3], s[0]).transpose(3, 0, 1, 2), lambda s: (s[1] * 3 * s[3], s[0]))
NEOX_QKV_BIAS = Transform("neox_qkv_bias", "NeoX fused QKV bias [H*3*K] -> [H, 3, K]",
                          lambda x, s: x.reshape(s), lambda s: (s[0] * 3 * s[2],))
HEADS_IN = Transform("heads_in", "q/k/v Linear [H*K, D] -> [D, H, K] (heads split on the out axis)",
                     lambda x, s: x.reshape(s[1], s[2], s[0]).transpose(2, 0, 1),
                     lambda s: (s[1] * s[2], s[0]))
HEADS_OUT = Transform("heads_out", "o Linear [D, H*K] -> [H, K, D] (heads split on the in axis)",
                      lambda x, s: x.T.reshape(s), lambda s: (s[2], s[0] * s[1]))
EXPERT_LINEAR = Transform("expert_linear", "one expert's Linear [out, in] -> [in, out] (stacked to [E, in, out])",
                          lambda x, s: x.T, lambda s: (s[2], s[1]))
FUSED_GATE = Transform("fused_gate", "fused experts.gate_up_proj [E, 2F, D]: first F rows are gate -> [E, D, F]",
                       lambda x, s: x[:, :s[2]].transpose(0, 2, 1), lambda s: (s[0], 2 * s[2], s[1]))
FUSED_UP = Transform("fused_up", "fused experts.gate_up_proj [E, 2F, D]: last F rows are up -> [E, D, F]",
                     lambda x, s: x[:, s[2]:].transpose(0, 2, 1), lambda s: (s[0], 2 * s[2], s[1]))
FUSED_DOWN = Transform("fused_down", "fused experts.down_proj [E, D, F] -> [E, F, D]",
                       lambda x, s: x.transpose(0, 2, 1), lambda s: (s[0], s[2], s[1]))

# our path -> [(HF key template, transform), ...alternatives]
Table = dict[str, list[tuple[str, Transform]]]


def _one(key, t):
  return [(key, t)]


_NEOX_L = "gpt_neox.layers.{layer}."
NEOX: Table = {
    "embed.embedding": _one("gpt_neox.embed_in.weight", IDENTITY),
    "unembed": _one("embed_out.weight", LINEAR),
    "final_norm.scale": _one("gpt_neox.final_layer_norm.weight", IDENTITY),
    "final_norm.bias": _one("gpt_neox.final_layer_norm.bias", IDENTITY),
    "blocks.{layer}.ln1.scale": _one(_NEOX_L + "input_layernorm.weight", IDENTITY),
    "blocks.{layer}.ln1.bias": _one(_NEOX_L + "input_layernorm.bias", IDENTITY),
    "blocks.{layer}.ln2.scale": _one(_NEOX_L + "post_attention_layernorm.weight", IDENTITY),
    "blocks.{layer}.ln2.bias": _one(_NEOX_L + "post_attention_layernorm.bias", IDENTITY),
    "blocks.{layer}.attn.qkv": _one(_NEOX_L + "attention.query_key_value.weight", NEOX_QKV),
    "blocks.{layer}.attn.qkv_bias": _one(_NEOX_L + "attention.query_key_value.bias", NEOX_QKV_BIAS),
    "blocks.{layer}.attn.o": _one(_NEOX_L + "attention.dense.weight", HEADS_OUT),
    "blocks.{layer}.attn.o_bias": _one(_NEOX_L + "attention.dense.bias", IDENTITY),
    "blocks.{layer}.mlp.up.kernel": _one(_NEOX_L + "mlp.dense_h_to_4h.weight", LINEAR),
    "blocks.{layer}.mlp.up.bias": _one(_NEOX_L + "mlp.dense_h_to_4h.bias", IDENTITY),
    "blocks.{layer}.mlp.down.kernel": _one(_NEOX_L + "mlp.dense_4h_to_h.weight", LINEAR),
    "blocks.{layer}.mlp.down.bias": _one(_NEOX_L + "mlp.dense_4h_to_h.bias", IDENTITY),
}

_L = "model.layers.{layer}."
_OLMO_ATTN: Table = {
    "embed.embedding": _one("model.embed_tokens.weight", IDENTITY),
    "unembed": _one("lm_head.weight", LINEAR),
    "blocks.{layer}.attn.q": _one(_L + "self_attn.q_proj.weight", HEADS_IN),
    "blocks.{layer}.attn.k": _one(_L + "self_attn.k_proj.weight", HEADS_IN),
    "blocks.{layer}.attn.v": _one(_L + "self_attn.v_proj.weight", HEADS_IN),
    "blocks.{layer}.attn.o": _one(_L + "self_attn.o_proj.weight", HEADS_OUT),
}
OLMO: Table = {
    **_OLMO_ATTN,
    "blocks.{layer}.mlp.gate.kernel": _one(_L + "mlp.gate_proj.weight", LINEAR),
    "blocks.{layer}.mlp.up.kernel": _one(_L + "mlp.up_proj.weight", LINEAR),
    "blocks.{layer}.mlp.down.kernel": _one(_L + "mlp.down_proj.weight", LINEAR),
}
_E = _L + "mlp.experts."
OLMOE: Table = {
    **_OLMO_ATTN,
    "final_norm.scale": _one("model.norm.weight", IDENTITY),
    "blocks.{layer}.ln1.scale": _one(_L + "input_layernorm.weight", IDENTITY),
    "blocks.{layer}.ln2.scale": _one(_L + "post_attention_layernorm.weight", IDENTITY),
    "blocks.{layer}.attn.q_norm.scale": _one(_L + "self_attn.q_norm.weight", IDENTITY),
    "blocks.{layer}.attn.k_norm.scale": _one(_L + "self_attn.k_norm.weight", IDENTITY),
    "blocks.{layer}.moe.router": _one(_L + "mlp.gate.weight", LINEAR),
    "blocks.{layer}.moe.gate": [(_E + "{expert}.gate_proj.weight", EXPERT_LINEAR), (_E + "gate_up_proj", FUSED_GATE)],
    "blocks.{layer}.moe.up": [(_E + "{expert}.up_proj.weight", EXPERT_LINEAR), (_E + "gate_up_proj", FUSED_UP)],
    "blocks.{layer}.moe.down": [(_E + "{expert}.down_proj.weight", EXPERT_LINEAR), (_E + "down_proj", FUSED_DOWN)],
}

TABLES = {"gpt_neox": NEOX, "olmo": OLMO, "olmoe": OLMOE}

# Buffers some exports carry that are not parameters (derived from the config): skipped, never converted.
SKIP_PATTERNS = [re.compile(p) for p in (
    r"(^|\.)rotary_emb\.inv_freq$", r"(^|\.)inv_freq$", r"\.attention\.bias$", r"\.attention\.masked_bias$",
    r"\.rotary_emb\.(cos|sin)_cached$")]


def is_skipped(key: str) -> bool:
  return any(p.search(key) for p in SKIP_PATTERNS)
