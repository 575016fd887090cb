"""Ages from face crops, through the serving function the exports are traced from.

``load(path)`` takes an exported model (``agejax.export``, any format) or a
training workdir and returns a :class:`Predictor`::

  predictor = inference.load("/models/dex")
  ages, spreads = predictor(crops)  # uint8 RGB face crops, any size

A crop not at the dataset's stored size is first resized to it with
``eval_input.to_stored``, the serving function's own first step, compiled
once per crop size; then batches of stored crops go through the serving
function (``agejax.serving.graph``: centre crop, normalisation, network) in
JAX, or through the exported graph in its runtime. So a workdir, its bundle
and every export give the same ages for crops of any size
(``tests/test_formats.py``, to 1e-4 years).

The network is compiled once per model: every call runs fixed-size batches
of ``batch_size`` crops, the last one padded, so a new number of faces never
triggers a new compilation, and predictors of the same network share it.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agejax.data import eval_input
from agejax.serving import bundle
from agejax.serving import graph
from agejax.evaluation import intervals
from agejax.serving import runtimes

DEFAULT_BATCH_SIZE = 16


@functools.partial(jax.jit, static_argnames=("stored",))
def _to_stored(image: jax.Array, stored: int) -> jax.Array:
  return eval_input.to_stored(image, stored).astype(jnp.uint8)


def to_stored(image: np.ndarray, stored_size: int) -> np.ndarray:
  """One uint8 RGB crop [H, W, 3] as the serving function sees it: ``stored_size`` square."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"face crops must be uint8 RGB [H, W, 3], got {image.dtype} "
                     f"{image.shape}")
  if image.shape[:2] == (stored_size, stored_size):
    return image
  return np.asarray(_to_stored(image[None], stored_size))[0]


@functools.lru_cache(maxsize=16)
def _compiled_serving(serving_meta: str) -> Callable[..., tuple[jax.Array, jax.Array]]:
  serve = graph.serving_function(json.loads(serving_meta))

  def ages(params: Any, batch_stats: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    out = serve(params, batch_stats, images)
    return out["age"], out["spread"]

  return jax.jit(ages)


def compiled_serving(meta: dict[str, Any]) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """``jit(serve)`` of ``meta``'s serving function, returning (ages, spreads)."""
  # Predictors of one network share one compilation whatever else their model.json says.
  return _compiled_serving(graph.serving_key(meta))


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

  @property
  def interval(self) -> dict[str, Any] | None:
    """The model's calibrated interval (``model.json``'s ``interval``), or None."""
    return self.meta.get("interval")

  def age_intervals(self, ages: np.ndarray, spreads: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(low, high)`` of each age by the model's interval formula; None without one."""
    if self.interval is None:
      return None
    return intervals.bounds(ages, spreads, self.interval, self.meta["min_age"],
                            self.meta["max_age"])

  def write_ages(self, faces: Sequence[dict[str, Any]], ages: np.ndarray,
                 spreads: np.ndarray) -> None:
    """Sets each face record's ``age`` and ``spread`` and, with a calibrated
    model, its ``interval`` and ``coverage`` (one interval call for all)."""
    bounds = self.age_intervals(np.asarray(ages, np.float32), np.asarray(spreads, np.float32))
    for i, face in enumerate(faces):
      face["age"], face["spread"] = float(ages[i]), float(spreads[i])
      if bounds is not None:
        face["interval"] = [float(bounds[0][i]), float(bounds[1][i])]
        face["coverage"] = float(self.interval["coverage"])

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
    self._serve = compiled_serving(meta)
    self._params = jax.tree.map(jnp.asarray, params)
    self._batch_stats = jax.tree.map(jnp.asarray, batch_stats or {})

  def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """The float32 network input of uint8 RGB face crops (as :meth:`prepare` takes)."""
    return np.asarray(_network_input(jnp.asarray(self.prepare(images)), self.image_size,
                                     self.stored_size, str(self.meta["preprocessing"])))

  def _predict_stored(self, stored: np.ndarray) -> tuple[Any, Any]:
    return self._serve(self._params, self._batch_stats, stored)


_network_input = jax.jit(eval_input.network_input,
                         static_argnames=("image_size", "stored", "preprocessing"))


class RuntimePredictor(Crops):
  """:class:`Predictor`'s interface over a SavedModel, TFLite or ONNX export.

  Crops go to the stored size exactly as for a bundle (``to_stored``, the
  serving function's own resize); the centre crop, normalisation and network
  run in the exported graph.
  """

  def __init__(self, meta: dict[str, Any], run: Any, batch_size: int = DEFAULT_BATCH_SIZE):
    fixed = meta["export"]["input"]["shape"][0]  # a fixed-batch export takes only that
    super().__init__(meta, fixed if isinstance(fixed, int) else batch_size)
    self._run = run

  def _predict_stored(self, stored: np.ndarray) -> tuple[Any, Any]:
    out = self._run(stored)
    return out["age"], out["spread"]


def load(path: str, checkpoint: str = "best",
         batch_size: int = DEFAULT_BATCH_SIZE, trust_model: bool = False) -> Predictor:
  """A predictor from an exported model or a training workdir.

  Args:
    path: a directory with ``model.json`` (``agejax.export``'s output, any
      format: a bundle runs in JAX, the others in their own runtime) or a
      training workdir (its ``config.json`` and checkpoints).
    checkpoint: workdir only: ``best``, ``latest`` or a step number.
    batch_size: crops per compiled batch.
    trust_model: run a SavedModel without checking its ops
      (:mod:`agejax.serving.model_safety`).

  Raises:
    FileNotFoundError: ``path`` is neither.
  """
  if bundle.is_bundle(path):
    if runtimes.runtime_of(runtimes.read_meta(path)) != "bundle":
      return RuntimePredictor(*runtimes.load(path, trust=trust_model), batch_size=batch_size)
    return Predictor(*bundle.read(path), batch_size=batch_size)
  # Imported here: a bundle needs neither the training code nor TFDS.
  from agejax.serving import exporters  # pylint: disable=import-outside-toplevel
  from agejax.workdir import restore  # pylint: disable=import-outside-toplevel
  from agejax.workdir import run_config  # pylint: disable=import-outside-toplevel

  if not run_config.exists(path):
    raise FileNotFoundError(f"{path} holds neither an exported model ({runtimes.MODEL_FILE}) "
                            f"nor a training run ({run_config.CONFIG_FILE})")
  trained = restore.load_trained(path, checkpoint)
  meta = bundle.metadata(trained.config, trained.step, workdir=path, checkpoint=checkpoint,
                         crop=exporters.crop_rule(trained.config.data))
  return Predictor(meta, trained.params, trained.batch_stats, batch_size=batch_size)
