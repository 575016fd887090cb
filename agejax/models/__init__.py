"""Backbones with an age head: :func:`build_model` and the state helpers.

A model built here is a ``flax.nnx.Module`` with

* ``model(images, *, train, dropout_rng=None) -> outputs`` of the head,
* ``model.features(images, *, train=False, dropout_rng=None) -> float32[N, F]``,
* ``model.head`` (from :func:`agejax.models.heads.build_head`) and
  ``model.features_dim`` (F).

Modes. ``train`` is a Python bool (static under jit). ``train=True`` makes
batch norm normalise with the batch statistics and update its running
statistics in place, unless ``model.freeze_bn_stats`` (then the running
statistics are used and never change) or the layer was frozen by
:func:`freeze_batch_norm`, and turns on dropout.
``train=False`` uses the running statistics and no dropout.

Dropout keys. The model holds no RNG state; a call with ``train=True`` and a
dropout rate > 0 (``model.dropout``, or VGG's ``model.vgg_dropout``) needs
``dropout_rng``, a fresh ``jax.random`` key every step, and raises otherwise.

State. :func:`split_state` turns a model into ``(graphdef, params,
batch_stats)``: a static graph definition and two nested dicts of arrays
whose slash-joined paths are the names configs address (``stem/conv/kernel``,
``stage3/block2/bn1/scale``, ``head/fc/bias``; batch statistics
``.../bn1/mean`` and ``.../bn1/var``; VGG has none, so ``{}``).
:func:`merge_state` is the inverse. A pure training step::

  graphdef, params, batch_stats = models.split_state(model)

  @jax.jit
  def train_step(params, batch_stats, opt_state, images, ages, key):
    def loss_fn(params):
      model = models.merge_state(graphdef, params, batch_stats)
      outputs = model(images, train=True, dropout_rng=key)
      loss = jnp.mean(model.head.loss(outputs, ages))
      # The call updated the merged model's running statistics in place.
      return loss, models.split_state(model)[2]
    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

Evaluation merges the same way and calls with ``train=False``.
:func:`param_shapes` gives every parameter's shape without allocating it;
``split_state(nnx.eval_shape(lambda: build_model(...)))`` gives the whole
state as ``jax.ShapeDtypeStruct`` trees (e.g. as a checkpoint restore
target).
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from agejax.models import batch_norm
from agejax.models import paths
from agejax.config import config_check
from agejax.models import layers
from agejax.models import resnet
from agejax.models import vgg

ARCHS = (*resnet.SPECS, "vgg16")

RULES: dict[str, config_check.Rule] = {
    "model.arch": config_check.one_of(ARCHS),
    "model.dtype": config_check.one_of(tuple(layers.DTYPES)),
    "model.width": config_check.POSITIVE_INTEGER,
    "model.bn_momentum": config_check.FRACTION,
    "model.bn_epsilon": config_check.POSITIVE,
    "model.dropout": config_check.FRACTION,
    "model.vgg_dropout": config_check.FRACTION,
    "model.min_age": config_check.NON_NEGATIVE,
    "data.image_size": ((lambda v: v >= 32 and v % 32 == 0),
                        "a multiple of 32 (the networks downsample by 32), >= 32"),
}


def check(cfg: Any) -> None:
  """The rules of the backbone's keys (the head's are :func:`heads.check`)."""
  config_check.check_rules(cfg, RULES)
  config_check.require("model.max_age", cfg.model.max_age > cfg.model.min_age,
                       f"> model.min_age ({cfg.model.min_age})", cfg.model.max_age)
  # VGG's fc6 is sized by the input: one side for the whole run.
  config_check.require("data.image_size_schedule",
                       not (cfg.model.arch == "vgg16" and cfg.data.image_size_schedule),
                       "empty with model.arch=vgg16 (its fc6 layer fixes the input size)",
                       cfg.data.image_size_schedule)


def build_model(model_cfg: Any, image_size: int, rngs: nnx.Rngs) -> nnx.Module:
  """Builds ``model_cfg.arch`` with the head ``model_cfg.head``.

  Args:
    model_cfg: the ``model`` config section.
    image_size: side of the square input images (VGG's fc6 depends on it).
    rngs: initialisation keys (the ``params`` stream).

  The values are those :func:`check` accepts (``agejax.train.config_rules``
  runs it at start-up; a stored model.json passed it when it was trained).
  """
  # Imported here so the backbones do not depend on the heads at import time.
  from agejax.models import heads  # pylint: disable=g-import-not-at-top

  def make_head(in_features: int) -> nnx.Module:
    return heads.build_head(model_cfg, in_features, rngs)

  if model_cfg.arch == "vgg16":
    return vgg.VGG16(model_cfg, image_size, make_head=make_head, rngs=rngs)
  return resnet.ResNet(model_cfg, make_head=make_head, rngs=rngs)


def freeze_batch_norm(model: nnx.Module, layer_paths: set[str]) -> None:
  """Makes the BatchNorm layers at ``layer_paths`` (``stage1/block0/bn1``) frozen.

  In place, on the model's static structure: a graphdef split from it trains
  those layers with their running statistics and leaves them unchanged.

  Raises:
    ValueError: a path that names no BatchNorm layer of the model.
  """
  found = set()
  for path, node in nnx.iter_graph(model):
    name = paths.path_str(path)
    if isinstance(node, batch_norm.BatchNorm) and name in layer_paths:
      node.frozen_statistics = True
      found.add(name)
  if found != set(layer_paths):
    raise ValueError(f"no BatchNorm layer at {sorted(set(layer_paths) - found)}")


def abstract_model(model_cfg: Any, image_size: int) -> nnx.Module:
  """The network of ``model_cfg`` as shapes only: its structure, nothing allocated.

  The one place a model's structure is built from a config; training, the
  plan, restoring a run, serving and the import check split it
  (:func:`split_state`) for the graphdef or the parameter shapes.
  """
  return nnx.eval_shape(lambda: build_model(model_cfg, image_size, nnx.Rngs(0)))


def param_shapes(model_cfg: Any, image_size: int) -> dict[str, tuple[int, ...]]:
  """``{path: shape}`` of every parameter, in tree order, nothing allocated."""
  params = nnx.to_pure_dict(nnx.state(abstract_model(model_cfg, image_size), nnx.Param))
  return {p: tuple(x.shape) for p, x in paths.flatten(params).items()}


def split_state(model: nnx.Module) -> tuple[nnx.GraphDef, dict[str, Any],
                                             dict[str, Any]]:
  """``(graphdef, params, batch_stats)`` with pure nested dicts of arrays.

  Raises if the model holds state of any other kind (the filters of
  ``nnx.split`` must cover everything), so nothing is silently dropped.
  """
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def merge_state(graphdef: nnx.GraphDef, params: dict[str, Any],
                batch_stats: dict[str, Any]) -> nnx.Module:
  """A new model from :func:`split_state`'s outputs (arrays are not copied)."""
  return nnx.merge(graphdef, params, batch_stats)
