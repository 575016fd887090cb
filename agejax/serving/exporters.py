"""A trained run's checkpoint written as a bundle (``agejax.serving.bundle``).

The crop rule comes from the training dataset's TFDS builder config (its
``margin`` and the stored image shape). Builders without a margin (the
releases that ship their own crops) and datasets TFDS cannot find get
``face_crop``'s defaults, and ``crop.source`` says so; ``margin`` and
``stored_size`` override both.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from agejax.errors import ExportMismatch
from agejax.data import face_crop
from agejax.serving import bundle
from agejax.serving import runtimes


def crop_rule(data_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """``{"margin", "stored_size", "source"}`` of the images ``data_cfg`` names."""
  # Imported here: only a workdir needs the dataset code, a bundle never does.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from agejax.data import catalog  # pylint: disable=g-import-not-at-top

  try:
    catalog.register_builders()
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


def export(workdir: str, output: str, checkpoint: str = "best", *,
           margin: float | None = None, stored_size: int | None = None,
           overwrite: bool = False, fmt: str = "bundle", quantize: str = "none",
           batch: int | None = None, verify: bool = True) -> dict[str, Any]:
  """Exports ``workdir``'s checkpoint ``checkpoint`` to ``output`` as ``fmt``.

  Returns the written model.json; for runtime formats with ``verify`` it
  has (and the file keeps) ``verification`` (``formats.verify``'s result), and a float model
  whose ages are further than ``formats.TOLERANCE`` from JAX's raises. A
  quantised model's ``verification`` also has ``heldout``: its MAE and the
  float JAX model's on the run's validation split (``formats.heldout_mae``),
  or ``{"skipped": why}`` where that split cannot be read here.
  """
  from agejax.serving import formats  # pylint: disable=g-import-not-at-top
  from agejax.workdir import restore  # pylint: disable=g-import-not-at-top

  if fmt not in formats.FORMATS:
    raise ValueError(f"unknown --format {fmt!r}; use one of {', '.join(formats.FORMATS)}")
  if bundle.is_bundle(workdir):
    return _export_bundle(workdir, output, margin=margin, stored_size=stored_size,
                          overwrite=overwrite, fmt=fmt, quantize=quantize, batch=batch,
                          verify=verify)
  trained = restore.load_trained(workdir, checkpoint)
  crop = crop_rule(trained.config.data)
  if margin is not None:
    crop["margin"] = float(margin)
    crop["source"] += " + --margin"
  if stored_size is not None:
    crop["stored_size"] = int(stored_size)
    crop["source"] += " + --stored_size"
  meta = bundle.metadata(trained.config, trained.step, workdir=workdir,
                         checkpoint=checkpoint, crop=crop)
  if fmt == "bundle":
    bundle.write(output, meta, trained.params, trained.batch_stats, overwrite=overwrite)
    return meta
  meta = formats.export(meta, trained.params, trained.batch_stats, output, fmt,
                        quantize=quantize, batch=batch, overwrite=overwrite)
  if verify:
    _verify(output, meta, trained.params, trained.batch_stats, fmt, quantize,
            lambda: _heldout(output, trained))
  return meta


def _verify(output: str, meta: dict[str, Any], params: Any, batch_stats: Any, fmt: str,
            quantize: str, heldout: Any) -> None:
  """Adds ``verification`` to ``meta`` and the written model.json; raises on a mismatch.

  ``heldout()`` gives a quantised model's held-out MAE record.
  """
  from agejax.serving import formats  # pylint: disable=g-import-not-at-top

  meta["verification"] = formats.verify(output, params, batch_stats)
  if quantize != "none":
    meta["verification"]["heldout"] = heldout()
  formats.write_meta(output, meta)  # what was checked travels with the model
  if not meta["verification"]["passed"]:
    raise ExportMismatch(f"{output}: {fmt} ages differ from JAX's by up to "
                         f"{meta['verification']['max_abs_age']:.2g} years (tolerance "
                         f"{formats.TOLERANCE}); the export is kept for inspection")


def _export_bundle(path: str, output: str, *, margin: float | None, stored_size: int | None,
                   overwrite: bool, fmt: str, quantize: str, batch: int | None,
                   verify: bool) -> dict[str, Any]:
  """A bundle (``agejax.convert --bundle``, or an exported run) in a runtime format."""
  from agejax.serving import formats  # pylint: disable=g-import-not-at-top

  meta, params, batch_stats = bundle.read(path)
  if runtimes.runtime_of(meta) != "bundle":
    raise ValueError(f"{path} is a {runtimes.runtime_of(meta)} export, not a bundle: export "
                     "from the bundle or the run it came from")
  if fmt == "bundle":
    raise ValueError(f"{path} is already a bundle; choose --format=saved_model, tflite or onnx")
  meta = {k: v for k, v in meta.items() if k not in ("export", "verification")}
  meta["crop"] = dict(meta["crop"])
  if margin is not None:
    meta["crop"].update(margin=float(margin), source=meta["crop"]["source"] + " + --margin")
  if stored_size is not None:
    meta["crop"].update(stored_size=int(stored_size),
                        source=meta["crop"]["source"] + " + --stored_size")
  meta = formats.export(meta, params, batch_stats, output, fmt, quantize=quantize, batch=batch,
                        overwrite=overwrite)
  if verify:
    _verify(output, meta, params, batch_stats, fmt, quantize,
            lambda: {"split": "", "skipped": "a bundle has no validation split; export from "
                     "its run to measure one"})
  return meta


def _heldout(output: str, trained: Any) -> dict[str, Any]:
  from agejax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from agejax.serving import formats  # pylint: disable=g-import-not-at-top

  data_cfg = trained.config.data
  try:
    return formats.heldout_mae(output, trained.params, trained.batch_stats, data_cfg,
                               data_cfg.eval_split)
  except ConfigError as e:  # the dataset is not on this machine: say so, keep the export
    return {"split": data_cfg.eval_split, "skipped": str(e)}
