"""Rematerialisation policies for the decoder blocks (`LM.__call__(remat=...)`, `train.remat`).

Each block call is wrapped in `nnx.remat(policy=...)`: the backward pass recomputes what the policy does not
save. Names are MaxText's (`remat_policy`, src/maxtext/layers/nnx_decoders.py); the tags are
`jax.ad_checkpoint.checkpoint_name` calls in circuits/models/attention.py, layers.py and moe.py:
  query_proj, key_proj, value_proj  q, k, v projections (OLMo/OLMoE; after bias, before QK-norm and rotary)
  qkv_proj                          Pythia's fused [q, k, v] projection (after bias)
  out_proj                          the attention output projection (after bias)
  mlpwi (Pythia up, after bias), mlpwi_0 / mlpwi_1 (SwiGLU and expert gate / up), mlpwo (MLP output)

  none                 no remat: every intermediate of every block is kept for the backward pass
  full                 nothing inside a block is kept (only its inputs): the whole block is recomputed
  dots                 jax's dots_with_no_batch_dims_saveable: keep the projection and MLP matmul outputs,
                       recompute the attention einsums, softmax, norms and activations
  minimal              keep the named projections and MLP matmuls (MaxText's `minimal`)
  save_dot_except_mlp  keep the attention projections only (MaxText's `save_dot_except_mlp`)

Not used: `jax.checkpoint_policies.save_anything_except_these_names` always saves everything (jax 0.10.2).
"""

from __future__ import annotations

import jax

_CP = jax.checkpoint_policies
_ATTN = ("query_proj", "key_proj", "value_proj", "qkv_proj", "out_proj")
_MLP = ("mlpwi", "mlpwi_0", "mlpwi_1", "mlpwo")

POLICIES = {
    "none": None,
    "full": _CP.nothing_saveable,
    "dots": _CP.dots_with_no_batch_dims_saveable,
    "minimal": _CP.save_only_these_names(*_ATTN, *_MLP),
    "save_dot_except_mlp": _CP.save_only_these_names(*_ATTN),
}


def policy(name: str):
  """The jax.checkpoint policy of `name` (None for "none", meaning: no remat at all)."""
  if name not in POLICIES:
    raise ValueError(f"remat: unknown policy {name!r}; one of {tuple(POLICIES)}")
  return POLICIES[name]
