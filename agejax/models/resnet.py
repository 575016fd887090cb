"""ResNet-18/34/50/101/152 in the torchvision layout.

Structure (paths in brackets; W = ``model.width``, 64 for the published nets):

* stem: 7x7/2 conv pad 3 [stem/conv] -> BN [stem/bn] -> ReLU -> 3x3/2 max
  pool pad 1.
* stage1..stage4 (torchvision's layer1..layer4) of block1..blockN, widths W,
  2W, 4W, 8W; the first block of stages 2-4 has stride 2.
* basic block (18/34): 3x3 conv1/bn1 -> ReLU -> 3x3 conv2/bn2, + shortcut,
  ReLU.
* bottleneck (50/101/152): 1x1 conv1/bn1 -> ReLU -> 3x3 conv2/bn2 -> ReLU ->
  1x1 conv3/bn3 to 4x the stage width, + shortcut, ReLU. The stride sits on
  conv2 (torchvision "v1.5") or, with ``model.stride_in_1x1``, on conv1
  (Caffe/Keras "v1"); both have the same parameters, so weights load either
  way but only the matching layout reproduces the original network.
* shortcut: identity, or 1x1 conv with the block's stride + BN
  [downsample/conv, downsample/bn] when the shape changes.
* global average pool -> features (8W for basic, 32W for bottleneck blocks).

``model.conv_bias`` adds a bias to every convolution (Keras' ResNet50).
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from agejax.models import layers

# arch -> (blocks per stage, bottleneck?)
SPECS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
_EXPANSION = 4  # bottleneck output channels / stage width


def _shortcut(in_channels: int, out_channels: int, stride: int, model_cfg: Any,
              dtype: Any, rngs: nnx.Rngs) -> layers.ConvBN | None:
  """1x1 conv + BN when the block changes shape, else None (identity)."""
  if stride == 1 and in_channels == out_channels:
    return None
  return layers.ConvBN(in_channels, out_channels, 1, stride=stride, padding=0,
                       model_cfg=model_cfg, dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions; the first carries the stride."""

  def __init__(self, in_channels: int, width: int, stride: int, *,
               model_cfg: Any, dtype: Any, rngs: nnx.Rngs):
    bias = bool(model_cfg.conv_bias)
    self.conv1 = layers.conv(in_channels, width, 3, stride=stride, padding=1,
                             use_bias=bias, dtype=dtype, rngs=rngs)
    self.bn1 = layers.make_batch_norm(width, model_cfg, dtype=dtype, rngs=rngs)
    self.conv2 = layers.conv(width, width, 3, padding=1, use_bias=bias,
                             dtype=dtype, rngs=rngs)
    self.bn2 = layers.make_batch_norm(width, model_cfg, dtype=dtype, rngs=rngs)
    self.downsample = _shortcut(in_channels, width, stride, model_cfg, dtype,
                                rngs)

  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    ura = use_running_average
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    if self.downsample is not None:
      x = self.downsample(x, use_running_average=ura)
    return jax.nn.relu(y + x)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3, 1x1 expand; stride on the 3x3 or on the first 1x1."""

  def __init__(self, in_channels: int, width: int, stride: int, *,
               model_cfg: Any, dtype: Any, rngs: nnx.Rngs):
    bias = bool(model_cfg.conv_bias)
    out_channels = width * _EXPANSION
    stride1, stride2 = ((stride, 1) if model_cfg.stride_in_1x1
                        else (1, stride))
    self.conv1 = layers.conv(in_channels, width, 1, stride=stride1,
                             use_bias=bias, dtype=dtype, rngs=rngs)
    self.bn1 = layers.make_batch_norm(width, model_cfg, dtype=dtype, rngs=rngs)
    self.conv2 = layers.conv(width, width, 3, stride=stride2, padding=1,
                             use_bias=bias, dtype=dtype, rngs=rngs)
    self.bn2 = layers.make_batch_norm(width, model_cfg, dtype=dtype, rngs=rngs)
    self.conv3 = layers.conv(width, out_channels, 1, use_bias=bias,
                             dtype=dtype, rngs=rngs)
    self.bn3 = layers.make_batch_norm(out_channels, model_cfg, dtype=dtype,
                                 rngs=rngs)
    self.downsample = _shortcut(in_channels, out_channels, stride, model_cfg,
                                dtype, rngs)

  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    ura = use_running_average
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    if self.downsample is not None:
      x = self.downsample(x, use_running_average=ura)
    return jax.nn.relu(y + x)


class Stage(nnx.Module):
  """Blocks held as attributes block1..blockN (paths ``stageS/blockB/...``)."""

  def __init__(self, blocks: list[nnx.Module]):
    self.num_blocks = len(blocks)
    for i, block in enumerate(blocks, start=1):
      setattr(self, f"block{i}", block)

  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    for i in range(1, self.num_blocks + 1):
      x = getattr(self, f"block{i}")(x, use_running_average=use_running_average)
    return x


class ResNet(layers.AgeNet):
  """A ResNet backbone with an age head; see the module docstring."""

  def __init__(self, model_cfg: Any, *,
               make_head: Callable[[int], nnx.Module], rngs: nnx.Rngs):
    """Builds ``model_cfg.arch`` (a key of :data:`SPECS`).

    Args:
      model_cfg: the ``model`` config section.
      make_head: builds the head from the feature dimension; called last, so
        the backbone draws its initial weights first.
      rngs: parameter initialisation keys.
    """
    blocks_per_stage, bottleneck = SPECS[model_cfg.arch]
    self.dtype = layers.compute_dtype(model_cfg)
    self.freeze_bn_stats = bool(model_cfg.freeze_bn_stats)
    self.dropout_rate = layers.dropout_rate(model_cfg, "dropout")
    block_cls = Bottleneck if bottleneck else BasicBlock
    expansion = _EXPANSION if bottleneck else 1

    stem_channels = layers.channels(model_cfg, 64)
    self.stem = layers.ConvBN(3, stem_channels, 7, stride=2, padding=3,
                              model_cfg=model_cfg, dtype=self.dtype, rngs=rngs)
    in_channels = stem_channels
    for s, num_blocks in enumerate(blocks_per_stage, start=1):
      width = layers.channels(model_cfg, 64 * 2**(s - 1))
      blocks = []
      for b in range(num_blocks):
        stride = 2 if (s > 1 and b == 0) else 1
        blocks.append(block_cls(in_channels, width, stride,
                                model_cfg=model_cfg, dtype=self.dtype,
                                rngs=rngs))
        in_channels = width * expansion
      setattr(self, f"stage{s}", Stage(blocks))
    self.features_dim = in_channels
    self.head = make_head(self.features_dim)

  def features(self, images: jax.Array, *, train: bool = False,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """Globally pooled float32[N, features_dim] (``dropout_rng`` unused)."""
    del dropout_rng  # no dropout inside a ResNet backbone
    ura = (not train) or self.freeze_bn_stats
    x = jnp.asarray(images, self.dtype)
    x = jax.nn.relu(self.stem(x, use_running_average=ura))
    x = layers.max_pool(x, 3, 2, padding=1)
    for s in range(1, 5):
      x = getattr(self, f"stage{s}")(x, use_running_average=ura)
    return layers.global_avg_pool(x)
