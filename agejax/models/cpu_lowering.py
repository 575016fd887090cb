"""Equivalent formulations of two layers that XLA's CPU backend runs faster.

Both are chosen when the computation is traced for the CPU
(``jax.default_backend() == "cpu"``); on GPUs and TPUs the plain lax ops are
used, so nothing here changes the accelerator path. Results are the same
function of the same parameters; only the kernels XLA picks differ.

* **1x1 convolutions as matrix products.** XLA:CPU runs the weight gradient
  of a 1x1 convolution as a convolution whose window is the whole feature map,
  at a fraction of its matmul speed. Written as a product of 2-D operands,
  ``x[:, ::s, ::s].reshape(-1, C_in) @ W``, the forward pass and both
  gradients are GEMMs; with 4-D operands XLA transposed every incoming
  gradient first. On ResNet-50 (112 px, batch 16) this took the train step
  from 1.72 s to about 1.1 s (``python -m agejax.benchmark step``).
* **Max pooling with a slice-based gradient.** The gradient of
  ``lax.reduce_window(max)`` is a select-and-scatter, which XLA:CPU expands
  into index arithmetic and a scatter. The gradient here walks the k x k
  window offsets in row-major order and gives each output's gradient to the
  first input equal to the maximum: select-and-scatter's choice, at a few
  elementwise passes. Where windows overlap, an input's shares are added in
  another order, so gradients may differ in the last bit.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Iterator, Sequence

import jax
from jax import lax
import jax.numpy as jnp

# nnx.Conv's NHWC / HWIO dimension numbers, as lax canonicalises them.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


_PORTABLE = contextvars.ContextVar("agejax_portable_lowering", default=False)


@contextlib.contextmanager
def portable() -> Iterator[None]:
  """Trace with the plain lax ops whatever the backend.

  For graphs that leave JAX (``agejax.serving.formats``): their runtimes
  (TF, TFLite, ONNX Runtime) have their own convolution kernels, and a
  strided slice of a symbolic batch lowers to a dynamic gather that TFLite
  cannot express.
  """
  token = _PORTABLE.set(True)
  try:
    yield
  finally:
    _PORTABLE.reset(token)


def on_cpu() -> bool:
  """Whether computations are being traced for XLA's CPU backend."""
  return jax.default_backend() == "cpu" and not _PORTABLE.get()


def _is_pointwise(kernel: jax.Array, padding: Any, lhs_dilation: Any,
                  rhs_dilation: Any, dimension_numbers: Any,
                  feature_group_count: int) -> bool:
  """A 1x1, unpadded, undilated, ungrouped 2-D NHWC convolution."""
  if kernel.ndim != 4 or kernel.shape[:2] != (1, 1) or feature_group_count != 1:
    return False
  if isinstance(padding, str):
    unpadded = padding in ("VALID", "SAME")  # identical for a 1x1 window
  else:
    unpadded = all(tuple(p) == (0, 0) for p in padding)
  undilated = all(d == 1 for d in (lhs_dilation or ())) and all(
      d == 1 for d in (rhs_dilation or ()))
  return unpadded and undilated and dimension_numbers == _NHWC


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array,
                         window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None,
                         feature_group_count: int = 1,
                         precision: Any = None, **kwargs: Any) -> jax.Array:
  """``lax.conv_general_dilated``; a 1x1 convolution is a matmul on the CPU.

  The signature is lax's, so ``nnx.Conv(conv_general_dilated=...)`` takes it.
  """
  if on_cpu() and not kwargs.get("out_sharding") and _is_pointwise(
      rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count):
    sh, sw = window_strides
    x = lhs[:, ::sh, ::sw, :]
    out = lax.dot_general(
        x.reshape(-1, x.shape[-1]), rhs[0, 0], (((1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=kwargs.get("preferred_element_type"))
    return out.reshape(*x.shape[:-1], rhs.shape[-1])
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)


def _reduce_window_max(x: jax.Array, window: int, stride: int,
                       padding: int) -> jax.Array:
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  # A Python -inf, not an array: lax only recognises (and differentiates) a
  # max pool when the initial value is the concrete identity of max.
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), pad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_sliced_grad(x: jax.Array, window: int, stride: int,
                          padding: int) -> jax.Array:
  return _reduce_window_max(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
  y = _reduce_window_max(x, window, stride, padding)
  return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, grad):
  x, y = residuals
  out_h, out_w = y.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
               constant_values=-jnp.inf)
  padded_h, padded_w = xp.shape[1:3]
  zero = jnp.zeros((), grad.dtype)
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, grad.dtype)
  for i in range(window):
    for j in range(window):
      last_i, last_j = i + stride * (out_h - 1), j + stride * (out_w - 1)
      candidate = xp[:, i:last_i + 1:stride, j:last_j + 1:stride, :]
      hit = (candidate == y) & ~taken
      taken = taken | hit
      # Interior padding puts each output's share back at its strided input.
      dxp = dxp + lax.pad(
          jnp.where(hit, grad, zero), zero,
          ((0, 0, 0), (i, padded_h - 1 - last_i, stride - 1),
           (j, padded_w - 1 - last_j, stride - 1), (0, 0, 0)))
  height, width = x.shape[1:3]
  return (dxp[:, padding:padding + height, padding:padding + width, :],)


_max_pool_sliced_grad.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  """Max pool over H and W of NHWC ``x`` with -inf padding."""
  if on_cpu():
    return _max_pool_sliced_grad(x, window, stride, padding)
  return _reduce_window_max(x, window, stride, padding)
