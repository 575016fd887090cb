"""The export bundle: the one module that knows its format.

A bundle directory holds:

* ``params/``: an orbax PyTree checkpoint of ``{"params", "batch_stats"}``
  (the EMA parameters when the run kept an EMA: those are what it
  evaluated; no ``batch_stats`` for networks without BatchNorm);
* ``model.json``: everything else prediction needs, so that neither the
  training config nor the dataset is needed to serve it:

  * ``format`` (``agejax-model``) and ``format_version``; ``agejax_version``;
  * ``model``: the run's ``model`` config section (rebuilds the network);
  * ``image_size``, ``preprocessing``, ``flip_tta``: the evaluation input;
  * ``crop``: ``margin`` and ``stored_size`` of the face crops the model was
    trained on, and where they were read (``source``);
  * ``head``, ``min_age``, ``max_age``, ``ema``; ``source``: the workdir,
    checkpoint step and dataset it came from;
  * ``interval`` (when the run has one for this checkpoint): the calibrated
    interval's method, coverage, quantile and formula
    (:mod:`agejax.evaluation.intervals`).

``model.json`` is written last: a directory with one is a complete bundle.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

import agejax
from agejax import json_files
from agejax.evaluation import intervals
from agejax.serving import runtimes

FORMAT = "agejax-model"
VERSION = 1
PARAMS_DIR = "params"


def is_bundle(path: str) -> bool:
  return os.path.exists(os.path.join(path, runtimes.MODEL_FILE))


def metadata(cfg: ml_collections.ConfigDict, step: int, *, workdir: str = "",
             checkpoint: str = "", crop: dict[str, Any]) -> dict[str, Any]:
  """The ``model.json`` of a run's config and checkpoint step (and the run's interval)."""
  meta = {
      "format": FORMAT,
      "format_version": VERSION,
      "agejax_version": agejax.__version__,
      "model": cfg.model.to_dict(),
      "image_size": int(cfg.data.image_size),
      "preprocessing": str(cfg.model.preprocessing),
      "flip_tta": bool(cfg.data.eval_flip_tta),
      "crop": crop,
      "head": str(cfg.model.head),
      "min_age": int(cfg.model.min_age),
      "max_age": int(cfg.model.max_age),
      "ema": bool(cfg.optim.ema_decay > 0),
      "source": {"workdir": os.path.abspath(workdir) if workdir else "",
                 "checkpoint": checkpoint, "step": int(step),
                 "dataset": str(cfg.data.dataset)},
  }
  interval, _ = (intervals.fitted_for(workdir, step, bool(cfg.data.eval_flip_tta))
                 if workdir else (None, ""))
  if interval is not None:
    meta["interval"] = interval
  return meta


def write(output: str, meta: dict[str, Any], params: Any, batch_stats: Any,
                 overwrite: bool = False) -> str:
  """Writes ``output/model.json`` and ``output/params``; returns ``output``.

  Raises:
    FileExistsError: ``output`` already holds a bundle and not ``overwrite``.
  """
  output = os.path.abspath(output)
  params_dir = os.path.join(output, PARAMS_DIR)
  meta_file = os.path.join(output, runtimes.MODEL_FILE)
  if os.path.exists(params_dir) or os.path.exists(meta_file):
    if not overwrite:
      raise FileExistsError(f"{output} already holds an exported model (use --overwrite)")
    # Only the two entries a bundle consists of: never anything else in there.
    shutil.rmtree(params_dir, ignore_errors=True)
    if os.path.exists(meta_file):
      os.remove(meta_file)
  os.makedirs(output, exist_ok=True)
  to_host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))
  # VGG has no BatchNorm: orbax stores no empty subtree, and the loader
  # reads an absent "batch_stats" as {}.
  tree = {"params": to_host(params)}
  if jax.tree.leaves(batch_stats):
    tree["batch_stats"] = to_host(batch_stats)
  ocp.PyTreeCheckpointer().save(params_dir, tree)
  # model.json last: a bundle with a model.json is a complete one.
  json_files.write_json(meta_file, meta, sort_keys=True)
  return output


def read(path: str) -> tuple[dict[str, Any], Any, Any]:
  """``(model.json, params, batch_stats)`` of an exported bundle."""
  path = os.path.abspath(path)
  meta = runtimes.read_meta(path)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}/{runtimes.MODEL_FILE} is not an agejax model bundle")
  if "export" in meta:
    raise ValueError(f"{path} holds a {meta['export']['format']} export, not a bundle; "
                     f"agejax.inference.load reads both")
  if meta.get("format_version", 0) > VERSION:
    raise ValueError(f"{path} is bundle format {meta['format_version']}; this "
                     f"agejax reads up to {VERSION}")
  checkpointer = ocp.PyTreeCheckpointer()
  params_dir = os.path.join(path, PARAMS_DIR)
  # Plain numpy leaves: a bundle moves between machines, and the device
  # layout recorded where it was written means nothing on another one.
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          checkpointer.metadata(params_dir).item_metadata)
  tree = checkpointer.restore(params_dir, restore_args=as_numpy)
  return meta, tree["params"], tree.get("batch_stats") or {}




def from_imported(imported: Any, output: str, source_file: str, image_size: int,
                  overwrite: bool = False) -> str:
  """A bundle of an imported network that brings its age head (DEX's Caffe nets).

  The crop rule is the file's margin (DEX: 40%) stored at agejax's crop size
  for the input (256 for 224, as the builders store), centre-cropped to the
  network's input. Raises ``WeightImportError`` for a backbone without a head.
  """
  # pylint: disable=import-outside-toplevel
  from agejax import models
  from agejax.config import defaults
  from agejax.data import face_crop
  from agejax.pretrained import features
  from agejax.pretrained.types import WeightImportError

  if not imported.head:
    raise WeightImportError(f"{source_file}: a {imported.source} {imported.arch} backbone has "
                            "no age head to serve; train a run from it and export that")
  cfg = defaults.default_config()
  cfg.model = features.model_config(imported)
  cfg.data.image_size = int(image_size)
  cfg.data.dataset = ""
  margin = face_crop.DEFAULT_MARGIN if imported.margin is None else float(imported.margin)
  crop = {"margin": margin, "stored_size": int(image_size) * face_crop.DEFAULT_SIZE // 224,
          "source": f"{imported.source} import: the file's margin, agejax's crop size"}
  meta = metadata(cfg, 0, crop=crop)
  meta["source"]["file"] = os.path.abspath(source_file)
  _, params, batch_stats = models.split_state(features.backbone(imported, image_size))
  return write(output, meta, params, batch_stats, overwrite=overwrite)
