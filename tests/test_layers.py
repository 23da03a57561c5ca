"""The norms' analytic backward (layers.standardize / rms_normalize) against autodiff and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from circuits.models import layers as L


def _plain_standardize(x, eps):  # the formula the parity tests pinned, differentiated by jax
  xc = x - x.mean(-1, keepdims=True)
  return xc * jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + eps)


def _plain_rms(x, eps):
  return x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps)


CASES = [(L.standardize, _plain_standardize), (L.rms_normalize, _plain_rms)]


def _inputs(dtype):
  rng = np.random.default_rng(0)
  x = rng.normal(0.3, 2.0, (3, 5, 16)).astype(dtype)  # nonzero mean, not unit scale
  w = rng.normal(size=(3, 5, 16)).astype(dtype)  # a random cotangent direction: loss = sum(w * y)
  return x, w


@pytest.mark.parametrize("fn,plain", CASES, ids=["standardize", "rms"])
def test_forward_bit_identical_float32(fn, plain):
  x, _ = _inputs(np.float32)
  np.testing.assert_array_equal(np.asarray(jax.jit(fn, static_argnums=1)(x, 1e-5)),
                                np.asarray(jax.jit(plain, static_argnums=1)(x, 1e-5)))


@pytest.mark.parametrize("fn,plain", CASES, ids=["standardize", "rms"])
def test_gradient_matches_autodiff_and_finite_differences_float64(fn, plain):
  with enable_x64():
    x, w = _inputs(np.float64)
    loss = lambda f: (lambda x: jnp.sum(jnp.asarray(w) * f(x, 1e-5)))
    g_custom = np.asarray(jax.grad(loss(fn))(jnp.asarray(x)))
    g_auto = np.asarray(jax.grad(loss(plain))(jnp.asarray(x)))
    np.testing.assert_allclose(g_custom, g_auto, rtol=1e-10, atol=1e-12)
    # central differences on a few coordinates, in numpy float64 through the plain forward
    f = lambda x: float(np.sum(w * np.asarray(plain(jnp.asarray(x), 1e-5))))
    h = 1e-6
    for idx in [(0, 0, 0), (1, 2, 7), (2, 4, 15)]:
      e = np.zeros_like(x)
      e[idx] = h
      fd = (f(x + e) - f(x - e)) / (2 * h)
      assert abs(fd - g_custom[idx]) < 1e-6 * max(1.0, abs(fd)), (idx, fd, g_custom[idx])
  # float32 custom gradient against the float64 one
  x32, w32 = _inputs(np.float32)
  g32 = np.asarray(jax.grad(lambda x: jnp.sum(jnp.asarray(w32) * fn(x, 1e-5)))(jnp.asarray(x32)))
  np.testing.assert_allclose(g32, g_custom, rtol=1e-4, atol=1e-5)
