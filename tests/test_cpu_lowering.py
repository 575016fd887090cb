"""Tests for agejax.models.cpu_lowering: the CPU formulations compute the
same function as the lax ops they replace, and really avoid those ops."""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from agejax.models import cpu_lowering


def _conv_args(kernel_shape, stride, padding):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  kernel = jax.random.normal(jax.random.key(1), kernel_shape)
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  return x, kernel, dict(window_strides=(stride, stride),
                         padding=((padding, padding), (padding, padding)),
                         dimension_numbers=dn)


def _primitives(fn, *args):
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).eqns}


def test_this_machine_traces_for_the_cpu():
  assert cpu_lowering.on_cpu() == (jax.default_backend() == "cpu")
  assert cpu_lowering.on_cpu()  # the suite runs with JAX_PLATFORMS=cpu


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_convolution_is_a_matmul_with_the_same_values(stride):
  x, kernel, kw = _conv_args((1, 1, 4, 6), stride, 0)
  fast = lambda x, k: cpu_lowering.conv_general_dilated(x, k, **kw)
  ref = lambda x, k: lax.conv_general_dilated(x, k, **kw)
  assert "dot_general" in _primitives(fast, x, kernel)
  assert "conv_general_dilated" not in _primitives(fast, x, kernel)
  side = -(-9 // stride)  # ceil(9 / stride)
  assert fast(x, kernel).shape == ref(x, kernel).shape == (2, side, side, 6)
  np.testing.assert_allclose(fast(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), ref(x, kernel).shape)
  grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * cotangent), (0, 1))(x, kernel)
           for f in (fast, ref)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_shape,padding", [((3, 3, 4, 6), 1), ((1, 1, 4, 6), 1)])
def test_other_convolutions_stay_convolutions(kernel_shape, padding):
  x, kernel, kw = _conv_args(kernel_shape, 1, padding)
  fast = lambda x, k: cpu_lowering.conv_general_dilated(x, k, **kw)
  assert "conv_general_dilated" in _primitives(fast, x, kernel)
  np.testing.assert_array_equal(fast(x, kernel), lax.conv_general_dilated(x, kernel, **kw))


def _reference_pool(x, window, stride, padding):
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), pad)


@pytest.mark.parametrize("window,stride,padding", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_max_pool_matches_reduce_window_and_its_gradient(window, stride, padding):
  # After a ReLU, as in the networks: many zeros, so many tied maxima.
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 11, 11, 3)))
  y = cpu_lowering.max_pool(x, window, stride, padding)
  np.testing.assert_array_equal(y, _reference_pool(x, window, stride, padding))
  cotangent = jax.random.normal(jax.random.key(1), y.shape)
  got, want = (jax.grad(lambda x, f=f: jnp.sum(f(x, window, stride, padding) * cotangent))(x)
               for f in (cpu_lowering.max_pool, _reference_pool))
  if window == stride:  # windows do not overlap: nothing is summed, bit-identical
    np.testing.assert_array_equal(got, want)
  else:  # overlapping shares are added in another order
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert "select_and_scatter_add" not in str(jax.make_jaxpr(
      jax.grad(lambda x: jnp.sum(cpu_lowering.max_pool(x, window, stride, padding))))(x))


def test_a_tied_maximum_sends_the_gradient_to_the_first_position():
  x = jnp.array([[5., 1.], [5., 5.]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: jnp.sum(cpu_lowering.max_pool(x, 2, 2, 0) * 7.0))(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[7., 0.], [0., 0.]])
