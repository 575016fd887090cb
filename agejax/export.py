r"""A trained model as a self-contained bundle for prediction.

  python -m agejax.export --workdir DIR --output OUT [--checkpoint best|latest|STEP]

``OUT/params`` is an orbax PyTree checkpoint of ``{"params", "batch_stats"}``
(the EMA parameters when the run kept an EMA: those are what it evaluated).
``OUT/model.json`` holds everything else prediction needs, so
``agejax.inference.load(OUT)`` and ``python -m agejax.predict --model OUT``
need neither the training config nor the dataset:

* ``model``: the run's ``model`` config section (rebuilds the network);
* ``image_size``, ``preprocessing``, ``flip_tta``: the evaluation input;
* ``crop``: ``margin`` and ``stored_size`` of the face crops the model was
  trained on, and where they were read (``source``);
* ``head``, ``min_age``, ``max_age``; ``agejax_version``; ``source``: the
  workdir, checkpoint step and dataset it came from.

The crop rule comes from the training dataset's TFDS builder config (its
``margin`` and the stored image shape). Builders without a margin (the
releases that ship their own crops) and datasets TFDS cannot find get
``face_crop``'s defaults, and ``crop.source`` says so; ``--margin`` and
``--stored_size`` override both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

import agejax
from agejax import face_crop
from agejax import inference


def crop_rule(data_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """``{"margin", "stored_size", "source"}`` of the images ``data_cfg`` names."""
  # Imported here: only a workdir needs the dataset code, a bundle never does.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from agejax import datasets  # pylint: disable=g-import-not-at-top

  try:
    datasets.register_builders()
    builder = tfds.builder(data_cfg.dataset, data_dir=data_cfg.data_dir or None,
                           try_gcs=False)
  except Exception as e:  # pylint: disable=broad-except
    # An unknown or unregistered name must not block an export: the defaults
    # are the rule every crop-making builder here uses unless told otherwise.
    return {"margin": face_crop.DEFAULT_MARGIN, "stored_size": face_crop.DEFAULT_SIZE,
            "source": f"defaults (dataset {data_cfg.dataset!r} not found: "
                      f"{type(e).__name__})"}
  config = builder.builder_config
  margin = getattr(config, "margin", None)
  shape = builder.info.features["image"].shape
  stored = shape[0] if shape[0] is not None and shape[0] == shape[1] else None
  stored = stored or getattr(config, "image_size", None)
  source = f"{data_cfg.dataset} builder config"
  if margin is None or stored is None:
    source += " + defaults for " + " and ".join(
        k for k, v in (("margin", margin), ("stored_size", stored)) if v is None)
  return {"margin": float(face_crop.DEFAULT_MARGIN if margin is None else margin),
          "stored_size": int(stored or face_crop.DEFAULT_SIZE), "source": source}


def metadata(cfg: ml_collections.ConfigDict, step: int, *, workdir: str = "",
             checkpoint: str = "", crop: dict[str, Any] | None = None) -> dict[str, Any]:
  """The ``model.json`` of a run's config and checkpoint step."""
  return {
      "format": inference.BUNDLE_FORMAT,
      "format_version": inference.BUNDLE_VERSION,
      "agejax_version": agejax.__version__,
      "model": cfg.model.to_dict(),
      "image_size": int(cfg.data.image_size),
      "preprocessing": str(cfg.model.preprocessing),
      "flip_tta": bool(cfg.data.eval_flip_tta),
      "crop": crop if crop is not None else crop_rule(cfg.data),
      "head": str(cfg.model.head),
      "min_age": int(cfg.model.min_age),
      "max_age": int(cfg.model.max_age),
      "ema": bool(cfg.optim.ema_decay > 0),
      "source": {"workdir": os.path.abspath(workdir) if workdir else "",
                 "checkpoint": checkpoint, "step": int(step),
                 "dataset": str(cfg.data.dataset)},
  }


def write_bundle(output: str, meta: dict[str, Any], params: Any, batch_stats: Any,
                 overwrite: bool = False) -> str:
  """Writes ``output/model.json`` and ``output/params``; returns ``output``.

  Raises:
    FileExistsError: ``output`` already holds a bundle and not ``overwrite``.
  """
  output = os.path.abspath(output)
  params_dir = os.path.join(output, inference.PARAMS_DIR)
  meta_file = os.path.join(output, inference.MODEL_FILE)
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
  with open(meta_file, "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write("\n")
  return output


def export(workdir: str, output: str, checkpoint: str = "best", *,
           margin: float | None = None, stored_size: int | None = None,
           overwrite: bool = False) -> dict[str, Any]:
  """Exports ``workdir``'s checkpoint ``checkpoint`` to ``output``; returns model.json."""
  from agejax import restore  # pylint: disable=g-import-not-at-top

  trained = restore.load_trained(workdir, checkpoint)
  crop = crop_rule(trained.config.data)
  if margin is not None:
    crop["margin"] = float(margin)
    crop["source"] += " + --margin"
  if stored_size is not None:
    crop["stored_size"] = int(stored_size)
    crop["source"] += " + --stored_size"
  meta = metadata(trained.config, trained.step, workdir=workdir,
                  checkpoint=checkpoint, crop=crop)
  write_bundle(output, meta, trained.params, trained.batch_stats, overwrite=overwrite)
  return meta


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m agejax.export",
      description="Write a trained run's model as a bundle agejax.predict --model reads.")
  parser.add_argument("--workdir", required=True, help="training run directory")
  parser.add_argument("--output", required=True, help="bundle directory to write")
  parser.add_argument("--checkpoint", default="best",
                      help="best (lowest validation MAE), latest, or a step number")
  parser.add_argument("--margin", type=float, default=None,
                      help="face box margin per side (default: the dataset's)")
  parser.add_argument("--stored_size", type=int, default=None,
                      help="side of the stored face crops (default: the dataset's)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a bundle already in --output")
  args = parser.parse_args(argv)
  try:
    meta = export(args.workdir, args.output, args.checkpoint, margin=args.margin,
                  stored_size=args.stored_size, overwrite=args.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"export failed: {e}", file=sys.stderr)
    return 1
  crop = meta["crop"]
  print(f"exported {meta['model']['arch']} ({meta['head']} head) from step "
        f"{meta['source']['step']} of {args.workdir} to {os.path.abspath(args.output)}")
  print(f"input: face crops with margin {crop['margin']} stored at {crop['stored_size']} px "
        f"({crop['source']}), centre {meta['image_size']} px, {meta['preprocessing']} "
        f"preprocessing")
  return 0


if __name__ == "__main__":
  sys.exit(main())
