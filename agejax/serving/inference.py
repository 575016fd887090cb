"""Ages from face crops, with the input the trained network saw in evaluation.

``load(path)`` takes an exported bundle (``agejax.export``) or a training
workdir and returns a :class:`Predictor`::

  predictor = inference.load("/models/dex")
  ages, spreads = predictor(crops)  # uint8 RGB face crops, any size

A face crop goes through exactly the evaluation path of
``agejax.data.input_pipeline``: it is resized to the dataset's stored size with
the resize that built the dataset (``face_crop.crop_face``, PIL bilinear,
uint8), then ``augment.center_crop``'s shorter-side resize (only when the
stored side is below the network's input) and centre crop, then
``augment.normalize``. Cropping runs in numpy on the host; normalising is
compiled by XLA, as the tf.data pipeline's is (``jit_compile``): XLA's
division rounds differently from numpy's by an ulp, and a trained network
turns an ulp of input into ~1e-4 years of output, so both sides use XLA's.
``tests/test_export.py`` checks the result against the tf.data pipeline's
output for the same stored images (bit-exact without a resize).

The network is compiled once: every call runs fixed-size batches of
``batch_size`` crops, the last one padded, so a new number of faces never
triggers a new compilation, and predictors of the same network share it.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from agejax import models
from agejax.data import augment
from agejax.data import face_crop
from agejax.models import forward
from agejax.serving import bundle
from agejax.serving import graph

DEFAULT_BATCH_SIZE = 16


def eval_crop(images: np.ndarray, image_size: int, stored_size: int) -> np.ndarray:
  """``augment.center_crop`` of square stored images (float32 numpy).

  Args:
    images: [N, stored_size, stored_size, 3], any real dtype, values 0..255.
    image_size: the network's input side.
    stored_size: the dataset's stored side.
  """
  return np.asarray(graph.center_crop(jnp.asarray(images, jnp.float32), image_size,
                                      stored_size))


def to_stored(image: np.ndarray, stored_size: int) -> np.ndarray:
  """One uint8 RGB crop as the dataset stored it: ``stored_size`` square."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"face crops must be uint8 RGB [H, W, 3], got {image.dtype} "
                     f"{image.shape}")
  if image.shape[:2] == (stored_size, stored_size):
    return image
  return face_crop.crop_face(image, None, size=stored_size)


@functools.partial(jax.jit, static_argnames=("preprocessing",))
def _normalize(crops: jax.Array, preprocessing: str) -> jax.Array:
  return augment.normalize(crops, preprocessing)


@functools.partial(jax.jit, static_argnames=("graphdef", "flip_tta"))
def _predict_batch(params: Any, batch_stats: Any, x: jax.Array, *, graphdef: nnx.GraphDef,
                   flip_tta: bool) -> tuple[jax.Array, jax.Array]:
  """Ages and spreads of one batch of network inputs (the one forward pass).

  Module level with the structure static: predictors of the same network
  (a model loaded again, every ``agejax.predict`` call in one process) share
  one compilation.
  """
  model = models.merge_state(graphdef, params, batch_stats)
  age, spread, _ = forward.predict(model, x, flip_tta=flip_tta)
  return age, spread


class Crops:
  """What every predictor shares: the crop rule and :meth:`prepare`.

  Attributes:
    meta: the model's model.json contents.
    margin: face-box margin the training crops used (for ``crop_face``).
    stored_size: side the training crops were stored at.
    image_size: the network's input side.
    batch_size: crops per call of the network.
  """

  def __init__(self, meta: dict[str, Any], batch_size: int):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.meta = meta
    self.margin = float(meta["crop"]["margin"])
    self.stored_size = int(meta["crop"]["stored_size"])
    self.image_size = int(meta["image_size"])
    self.batch_size = int(batch_size)

  def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """uint8 [N, stored, stored, 3]: each crop resized as the dataset was built."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
      raise ValueError(f"expected a batch [N, H, W, 3] or a list of [H, W, 3] crops, "
                       f"got shape {images.shape}")
    stored = [to_stored(image, self.stored_size) for image in images]
    if not stored:
      return np.zeros((0, self.stored_size, self.stored_size, 3), np.uint8)
    return np.stack(stored)

  def _predict_stored(self, stored: np.ndarray) -> tuple[Any, Any]:
    """Ages and spreads of one full batch of uint8 stored-size crops."""
    raise NotImplementedError

  def __call__(self, images: np.ndarray | Sequence[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Ages and spreads (float32 [N]) of uint8 RGB face crops.

    Args:
      images: uint8 [N, H, W, 3], or a list of [H, W, 3] crops of any sizes.
    """
    x = self.prepare(images)
    ages, spreads = [], []
    for start in range(0, len(x), self.batch_size):
      chunk = x[start:start + self.batch_size]
      rows = len(chunk)
      if rows < self.batch_size:  # one batch shape, one compilation; eval rows are independent
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - rows, *chunk.shape[1:]),
                                                np.uint8)])
      age, spread = self._predict_stored(chunk)
      ages.append(np.asarray(age)[:rows])
      spreads.append(np.asarray(spread)[:rows])
    if not ages:
      return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return (np.concatenate(ages).astype(np.float32),
            np.concatenate(spreads).astype(np.float32))


class Predictor(Crops):
  """Age and spread of face crops, from a bundle's ``model.json`` and weights.

  Attributes:
    meta: the bundle's model.json contents.
    margin: face-box margin the training crops used (for ``crop_face``).
    stored_size: side the training crops were stored at.
    image_size: the network's input side.
    batch_size: crops per compiled batch.
  """

  def __init__(self, meta: dict[str, Any], params: Any, batch_stats: Any,
               batch_size: int = DEFAULT_BATCH_SIZE):
    super().__init__(meta, batch_size)
    self._preprocessing = str(meta["preprocessing"])
    augment.normalize(np.zeros([3], np.uint8), self._preprocessing)  # fail early
    model_cfg = ml_collections.ConfigDict(meta["model"])
    self._graphdef = models.split_state(nnx.eval_shape(
        lambda: models.build_model(model_cfg, self.image_size, nnx.Rngs(0))))[0]
    self._params = jax.tree.map(jnp.asarray, params)
    self._batch_stats = jax.tree.map(jnp.asarray, batch_stats or {})
    self._flip_tta = bool(meta.get("flip_tta", False))

  def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """The float32 network input of uint8 RGB face crops (as :meth:`prepare` takes)."""
    return np.asarray(self._network_input(self.prepare(images)))

  def _network_input(self, stored: np.ndarray) -> jax.Array:
    crops = eval_crop(stored, self.image_size, self.stored_size)
    return _normalize(jnp.asarray(crops), self._preprocessing)

  def _predict_stored(self, stored: np.ndarray) -> tuple[Any, Any]:
    x = self._network_input(stored)
    return _predict_batch(self._params, self._batch_stats, x, graphdef=self._graphdef,
                          flip_tta=self._flip_tta)


class RuntimePredictor(Crops):
  """:class:`Predictor`'s interface over a SavedModel, TFLite or ONNX export.

  Crops go to the stored size exactly as for a bundle (``to_stored``); the
  centre crop, normalisation and network run in the exported graph.
  """

  def __init__(self, meta: dict[str, Any], run: Any, batch_size: int = DEFAULT_BATCH_SIZE):
    fixed = meta["export"]["input"]["shape"][0]  # a fixed-batch export takes only that
    super().__init__(meta, fixed if isinstance(fixed, int) else batch_size)
    self._run = run

  def _predict_stored(self, stored: np.ndarray) -> tuple[Any, Any]:
    out = self._run(stored)
    return out["age"], out["spread"]


def load(path: str, checkpoint: str = "best",
         batch_size: int = DEFAULT_BATCH_SIZE) -> Predictor:
  """A predictor from an exported model or a training workdir.

  Args:
    path: a directory with ``model.json`` (``agejax.export``'s output, any
      format: a bundle runs in JAX, the others in their own runtime) or a
      training workdir (its ``config.json`` and checkpoints).
    checkpoint: workdir only: ``best``, ``latest`` or a step number.
    batch_size: crops per compiled batch.

  Raises:
    FileNotFoundError: ``path`` is neither.
  """
  if bundle.is_bundle(path):
    from agejax.serving import runtimes  # pylint: disable=import-outside-toplevel
    if runtimes.runtime_of(runtimes.read_meta(path)) != "bundle":
      return RuntimePredictor(*runtimes.load(path), batch_size=batch_size)
    return Predictor(*bundle.read(path), batch_size=batch_size)
  # Imported here: a bundle needs neither the training code nor TFDS.
  from agejax.serving import exporters  # pylint: disable=import-outside-toplevel
  from agejax.workdir import restore  # pylint: disable=import-outside-toplevel
  from agejax.workdir import run_config  # pylint: disable=import-outside-toplevel

  if not run_config.exists(path):
    raise FileNotFoundError(f"{path} holds neither an exported model ({bundle.MODEL_FILE}) "
                            f"nor a training run ({run_config.CONFIG_FILE})")
  trained = restore.load_trained(path, checkpoint)
  meta = bundle.metadata(trained.config, trained.step, workdir=path, checkpoint=checkpoint,
                         crop=exporters.crop_rule(trained.config.data))
  return Predictor(meta, trained.params, trained.batch_stats, batch_size=batch_size)
