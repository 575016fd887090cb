"""Per-example predictions over a dataset split, and the metrics of them.

One compiled forward function (:func:`make_forward`) and one host-side
collection loop (:func:`predict_split`) serve in-training validation and
``agejax.evaluate``; :func:`scalar_metrics` turns the rows into the numbers
both write, through the one metrics module, ``agejax.evaluation.age_metrics``.
So the validation MAE that picks the best checkpoint is bit for bit the MAE
``agejax.evaluate --checkpoint=best`` reports (same weights, batch size and
TTA).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from agejax import models
from agejax import terminal
from agejax import device_mesh
from agejax.evaluation import age_card
from agejax.evaluation import age_metrics
from agejax.models import forward

# The rows make_forward returns for every example of a padded batch.
ROWS = ("pred", "spread", "loss", "true", "std", "mask", "index")


@functools.lru_cache(maxsize=8)
def make_forward(graphdef: Any, flip_tta: bool, mesh: Mesh) -> Callable[..., dict[str, jax.Array]]:
  """``forward(params, batch_stats, batch) -> rows``, compiled once per network.

  The outputs are replicated: every process gets every row, a few floats
  per example.
  """
  def rows(params: Any, batch_stats: Any, batch: Mapping[str, jax.Array]
           ) -> dict[str, jax.Array]:
    model = models.merge_state(graphdef, params, batch_stats)
    age, spread, outputs = forward.predict(model, batch["image"], flip_tta=flip_tta)
    return {"pred": age, "spread": spread, "loss": model.head.loss(outputs, batch["age"]),
            "true": batch["age"], "std": batch["age_std"], "mask": batch["mask"],
            "index": batch["index"]}

  return jax.jit(rows, out_shardings=NamedSharding(mesh, P()))


def predict_split(forward_fn: Callable[..., dict[str, jax.Array]], params: Any,
                  batch_stats: Any, data: ml_collections.ConfigDict,
                  model_cfg: ml_collections.ConfigDict, mesh: Mesh,
                  batch_size: int, batch_key: str = "train.batch_size",
                  max_examples: int = 0, show_progress: bool = False
                  ) -> dict[str, np.ndarray]:
  """Every example of ``data.eval_split``: arrays of :data:`ROWS` less ``mask``.

  All float32 but ``index``, the int64 stored-order position of each example
  (``agejax.evaluation.attributes`` joins the dataset's other features on it).

  ``batch_key`` is the config key or flag named when ``batch_size`` does not
  divide over the devices. ``max_examples`` > 0: about that many examples,
  the first of every process's part of the split, the same ones at every call.
  ``show_progress``: a bar over the batches on a terminal (``agejax.evaluate``).
  """
  from agejax.data import input_pipeline  # pylint: disable=import-outside-toplevel

  device_mesh.check_batch(batch_key, batch_size, mesh)
  dataset = input_pipeline.create_split(data, model_cfg, data.eval_split, train=False,
                                  batch_size=batch_size, max_examples=max_examples)
  parts = []
  with input_pipeline.device_batches(dataset, NamedSharding(mesh, P("data")),
                               data.prefetch, data, data.eval_split) as batches:
    show = show_progress and jax.process_index() == 0
    total = math.ceil(input_pipeline.num_examples(data, data.eval_split) / batch_size) if show else None
    bar = terminal.progress(total=total, desc=data.eval_split, unit="batch", enabled=show)
    for batch in batches:
      parts.append(forward_fn(params, batch_stats, batch))
      bar.update()
    bar.close()
  rows = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
  keep = rows.pop("mask").astype(bool)
  return {k: v[keep].astype(np.int64 if k == "index" else np.float32)
          for k, v in rows.items()}


def scalar_metrics(rows: Mapping[str, np.ndarray], with_std: bool = False) -> dict[str, float]:
  """The scalars of :func:`agejax.evaluation.age_metrics.summarize`, plus mean loss and spread.

  Also the mean error (bias) and the example count of each of the age card's
  default bands that has examples, as ``band_bias/<band>`` and
  ``band_n/<band>`` (``band_bias/0-12``): what the report's
  ``extremes_biased`` reads.
  """
  summary = age_metrics.summarize(rows["pred"], rows["true"],
                                  rows["std"] if with_std else None)
  out = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
  out["loss"] = float(np.mean(rows["loss"], dtype=np.float64))
  out["spread"] = float(np.mean(rows["spread"], dtype=np.float64))
  out["count"] = float(summary["n"])
  true = np.asarray(rows["true"], np.float64)
  for band in age_card.DEFAULT_BANDS:
    where = age_card.in_band(true, band)
    if where.any():
      label = age_card.band_label(band)
      out[f"band_bias/{label}"] = age_metrics.mean_error(rows["pred"][where],
                                                         rows["true"][where])
      out[f"band_n/{label}"] = float(where.sum())
  return out
