"""Fused attention kernels (jax 0.10.2 public APIs), wired to `attention.Attention` by `model.attention_impl`.

Legend: B batch, T queries, S keys (T == S, causal), H heads, G kv heads, K head_dim.

  splash (TPU): `jax.experimental.pallas.ops.tpu.splash_attention.make_splash_mha` with a causal
    MultiHeadMask, called per example (vmap over B) as kernel(q[H,T,K], k[G,S,K], v[G,S,K], segment_ids,
    sinks[H]). GQA (H % G == 0), segment ids, and a per-head sink logit with its gradient: softmax1 = sinks
    of 0, sink_logit = the learned b_h. No scale argument: q is pre-scaled by 1/sqrt(K). Runs on CPU only in
    Pallas interpret mode (`interpret=True`; tests, slow). GSPMD cannot partition the kernel (a Mosaic custom
    call): under a mesh that splits the batch (the trainer's abstract mesh) it runs inside `jax.shard_map`
    over the batch axes, each device on its own rows (the sink logits replicated, their gradient summed).
  cudnn (GPU): `jax.nn.dot_product_attention(..., is_causal=True, implementation="cudnn")`. bf16/fp16 inputs
    only, head_dim <= 256 and a multiple of 8; no sink, softmax1 or sigmoid; segment masks go in as a
    [B, 1, T, S] bool mask (O(B T S) bools, not per head). cuDNN cannot run on CPU, and there is no
    interpret mode: it is covered by the GPU device check only.
Neither kernel returns fp32 statistics usable for the diagnostics (splash's lse has no gradient path,
cuDNN's public lse is cast to bf16), so the step's diagnostics come from `blockwise.attention_stats`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from circuits.models import layers as L
from circuits.models.config import IMPL_KINDS


class KernelUnavailable(RuntimeError):
  """The chosen attention kernel cannot run here (backend, dtype or variant); the message names the fix."""


def check_kind(impl: str, kind: str):
  if kind not in IMPL_KINDS[impl]:
    ok = [i for i, kinds in IMPL_KINDS.items() if kind in kinds and i != "auto"]
    raise KernelUnavailable(f"model.attention_impl={impl!r} does not support attention={kind!r}; use one of {ok}")


def resolve_impl(impl: str, kind: str, dtype) -> str:
  """The concrete impl of `impl` on this backend ("auto": splash on TPU, cudnn on GPU where the variant and
  dtype allow, else blockwise)."""
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend == "tpu" and kind in IMPL_KINDS["splash"]:
    return "splash"
  if backend == "gpu" and kind in IMPL_KINDS["cudnn"] and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "blockwise"


def splash_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, *, kind: str = "softmax", sink_logit_H=None,
                     segment_ids_BxT=None, block: int = 512, interpret: bool | None = None):
  """Causal attention through the TPU splash kernel: z_BxTxHxK (before any output gate).

  interpret None: native on TPU; elsewhere it refuses (pass interpret=True to run the Pallas interpreter on
  CPU, for tests). T must be a multiple of the block (min(block, T)), itself a multiple of 128 on TPU.
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel

  check_kind("splash", kind)
  if interpret is None:
    if jax.default_backend() != "tpu":
      raise KernelUnavailable(f"model.attention_impl='splash' needs a TPU (backend is {jax.default_backend()!r}); "
                              "use 'blockwise' (every backend) or 'auto'")
    interpret = False
  b, t, h, kd = q_BxTxHxK.shape
  blk = min(int(block), t)
  if t % blk:
    raise KernelUnavailable(f"splash attention: T={t} must be a multiple of the block {blk}; use 'blockwise'")
  mask = sa.MultiHeadMask([sa.CausalMask((t, t))] * h)
  sizes = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
                        block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
  kernel = sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
  sinks = None
  if kind == "softmax1":
    sinks = jnp.zeros((h,), jnp.float32)
  elif kind == "sink_logit":
    sinks = sink_logit_H.astype(jnp.float32)
  q = (q_BxTxHxK * (1.0 / math.sqrt(kd))).transpose(0, 2, 1, 3)  # [B,H,T,K], pre-scaled
  k = k_BxSxGxK.transpose(0, 2, 1, 3)
  v = v_BxSxGxK.transpose(0, 2, 1, 3)

  def rows(q, k, v, seg, sinks):  # [b, ...] rows on one device
    def one(q1, k1, v1, seg1):
      seg = None if seg1 is None else sa.SegmentIds(q=seg1, kv=seg1)
      return kernel(q1, k1, v1, segment_ids=seg, sinks=sinks)
    return jax.vmap(one, in_axes=(0, 0, 0, None if seg is None else 0))(q, k, v, seg)

  seg = None if segment_ids_BxT is None else segment_ids_BxT.astype(jnp.int32)
  axes = L.batch_axes(b, "splash attention")
  if axes:  # P() for the sinks: replicated in, their per-device gradients summed by shard_map's transpose
    rows = jax.shard_map(rows, in_specs=(P(axes),) * 4 + (P(),), out_specs=P(axes), axis_names=set(axes),
                         check_vma=False)
  z_BxHxTxK = rows(q, k, v, seg, sinks)
  return z_BxHxTxK.transpose(0, 2, 1, 3).astype(q_BxTxHxK.dtype)


def cudnn_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, *, kind: str = "softmax", segment_ids_BxT=None):
  """Causal attention through cuDNN flash attention (GPU only): z_BxTxHxK (before any output gate)."""
  check_kind("cudnn", kind)
  if jax.default_backend() != "gpu":
    raise KernelUnavailable(f"model.attention_impl='cudnn' needs an NVIDIA GPU (backend is "
                            f"{jax.default_backend()!r}); cuDNN has no CPU or interpret mode: use 'blockwise'")
  if jnp.dtype(q_BxTxHxK.dtype) not in (jnp.bfloat16, jnp.float16):
    raise KernelUnavailable(f"model.attention_impl='cudnn' needs model.dtype bfloat16 or float16 (got "
                            f"{q_BxTxHxK.dtype}; cuDNN flash attention has no fp32 path): set model.dtype or "
                            "use 'blockwise'")
  kd = q_BxTxHxK.shape[-1]
  mask = None
  if segment_ids_BxT is not None:
    mask = (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])[:, None]
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask=mask, scale=1.0 / math.sqrt(kd),
                                      is_causal=True, implementation="cudnn")
