"""VGG-16, the backbone of DEX (Rothe et al. 2015).

Structure (paths in brackets; W = ``model.width``, 64 for the published net):

* stage1..stage5 of 2, 2, 3, 3, 3 convolutions 3x3 pad 1 with bias + ReLU
  [stageS/convC/{kernel,bias}] at widths W, 2W, 4W, 8W, 8W, each stage ending
  in a 2x2/2 max pool.
* flatten in H, W, C order (NHWC memory order; a torchvision checkpoint,
  flattened C, H, W, needs its fc6 rows permuted when ported).
* fc6 [fc6/{kernel,bias}] from (image_size // 32)^2 * 8W inputs to 64W
  units, ReLU, dropout; fc7 [fc7/...] 64W -> 64W, ReLU, dropout.
  Features are fc7's output (64W = 4096 for the published net).

Dropout after fc6 and fc7 uses ``model.vgg_dropout`` and is active only in
training. There is no batch norm, so ``model.bn_*`` and
``model.freeze_bn_stats`` have no effect here.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from agejax.models import layers

CONVS_PER_STAGE = (2, 2, 3, 3, 3)
_STAGE_CHANNELS = (64, 128, 256, 512, 512)  # published widths
_FC_UNITS = 4096  # published width of fc6 and fc7


class VGGStage(nnx.Module):
  """conv1..convK (3x3, bias, ReLU) then a 2x2/2 max pool."""

  def __init__(self, in_channels: int, out_channels: int, num_convs: int, *,
               dtype: Any, rngs: nnx.Rngs):
    self.num_convs = num_convs
    for i in range(1, num_convs + 1):
      setattr(self, f"conv{i}",
              layers.conv(in_channels, out_channels, 3, padding=1,
                          use_bias=True, dtype=dtype, rngs=rngs))
      in_channels = out_channels

  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(1, self.num_convs + 1):
      x = jax.nn.relu(getattr(self, f"conv{i}")(x))
    return layers.max_pool(x, 2, 2)


def _linear(in_features: int, out_features: int, dtype: Any,
            rngs: nnx.Rngs) -> nnx.Linear:
  # torchvision's VGG initialisation of its classifier layers.
  return nnx.Linear(in_features, out_features, dtype=dtype,
                    param_dtype=jnp.float32,
                    kernel_init=jax.nn.initializers.normal(0.01),
                    bias_init=jax.nn.initializers.zeros, rngs=rngs)


class VGG16(layers.AgeNet):
  """VGG-16 with an age head on fc7; see the module docstring."""

  def __init__(self, model_cfg: Any, image_size: int, *,
               make_head: Callable[[int], nnx.Module], rngs: nnx.Rngs):
    """Builds VGG-16 for square ``image_size`` inputs (fc6 depends on it).

    Args:
      model_cfg: the ``model`` config section.
      image_size: input height and width; at least 32.
      make_head: builds the head from the feature dimension; called last.
      rngs: parameter initialisation keys.
    """
    self.dtype = layers.compute_dtype(model_cfg)
    self.dropout_rate = layers.dropout_rate(model_cfg, "dropout")
    self.vgg_dropout_rate = layers.dropout_rate(model_cfg, "vgg_dropout")
    in_channels = 3
    for s, num_convs in enumerate(CONVS_PER_STAGE, start=1):
      out_channels = layers.channels(model_cfg, _STAGE_CHANNELS[s - 1])
      setattr(self, f"stage{s}",
              VGGStage(in_channels, out_channels, num_convs, dtype=self.dtype,
                       rngs=rngs))
      in_channels = out_channels
    # Each 2x2/2 VALID pool floors, and floor(floor(n/2)/2) = floor(n/4).
    side = image_size // 32
    units = layers.channels(model_cfg, _FC_UNITS)
    self.fc6 = _linear(side * side * in_channels, units, self.dtype, rngs)
    self.fc7 = _linear(units, units, self.dtype, rngs)
    self.features_dim = units
    self.head = make_head(self.features_dim)

  def conv_features(self, images: jax.Array) -> jax.Array:
    """The pooled output of stage5, [N, image_size//32, image_size//32, 8W]."""
    x = jnp.asarray(images, self.dtype)
    for s in range(1, len(CONVS_PER_STAGE) + 1):
      x = getattr(self, f"stage{s}")(x)
    return x

  def features(self, images: jax.Array, *, train: bool = False,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """fc7's output, float32[N, features_dim].

    ``dropout_rng`` is needed when ``train`` and ``model.vgg_dropout`` > 0.
    """
    rng6 = rng7 = None
    if dropout_rng is not None:
      rng6, rng7 = jax.random.split(dropout_rng)
    x = self.conv_features(images)
    x = x.reshape(x.shape[0], -1)  # H, W, C order
    x = jax.nn.relu(self.fc6(x))
    x = layers.dropout(x, self.vgg_dropout_rate, train=train, rng=rng6)
    x = jax.nn.relu(self.fc7(x))
    x = layers.dropout(x, self.vgg_dropout_rate, train=train, rng=rng7)
    return x.astype(jnp.float32)
