"""Tests for agejax.models.batch_norm against nnx.BatchNorm and closed forms."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from agejax.models import batch_norm

CHANNELS = 6


def _pair(dtype=jnp.float32):
  """nnx.BatchNorm and ours, with the same non-trivial scale and bias."""
  made = []
  for cls in (nnx.BatchNorm, batch_norm.BatchNorm):
    bn = cls(CHANNELS, momentum=0.9, epsilon=1e-3, dtype=dtype,
             param_dtype=jnp.float32, use_fast_variance=False, rngs=nnx.Rngs(0))
    bn.scale[...] = jnp.linspace(0.5, 2.0, CHANNELS)
    bn.bias[...] = jnp.linspace(-1.0, 1.0, CHANNELS)
    made.append(bn)
  return made


def _batch(dtype=jnp.float32):
  # A mean far from zero against the spread, as after a ported layer.
  x = jax.random.normal(jax.random.key(0), (4, 5, 5, CHANNELS)) * 3.0 + 20.0
  return x.astype(dtype)


def _loss(bn, x, cotangent):
  return jnp.sum(bn(x, use_running_average=False).astype(jnp.float32) * cotangent)


def test_training_output_and_running_statistics_equal_flax_bit_for_bit():
  theirs, ours = _pair()
  x = _batch()
  np.testing.assert_array_equal(ours(x, use_running_average=False),
                                theirs(x, use_running_average=False))
  np.testing.assert_array_equal(ours.mean[...], theirs.mean[...])
  np.testing.assert_array_equal(ours.var[...], theirs.var[...])
  # and with running averages (Flax's own code path)
  np.testing.assert_array_equal(ours(x, use_running_average=True),
                                theirs(x, use_running_average=True))


def test_closed_form_gradient_equals_autodiff():
  theirs, ours = _pair()
  x = _batch()
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  want = nnx.grad(_loss, argnums=(0, 1))(theirs, x, cotangent)
  got = nnx.grad(_loss, argnums=(0, 1))(ours, x, cotangent)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(got[0][name][...], want[0][name][...], rtol=1e-4, atol=1e-4)


def test_gradient_identities_of_normalisation():
  # The output is invariant to shifting x per channel and to scaling it, so
  # dx sums to zero over each channel and is orthogonal to x - mean.
  x = _batch()
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  scale, bias = jnp.linspace(0.5, 2.0, CHANNELS), jnp.zeros(CHANNELS)
  dx, dscale, dbias = jax.grad(
      lambda x, s, b: jnp.sum(batch_norm.normalize_batch(x, s, b, 1e-8)[0] * cotangent),
      (0, 1, 2))(x, scale, bias)
  np.testing.assert_allclose(jnp.sum(dx, (0, 1, 2)), 0.0, atol=1e-4)
  centred = x - jnp.mean(x, (0, 1, 2))
  np.testing.assert_allclose(jnp.sum(dx * centred, (0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(dbias, jnp.sum(cotangent, (0, 1, 2)), rtol=1e-6)
  x_hat = centred / jnp.std(x, (0, 1, 2))
  np.testing.assert_allclose(dscale, jnp.sum(cotangent * x_hat, (0, 1, 2)), rtol=1e-4, atol=1e-4)


def test_statistics_outputs_carry_no_gradient():
  x = _batch()
  ones, zeros = jnp.ones(CHANNELS), jnp.zeros(CHANNELS)
  for index in (1, 2):
    grad = jax.grad(lambda x, i=index: jnp.sum(
        batch_norm.normalize_batch(x, ones, zeros, 1e-3)[i]))(x)
    np.testing.assert_array_equal(grad, jnp.zeros_like(x))


def test_bfloat16_gradient_is_no_worse_than_flax():
  x = _batch(jnp.bfloat16)
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  exact = nnx.grad(_loss, argnums=1)(_pair()[0], x.astype(jnp.float32), cotangent)
  theirs, ours = _pair(jnp.bfloat16)
  err = [float(jnp.max(jnp.abs(nnx.grad(_loss, argnums=1)(bn, x, cotangent).astype(jnp.float32)
                                - exact))) for bn in (theirs, ours)]
  assert err[1] <= err[0]
