"""Building blocks shared by the backbones: convolutions with explicit padding,
batch norm configured from ``model.*``, pooling and functional dropout.

Every padding is an explicit symmetric ``(p, p)`` pair, as in PyTorch and
Caffe. ``'SAME'`` with stride 2 pads one pixel more at the bottom/right than
at the top/left, which shifts every feature map by half a pixel against the
networks whose weights we port; the result still trains, so the mistake
would only show as worse accuracy.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from agejax.models import batch_norm
from agejax.models import cpu_lowering

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"): an
# untruncated normal with variance 2 / (kh * kw * out_channels).
he_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out",
                                                         "normal")


def compute_dtype(model_cfg: Any) -> Any:
  """The activation dtype named by ``model.dtype`` (parameters stay float32)."""
  return DTYPES[model_cfg.dtype]


def channels(model_cfg: Any, published: int) -> int:
  """A published channel count scaled by ``model.width / 64``."""
  # Published counts are multiples of 64, so this is exact for any width.
  return published * model_cfg.width // 64


def dropout_rate(model_cfg: Any, name: str) -> float:
  """Reads ``model.<name>``, a dropout probability in [0, 1)."""
  return float(getattr(model_cfg, name))


def conv(in_channels: int, out_channels: int, kernel: int, *, stride: int = 1,
         padding: int = 0, use_bias: bool = False, dtype: Any,
         rngs: nnx.Rngs) -> nnx.Conv:
  """A square convolution with symmetric zero padding of ``padding`` pixels."""
  return nnx.Conv(
      in_channels, out_channels, (kernel, kernel), strides=(stride, stride),
      padding=((padding, padding), (padding, padding)), use_bias=use_bias,
      dtype=dtype, param_dtype=jnp.float32, kernel_init=he_normal_fan_out,
      bias_init=jax.nn.initializers.zeros,
      conv_general_dilated=cpu_lowering.conv_general_dilated, rngs=rngs)


def make_batch_norm(num_features: int, model_cfg: Any, *, dtype: Any,
               rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with ``model.bn_momentum`` / ``model.bn_epsilon``.

  Running statistics follow ``running = momentum * running + (1 - momentum)
  * batch`` with the biased batch variance (Flax's convention; PyTorch keeps
  the unbiased one, a factor n / (n - 1) that is negligible at batch sizes
  where batch statistics are worth keeping). Scale starts at 1 everywhere:
  no zero-init of the last BN of a residual block. Training uses the
  closed-form gradient of :mod:`agejax.models.batch_norm`.
  """
  return batch_norm.BatchNorm(
      num_features, momentum=float(model_cfg.bn_momentum),
      epsilon=float(model_cfg.bn_epsilon), dtype=dtype,
      param_dtype=jnp.float32,
      # Two-pass variance: ported weights can give activations whose mean is
      # large against their spread, where E[x^2] - E[x]^2 cancels badly.
      use_fast_variance=False, rngs=rngs)


class ConvBN(nnx.Module):
  """``bn(conv(x))`` without activation: the ResNet stem and shortcuts.

  Attributes ``conv`` and ``bn`` give the paths ``.../conv/kernel`` and
  ``.../bn/{scale,bias,mean,var}``.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel: int, *,
               stride: int, padding: int, model_cfg: Any, dtype: Any,
               rngs: nnx.Rngs):
    self.conv = conv(in_channels, out_channels, kernel, stride=stride,
                     padding=padding, use_bias=bool(model_cfg.conv_bias),
                     dtype=dtype, rngs=rngs)
    self.bn = make_batch_norm(out_channels, model_cfg, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    return self.bn(self.conv(x), use_running_average=use_running_average)


def max_pool(x: jax.Array, window: int, stride: int,
             padding: int = 0) -> jax.Array:
  """Max pooling over H and W of NHWC ``x``, padding with -inf.

  -inf (not 0) so that a padded pixel never wins, as in PyTorch's MaxPool2d.
  """
  return cpu_lowering.max_pool(x, window, stride, padding)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over H and W, accumulated and returned in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def dropout(x: jax.Array, rate: float, *, train: bool,
            rng: jax.Array | None) -> jax.Array:
  """Inverted dropout: active only when ``train`` and ``rate > 0``.

  A function with an explicit key rather than an ``nnx.Dropout`` holding an
  RNG stream: the model state then is parameters and batch statistics only,
  and a jitted step passes a fresh key per step.
  """
  if not train or rate == 0.0:
    return x
  if rng is None:
    raise ValueError(
        f"dropout with rate {rate} in training needs a key: call the model "
        "with dropout_rng=jax.random.key(...) (a new one every step)")
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, x.shape)
  return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class AgeNet(nnx.Module):
  """Forward pass shared by the backbones: features -> dropout -> head.

  Subclasses define ``features(images, *, train, dropout_rng)`` and set the
  attributes ``features_dim``, ``dropout_rate`` (``model.dropout``) and
  ``head``.
  """

  features_dim: int
  dropout_rate: float
  head: nnx.Module

  def features(self, images: jax.Array, *, train: bool = False,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    raise NotImplementedError

  def __call__(self, images: jax.Array, *, train: bool,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """Head outputs for normalised NHWC ``images``.

    Args:
      images: float[N, H, W, 3], already normalised.
      train: batch statistics (unless ``model.freeze_bn_stats``) and dropout.
      dropout_rng: key for every dropout of this call; needed only when
        ``train`` and some dropout rate is > 0.
    """
    feature_rng = head_rng = None
    if dropout_rng is not None:
      feature_rng, head_rng = jax.random.split(dropout_rng)
    x = self.features(images, train=train, dropout_rng=feature_rng)
    x = dropout(x, self.dropout_rate, train=train, rng=head_rng)
    return self.head(x)
