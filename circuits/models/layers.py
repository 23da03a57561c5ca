"""Shared layers: parameters with logical axes, norms, rotary, MLPs, embeddings.

Legend: B batch, T query length, S key length, D d_model, H heads, G kv heads, K head_dim, F mlp width,
E experts, V vocab, L layers.

Logical axis names (the only place they are declared; circuits/train/sharding.py maps them to mesh axes):
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

# Logical axis names used by every parameter.
EMBED, VOCAB, HEADS, KV_HEADS, HEAD_DIM, MLP, EXPERT, QKV = (
    "embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "expert", "qkv")
LOGICAL_AXES = (EMBED, VOCAB, HEADS, KV_HEADS, HEAD_DIM, MLP, EXPERT, QKV)


def dtype_of(name: str):
  return jnp.dtype(name)


def param(rngs: nnx.Rngs | None, shape, axes, *, std: float | None = None, fill: float | None = None,
          dtype="float32") -> nnx.Param:
  """A parameter with logical-axis metadata: normal(std) if `std` is given, else constant `fill`."""
  assert len(shape) == len(axes), (shape, axes)
  if std is not None:
    value = std * jax.random.normal(rngs.params(), shape, dtype_of(dtype))
  else:
    value = jnp.full(shape, fill, dtype_of(dtype))
  return nnx.Param(value, out_sharding=tuple(axes))


# The normalisations with an analytic backward (jax.custom_vjp). The forward is the plain two-pass form
# (parity-tested against Hugging Face); the backward is the closed form below. Autodiff of the two-pass form
# makes XLA:CPU fuse the residual-stream gradient sum with repeated recomputation of the norm's terms: at the
# laptop study's sizes that fusion took ~40% of an OLMo step (231 -> 131 ms per step once replaced).
# tests/test_layers.py checks both gradients against autodiff of the same formula in float64.


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def standardize(x, eps: float):
  """(x - mean) / sqrt(var + eps) over the last axis (var: mean squared deviation, two-pass)."""
  return _standardize_fwd(x, eps)[0]


def _standardize_fwd(x, eps):
  xc = x - x.mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + eps)
  y = xc * rstd
  return y, (y, rstd)


def _standardize_bwd(eps, res, g):
  del eps
  y, rstd = res  # dx = rstd * (g - mean(g) - y * mean(g * y))
  return rstd * (g - g.mean(-1, keepdims=True) - y * (g * y).mean(-1, keepdims=True)),


standardize.defvjp(_standardize_fwd, _standardize_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def rms_normalize(x, eps: float):
  """x / sqrt(mean(x^2) + eps) over the last axis."""
  return _rms_fwd(x, eps)[0]


def _rms_fwd(x, eps):
  rstd = jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps)
  y = x * rstd
  return y, (y, rstd)


def _rms_bwd(eps, res, g):
  del eps
  y, rstd = res  # dx = rstd * (g - y * mean(g * y))
  return rstd * (g - y * (g * y).mean(-1, keepdims=True)),


rms_normalize.defvjp(_rms_fwd, _rms_bwd)


class LayerNorm(nnx.Module):
  """LayerNorm in fp32; `affine=False` is OLMo's parameter-free norm."""

  def __init__(self, d: int, eps: float, affine: bool, dtype="float32"):
    self.eps, self.affine = eps, affine
    if affine:
      self.scale = param(None, (d,), (EMBED,), fill=1.0, dtype=dtype)
      self.bias = param(None, (d,), (EMBED,), fill=0.0, dtype=dtype)

  def __call__(self, x_BxTxD):
    y = standardize(x_BxTxD.astype(jnp.float32), self.eps)
    if self.affine:
      y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x_BxTxD.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm in fp32 with a weight (OLMoE; also its full-width QK-norm)."""

  def __init__(self, d: int, eps: float, axis_name=EMBED, dtype="float32"):
    self.eps = eps
    self.scale = param(None, (d,), (axis_name,), fill=1.0, dtype=dtype)

  def __call__(self, x):
    y = rms_normalize(x.astype(jnp.float32), self.eps)
    return (self.scale[...].astype(jnp.float32) * y).astype(x.dtype)


def rotary(x_BxTxHxK, positions_BxT, rotary_dim: int, theta: float):
  """Rotate-half rotary embedding on the first `rotary_dim` dims of each head (GPT-NeoX convention)."""
  inv_freq_R = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  angle_BxTxR = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_R
  angle_BxTx1xK = jnp.concatenate([angle_BxTxR, angle_BxTxR], -1)[:, :, None, :]
  cos, sin = jnp.cos(angle_BxTx1xK), jnp.sin(angle_BxTx1xK)
  x_rot, x_pass = x_BxTxHxK[..., :rotary_dim], x_BxTxHxK[..., rotary_dim:]
  x1, x2 = jnp.split(x_rot.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], -1)
  out = (x_rot.astype(jnp.float32) * cos + rotated * sin).astype(x_BxTxHxK.dtype)
  return jnp.concatenate([out, x_pass], -1)


class Dense(nnx.Module):
  """y = x @ W (+ b) over the last axis."""

  def __init__(self, d_in, d_out, axes, *, bias: bool, std: float, rngs: nnx.Rngs, dtype="float32"):
    self.kernel = param(rngs, (d_in, d_out), axes, std=std, dtype=dtype)
    self.bias = param(None, (d_out,), axes[1:], fill=0.0, dtype=dtype) if bias else None

  def __call__(self, x):
    y = x @ self.kernel[...].astype(x.dtype)
    return y + self.bias[...].astype(x.dtype) if self.bias is not None else y


class GeluMLP(nnx.Module):
  """Pythia MLP: exact (erf) GELU, biases."""

  def __init__(self, d, f, *, std, rngs, dtype="float32"):
    self.up = Dense(d, f, (EMBED, MLP), bias=True, std=std, rngs=rngs, dtype=dtype)
    self.down = Dense(f, d, (MLP, EMBED), bias=True, std=std, rngs=rngs, dtype=dtype)

  def __call__(self, x_BxTxD):  # checkpoint_name: remat tags (circuits/models/remat.py)
    h_BxTxF = checkpoint_name(self.up(x_BxTxD), "mlpwi")
    return checkpoint_name(self.down(jax.nn.gelu(h_BxTxF, approximate=False)), "mlpwo")


class SwiGLU(nnx.Module):
  """OLMo MLP: down(silu(gate(x)) * up(x)), no biases."""

  def __init__(self, d, f, *, std, rngs, dtype="float32"):
    self.gate = Dense(d, f, (EMBED, MLP), bias=False, std=std, rngs=rngs, dtype=dtype)
    self.up = Dense(d, f, (EMBED, MLP), bias=False, std=std, rngs=rngs, dtype=dtype)
    self.down = Dense(f, d, (MLP, EMBED), bias=False, std=std, rngs=rngs, dtype=dtype)

  def __call__(self, x_BxTxD):  # checkpoint_name: remat tags (circuits/models/remat.py)
    g_BxTxF, u_BxTxF = checkpoint_name(self.gate(x_BxTxD), "mlpwi_0"), checkpoint_name(self.up(x_BxTxD), "mlpwi_1")
    return checkpoint_name(self.down(jax.nn.silu(g_BxTxF) * u_BxTxF), "mlpwo")


class Embed(nnx.Module):
  def __init__(self, v, d, *, std, rngs, dtype="float32"):
    self.embedding = param(rngs, (v, d), (VOCAB, EMBED), std=std, dtype=dtype)

  def __call__(self, tokens_BxT, dtype):
    return jnp.take(self.embedding[...], tokens_BxT, axis=0).astype(dtype)


def batch_axes(b: int, who: str) -> tuple[str, ...]:
  """The active abstract mesh's batch axes of size > 1 (circuits.train.sharding.BATCH_AXES) when they split b
  evenly; () when no mesh is active or it does not split the batch (then no jax.shard_map is needed). Code
  that GSPMD cannot partition (per-device MoE routing, Pallas kernels) runs under shard_map over these."""
  from circuits.train.sharding import BATCH_AXES  # lazy: circuits.train imports the models

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  n = math.prod(mesh.shape[a] for a in axes)
  if n > 1 and b % n:
    raise ValueError(f"{who}: the batch of {b} rows does not split over the mesh's batch axes {axes} ({n} devices);"
                     f" use a batch size divisible by {n}")
  return axes
