"""Tests for agejax.models: paths, published sizes, padding, strides, batch norm
modes, dtypes and the functional state round trip, against numpy.

Most models here are tiny (width 8, 32-64 px) and get their weights from
numpy through merge_state: building the abstract model compiles nothing, while
every distinct initialiser shape costs a compilation on CPU. Forward passes go
through jitted functions: compiling a whole tiny network once is faster than
compiling its operations one by one.
"""

from __future__ import annotations

import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agejax.config import defaults
from agejax import models
from agejax.models import paths
from agejax.errors import ConfigError
from agejax.models import layers

WIDTH = 8
K = 10  # ages 0..9


def _cfg(arch="resnet18", **overrides):
  cfg = defaults.default_config().model
  cfg.arch, cfg.width, cfg.min_age, cfg.max_age = arch, WIDTH, 0, K - 1
  # Neither is Flax's default (1e-5, 0.99): the checks below then show that
  # the BatchNorms take them from the config.
  cfg.bn_epsilon, cfg.bn_momentum = 1e-3, 0.9
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


@functools.lru_cache(maxsize=None)
def _abstract(arch, image_size, overrides):
  """split_state of the abstract model (cached: tracing the build costs)."""
  cfg = _cfg(arch, **dict(overrides))
  return models.split_state(nnx.eval_shape(
      lambda: models.build_model(cfg, image_size, nnx.Rngs(0))))


def _shapes(arch, image_size=32, **overrides):
  """param_shapes through the cached abstract model."""
  params = _abstract(arch, image_size, tuple(sorted(overrides.items())))[1]
  return {p: tuple(x.shape) for p, x in paths.flatten(params).items()}


def _numpy_state(arch="resnet18", image_size=32, seed=0, **overrides):
  """graphdef and numpy-drawn params / batch stats."""
  graphdef, params, stats = _abstract(arch, image_size,
                                      tuple(sorted(overrides.items())))
  rng = np.random.default_rng(seed)

  def draw_param(path, x):
    name = path.rsplit("/", 1)[-1]
    if name == "kernel":
      fan_in = math.prod(x.shape[:-1])
      value = rng.normal(size=x.shape) * math.sqrt(2.0 / fan_in)
    elif name == "scale":
      value = 1.0 + 0.1 * rng.normal(size=x.shape)
    else:
      value = 0.1 * rng.normal(size=x.shape)
    return jnp.asarray(value, jnp.float32)

  def draw_stat(path, x):
    if path.endswith("/mean"):
      return jnp.asarray(0.1 * rng.normal(size=x.shape), jnp.float32)
    return jnp.asarray(rng.uniform(0.5, 1.5, size=x.shape), jnp.float32)

  return (graphdef, paths.map_with_path(draw_param, params),
          paths.map_with_path(draw_stat, stats))


def _model(arch="resnet18", image_size=32, seed=0, **overrides):
  return models.merge_state(*_numpy_state(arch, image_size, seed, **overrides))


def _images(n=4, size=32, seed=1, channels=3):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=(n, size, size, channels)),
      jnp.float32)


# Compilation, not computation, is what these tests spend their time on; XLA's
# lowest backend optimisation level halves it and computes the same function.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnames=("graphdef", "train"),
                   compiler_options=_FAST_COMPILE)
def _apply(graphdef, params, stats, images, dropout_rng, *, train):
  """The functional step of the models package docstring, without the loss."""
  model = models.merge_state(graphdef, params, stats)
  outputs = model(images, train=train, dropout_rng=dropout_rng)
  return outputs, models.split_state(model)[2]


def _forward(model, images, train, dropout_rng=None):
  """``model(images, ...)`` jitted; new batch statistics are written back."""
  graphdef, params, stats = models.split_state(model)
  outputs, stats = _apply(graphdef, params, stats, images, dropout_rng,
                          train=train)
  nnx.update(model, stats)
  return outputs


@functools.partial(jax.jit, static_argnames=("fn", "graphdef"),
                   compiler_options=_FAST_COMPILE)
def _call_jitted(fn, graphdef, state, *args):
  return fn(nnx.merge(graphdef, state), *args)


def _call(fn, module, *args):
  """``fn(module, *args)`` under jit (module state is not written back)."""
  return _call_jitted(fn, *nnx.split(module), *args)


def _stats(model):
  return {p: np.asarray(v) for p, v in
          paths.flatten(models.split_state(model)[2]).items()}


# --- structure ----------------------------------------------------------------


def test_resnet18_parameter_paths():
  shapes = models.param_shapes(_cfg("resnet18"), 32)
  expected = {"stem/conv/kernel", "stem/bn/scale", "stem/bn/bias",
              "head/fc/kernel", "head/fc/bias"}
  for s in range(1, 5):
    for b in (1, 2):
      for layer in ("conv1/kernel", "bn1/scale", "bn1/bias", "conv2/kernel",
                    "bn2/scale", "bn2/bias"):
        expected.add(f"stage{s}/block{b}/{layer}")
      if s > 1 and b == 1:
        for layer in ("conv/kernel", "bn/scale", "bn/bias"):
          expected.add(f"stage{s}/block1/downsample/{layer}")
  assert set(shapes) == expected
  kernels = [p for p in shapes if p.endswith("kernel") and "head" not in p]
  assert len(kernels) == 20  # stem + 8 blocks x 2 + 3 downsample
  assert shapes["stem/conv/kernel"] == (7, 7, 3, 8)
  assert shapes["stage2/block1/conv1/kernel"] == (3, 3, 8, 16)
  assert shapes["stage2/block1/downsample/conv/kernel"] == (1, 1, 8, 16)
  assert shapes["stage3/block2/conv1/kernel"] == (3, 3, 32, 32)
  assert shapes["stage4/block2/bn2/scale"] == (64,)
  assert shapes["head/fc/kernel"] == (64, K)


def test_resnet50_parameter_paths_with_conv_bias():
  shapes = _shapes("resnet50", conv_bias=True)
  kernels = [p for p in shapes if p.endswith("/kernel") and "head" not in p]
  # stem + 16 blocks x 3 + one downsample per stage (stage1 widens 8 -> 32).
  assert len(kernels) == 53
  for p in kernels:  # Keras ResNet50: every convolution has a bias
    assert shapes[p[:-len("kernel")] + "bias"] == shapes[p][-1:]
  assert len([p for p in shapes if p.endswith("/scale")]) == 53
  assert shapes["stage1/block1/downsample/conv/kernel"] == (1, 1, 8, 32)
  assert "stage1/block2/downsample/conv/kernel" not in shapes
  assert shapes["stage3/block6/conv2/kernel"] == (3, 3, 32, 32)
  assert "stage3/block7/conv1/kernel" not in shapes
  assert shapes["stage4/block3/conv3/kernel"] == (1, 1, 64, 256)
  assert shapes["head/fc/kernel"] == (256, K)
  no_bias = _shapes("resnet50")
  assert set(shapes) - set(no_bias) == {
      p[:-len("kernel")] + "bias" for p in kernels}


@pytest.mark.parametrize("arch,total,features", [
    ("resnet18", 11_689_512, 512),
    ("resnet50", 25_557_032, 2048),
    ("vgg16", 138_357_544, 4096),
])
def test_published_parameter_counts(arch, total, features):
  # A 1000-way dex head is torchvision's ImageNet classifier: Linear(F, 1000).
  cfg = _cfg(arch, width=64, max_age=999)
  shapes = models.param_shapes(cfg, 224)
  assert shapes["head/fc/kernel"] == (features, 1000)
  assert sum(math.prod(s) for s in shapes.values()) == total
  backbone = sum(math.prod(s) for p, s in shapes.items()
                 if not p.startswith("head/"))
  assert backbone + features * 1000 + 1000 == total


def test_vgg16_parameter_paths():
  shapes = models.param_shapes(_cfg("vgg16"), 64)
  expected = {"fc6/kernel", "fc6/bias", "fc7/kernel", "fc7/bias",
              "head/fc/kernel", "head/fc/bias"}
  for s, n in enumerate((2, 2, 3, 3, 3), start=1):
    expected |= {f"stage{s}/conv{c}/{leaf}" for c in range(1, n + 1)
                 for leaf in ("kernel", "bias")}
  assert set(shapes) == expected
  assert shapes["stage1/conv1/kernel"] == (3, 3, 3, 8)
  assert shapes["stage5/conv3/kernel"] == (3, 3, 64, 64)
  assert shapes["fc6/kernel"] == (2 * 2 * 64, 512)  # (64 // 32)^2 * 8W
  assert shapes["fc7/kernel"] == (512, 512)
  assert shapes["head/fc/kernel"] == (512, K)
  assert models.param_shapes(_cfg("vgg16"), 32)["fc6/kernel"] == (64, 512)
  assert models.param_shapes(_cfg("vgg16"), 95)["fc6/kernel"] == (4 * 64, 512)


@pytest.mark.parametrize("key, value, message", [
    ("model.arch", "resnet51", "must be one of resnet18, resnet34, resnet50, resnet101, "
                               "resnet152, vgg16, got 'resnet51'"),
    ("model.dtype", "float16", "must be one of float32, bfloat16, got 'float16'"),
    ("model.dropout", 1.0, "must be in [0, 1), got 1.0"),
    ("model.width", 0, "must be a positive integer, got 0"),
    ("data.image_size", 31, "must be a multiple of 32 (the networks downsample by 32), >= 32"),
])
def test_the_model_rules_name_their_key(key, value, message):
  cfg = defaults.default_config()
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(ConfigError) as err:
    models.check(cfg)
  assert str(err.value).startswith(f"{key}: {message}")


# --- initialisation and state -------------------------------------------------


def test_real_initialisation_and_round_trip():
  # The one model built with real initialisers. Under jit they compile as one
  # program instead of one per shape; rbg keys compile faster than threefry.
  params, stats = jax.jit(
      lambda: models.split_state(models.build_model(
          _cfg(), 32, nnx.Rngs(jax.random.key(0, impl="rbg"))))[1:],
      compiler_options=_FAST_COMPILE)()
  graphdef = _abstract("resnet18", 32, ())[0]
  model = models.merge_state(graphdef, params, stats)
  flat = paths.flatten(params)
  assert {p: tuple(v.shape) for p, v in flat.items()} == _shapes("resnet18")
  for p, v in flat.items():
    assert v.dtype == jnp.float32, p
    if p.endswith("/scale"):  # no zero-init of the last BN of a block
      np.testing.assert_array_equal(v, 1.0, err_msg=p)
    if p.endswith("/bias") and "head" not in p:
      np.testing.assert_array_equal(v, 0.0, err_msg=p)
  for p, v in paths.flatten(stats).items():
    np.testing.assert_array_equal(v, 0.0 if p.endswith("mean") else 1.0)
  # He normal, fan_out: std sqrt(2 / (kh * kw * out)), not truncated.
  k = np.asarray(flat["stage4/block2/conv2/kernel"])  # 36,864 draws
  std = math.sqrt(2.0 / (3 * 3 * 64))
  assert abs(k.std() / std - 1) < 0.03
  assert 0.035 < np.mean(np.abs(k) > 2 * std) < 0.056  # normal: 4.55%

  x = _images()
  # Through host memory, as a checkpoint would take the pure dicts.
  graphdef2, *state = models.split_state(model)
  assert graphdef2 == graphdef
  params2, stats2 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state)
  again = models.merge_state(graphdef2, params2, stats2)
  np.testing.assert_array_equal(_forward(again, x, False),
                                _forward(model, x, False))
  np.testing.assert_array_equal(_forward(again, x, True),
                                _forward(model, x, True))
  for p, v in _stats(again).items():
    np.testing.assert_array_equal(v, _stats(model)[p])


def test_functional_train_step_matches_stateful_call():
  graphdef, params, stats = _numpy_state()
  x, ages = _images(), jnp.arange(4.0)

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def step(params, stats, images, ages):
    def loss_fn(params):
      model = models.merge_state(graphdef, params, stats)
      outputs = model(images, train=True)
      loss = jnp.mean(model.head.loss(outputs, ages))
      return loss, (outputs, models.split_state(model)[2])
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (_, (outputs, new_stats)), grads = step(params, stats, x, ages)
  model = models.merge_state(graphdef, params, stats)
  np.testing.assert_allclose(outputs, _forward(model, x, True), rtol=1e-5,
                             atol=1e-5)
  stateful = _stats(model)
  for p, v in paths.flatten(new_stats).items():
    np.testing.assert_allclose(v, stateful[p], rtol=1e-5, atol=1e-6)
  assert set(paths.flatten(grads)) == set(_shapes("resnet18"))
  assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))
  # The jitted step returned new statistics and left its inputs alone.
  assert not np.array_equal(new_stats["stem"]["bn"]["mean"],
                            stats["stem"]["bn"]["mean"])


# --- padding and strides ------------------------------------------------------


def test_stem_conv_pads_three_pixels_on_every_side():
  model = _model()
  kernel = np.zeros((7, 7, 3, 8), np.float32)
  taps = [(0, 0), (6, 6), (3, 3), (0, 6)]  # corners see the padding
  for o, (i, j) in enumerate(taps):
    kernel[i, j, o % 3, o] = 1.0
  model.stem.conv.kernel[...] = jnp.asarray(kernel)
  for size in (32, 33):  # 'SAME' would pad (2, 3) at 32 and (3, 3) at 33
    x = np.asarray(_images(2, size))
    y = np.asarray(model.stem.conv(jnp.asarray(x)))
    out = (size + 6 - 7) // 2 + 1
    assert y.shape == (2, out, out, 8)
    xp = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    for o, (i, j) in enumerate(taps):
      expected = xp[:, i:i + 2 * out - 1:2, j:j + 2 * out - 1:2, o % 3]
      np.testing.assert_array_equal(y[..., o], expected)
    np.testing.assert_array_equal(y[..., len(taps):], 0.0)


def test_max_pool_pads_with_minus_infinity():
  x = -np.abs(np.random.default_rng(0).normal(size=(2, 6, 6, 3))) - 1.0
  y = np.asarray(layers.max_pool(jnp.asarray(x, jnp.float32), 3, 2, 1))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  expected = np.stack([np.stack([xp[:, 2 * r:2 * r + 3, 2 * c:2 * c + 3].max(
      axis=(1, 2)) for c in range(3)], axis=1) for r in range(3)], axis=1)
  np.testing.assert_array_equal(y, expected.astype(np.float32))
  assert (y < -1.0).all()  # zero padding would have produced zeros


def test_bottleneck_stride_placement():
  v15 = _model("resnet50")
  v1 = _model("resnet50", stride_in_1x1=True)
  # Same parameters, drawn identically: only the stride moved.
  flat15 = paths.flatten(models.split_state(v15)[1])
  flat1 = paths.flatten(models.split_state(v1)[1])
  assert flat15.keys() == flat1.keys()
  for name, p in flat15.items():
    np.testing.assert_array_equal(p, flat1[name])
  b15, b1 = v15.stage2.block1, v1.stage2.block1
  x = _images(2, 8, channels=32)  # stage2/block1 input at width 8

  def shapes(block, x):
    h1, h2 = nnx.eval_shape(lambda b, x: (b.conv1(x), b.conv2(b.conv1(x))),
                            block, x)
    return h1.shape, h2.shape

  # v1.5: the 1x1 keeps 8x8 and the 3x3 strides; v1: the 1x1 strides.
  assert shapes(b15, x) == ((2, 8, 8, 16), (2, 4, 4, 16))
  assert shapes(b1, x) == ((2, 4, 4, 16), (2, 4, 4, 16))

  def run(block, x):
    return block.conv1(x), block(x, use_running_average=True)

  (h1, y1), (_, y15) = _call(run, b1, x), _call(run, b15, x)
  # v1's strided 1x1 is a matmul on every second pixel from the top-left.
  kernel = np.asarray(b1.conv1.kernel[...])[0, 0]
  np.testing.assert_allclose(h1, np.asarray(x)[:, ::2, ::2] @ kernel,
                             rtol=1e-5, atol=1e-5)
  assert y15.shape == y1.shape == (2, 4, 4, 64)
  assert not np.allclose(y15, y1)


# --- batch norm modes and dropout ---------------------------------------------


def test_freeze_bn_stats_uses_and_keeps_running_statistics():
  model = _model(freeze_bn_stats=True)
  x = _images()
  before = _stats(model)
  np.testing.assert_array_equal(_forward(model, x, True),
                                _forward(model, x, False))
  for p, v in _stats(model).items():
    np.testing.assert_array_equal(v, before[p])


def test_dropout_before_head_acts_in_training_only():
  model = _model(freeze_bn_stats=True, dropout=0.5)  # frozen: only dropout
  x = _images()
  eval_out = _forward(model, x, False)
  a = _forward(model, x, True, jax.random.key(0))
  np.testing.assert_array_equal(a, _forward(model, x, True, jax.random.key(0)))
  assert not np.allclose(a, eval_out)
  with pytest.raises(ValueError, match="dropout_rng"):
    _forward(model, x, True)


def test_training_updates_running_statistics_with_momentum():
  model = _model()  # bn_momentum 0.9, bn_epsilon 1e-3
  x = _images()
  before = _stats(model)
  eval_out = _forward(model, x, False)
  train_out = _forward(model, x, True)
  assert not np.allclose(train_out, eval_out)  # batch statistics were used
  after = _stats(model)
  conv = np.asarray(model.stem.conv(x), np.float64)
  np.testing.assert_allclose(
      after["stem/bn/mean"],
      0.9 * before["stem/bn/mean"] + 0.1 * conv.mean(axis=(0, 1, 2)),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(  # biased batch variance
      after["stem/bn/var"],
      0.9 * before["stem/bn/var"] + 0.1 * conv.var(axis=(0, 1, 2)),
      rtol=1e-5, atol=1e-6)
  for p, v in after.items():  # every BN layer moved
    assert not np.allclose(v, before[p]), p
  # Evaluation normalises with the running statistics and bn_epsilon.
  scale = np.asarray(model.stem.bn.scale[...])
  bias = np.asarray(model.stem.bn.bias[...])
  expected = ((conv - after["stem/bn/mean"]) /
              np.sqrt(after["stem/bn/var"] + 1e-3) * scale + bias)
  np.testing.assert_allclose(model.stem(x, use_running_average=True), expected,
                             rtol=1e-4, atol=1e-5)
  # Training normalises with the batch's own (biased) statistics.
  expected = ((conv - conv.mean(axis=(0, 1, 2))) /
              np.sqrt(conv.var(axis=(0, 1, 2)) + 1e-3) * scale + bias)
  np.testing.assert_allclose(model.stem(x, use_running_average=False),
                             expected, rtol=1e-4, atol=1e-4)


def test_dropout_closed_form():
  x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, size=(64, 256)),
                  jnp.float32)
  key = jax.random.key(3)
  y = np.asarray(layers.dropout(x, 0.25, train=True, rng=key))
  kept = np.asarray(jax.random.bernoulli(key, 0.75, x.shape))
  np.testing.assert_allclose(y, np.where(kept, np.asarray(x) / 0.75, 0.0),
                             rtol=1e-6)
  assert abs(kept.mean() - 0.75) < 0.01
  assert layers.dropout(x, 0.25, train=False, rng=None) is x
  with pytest.raises(ValueError, match="dropout_rng"):
    layers.dropout(x, 0.25, train=True, rng=None)


# --- dtypes -------------------------------------------------------------------


def test_bfloat16_compute_float32_params_and_outputs():
  graphdef, params, stats = _abstract("resnet18", 32, (("dtype", "bfloat16"),))
  for leaf in jax.tree.leaves(params) + jax.tree.leaves(stats):
    assert leaf.dtype == jnp.float32
  m32, m16 = _model(), _model(dtype="bfloat16")  # identical numpy weights
  x = _images()
  # Dtypes by tracing alone (compiling costs more than these checks need).
  assert nnx.eval_shape(lambda m, x: m.stem.conv(x), m16,
                        x).dtype == jnp.bfloat16  # the compute is bf16
  assert nnx.eval_shape(lambda m, x: m.features(x), m16, x).dtype == jnp.float32
  _, new_stats = _apply.eval_shape(graphdef, params, stats, x, None,
                                   train=True)
  for leaf in jax.tree.leaves(new_stats):
    assert leaf.dtype == jnp.float32  # running statistics stay float32
  out32, out16 = _forward(m32, x, False), _forward(m16, x, False)
  assert out16.dtype == jnp.float32
  rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
  assert 0 < rel < 3e-2, rel  # bfloat16 keeps 8 bits of mantissa


# --- VGG ----------------------------------------------------------------------


def test_vgg16_flattens_hwc_and_applies_its_dropout():
  model = _model("vgg16", image_size=64)
  x = _images(2, 64)
  # fc6 picks single pool5 entries, fc7 is the identity: features then show
  # which (h, w, c) the model put at each row of fc6.
  picks = [(0, 0, 0), (0, 1, 5), (1, 0, 17), (1, 1, 63)]
  kernel6 = np.zeros((256, 512), np.float32)
  for u, (h, w, c) in enumerate(picks):
    kernel6[(h * 2 + w) * 64 + c, u] = 1.0
  model.fc6.kernel[...] = jnp.asarray(kernel6)
  model.fc6.bias[...] = jnp.zeros(512)
  model.fc7.kernel[...] = jnp.eye(512)
  model.fc7.bias[...] = jnp.zeros(512)

  def run(model, x, key):
    return (model.conv_features(x), model.features(x),
            model.features(x, train=True, dropout_rng=key))

  pool5, features, dropped = map(np.asarray,
                                 _call(run, model, x, jax.random.key(1)))
  assert pool5.shape == (2, 2, 2, 64)
  assert features.shape == (2, 512) and features.dtype == np.float32
  for u, (h, w, c) in enumerate(picks):
    np.testing.assert_array_equal(features[:, u], pool5[:, h, w, c])
  np.testing.assert_array_equal(features[:, len(picks):], 0.0)
  # vgg_dropout (0.5) after fc6 and fc7 in training: surviving units are
  # scaled by 2 twice (identity fc7), dropped ones are 0.
  picked = dropped[:, :len(picks)]
  assert np.all(np.isclose(picked, 0.0) |
                np.isclose(picked, 4.0 * features[:, :len(picks)]))
  assert not np.allclose(dropped, features)
  assert models.split_state(model)[2] == {}  # no batch norm in VGG
  with pytest.raises(ValueError, match="dropout_rng"):
    model.features(x, train=True)


def test_batch_norm_layer_names_the_layer_of_its_parameters():
  assert paths.batch_norm_layer("stage1/block1/bn1/scale") == "stage1/block1/bn1"
  assert paths.batch_norm_layer("stem/bn/mean") == "stem/bn"
  assert paths.batch_norm_layer("stage2/block1/downsample/bn/bias") == "stage2/block1/downsample/bn"
  assert paths.batch_norm_layer("stage1/block1/conv1/kernel") is None
  assert paths.batch_norm_layer("head/fc/bias") is None
  assert paths.batch_norm_layer("scale") is None
