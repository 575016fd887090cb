r"""Evaluates a trained run's checkpoint on one or more dataset splits.

The library behind

  python -m agejax.evaluate --workdir=DIR [--checkpoint=best|latest|STEP] \
      [--dataset=NAME:SPLIT ...] [--tta=none|flip] [--data_dir=D] \
      [--label=FEATURE] [--label_std=FEATURE] [--batch_size=B] \
      [--bands=0-12,13-17,...,65+] [--attribute=FEATURE ...] [--resamples=1000] \
      [--calibrate_on=SPLIT|NAME:SPLIT] [--coverage=0.9]

``--dataset`` defaults to the run's ``data.dataset`` with ``data.eval_split``.
NAME is a TFDS name with an optional config and version
(``appa_real``, ``imdb_wiki/clean``, ``imdb_wiki/clean:1.0.0``); the LAST
``:`` outside square brackets separates the split, so split slices work
(``appa_real:test[:50%]``). Without any ``:`` the run's ``data.eval_split``
is used.

Labels. On the run's own dataset the run's ``data.label`` / ``data.label_std``
are used. On any other dataset the label is the dataset's supervised target
(``apparent_age`` for APPA-REAL, ``age`` elsewhere) and its std the feature
``<label>_std`` when the dataset has one (``apparent_age_std``), so APPA-REAL
gets the ChaLearn epsilon-error by default and a std is never paired with a
label it does not describe. ``--label`` / ``--label_std`` override both (an
empty ``--label_std=`` switches the std off).

Test-time augmentation. ``--tta=flip`` averages the predicted ages (and
spreads) of each image and its mirror image. Averaging the read-out ages
rather than the head outputs works the same for every head (coral's integer
read-out included). Without ``--tta`` the run's ``data.eval_flip_tta`` decides.

The model runs under ``jax.jit`` over the training mesh (batch sharded on
``data``, weights replicated); the per-example predictions come back to the
host replicated, and padding rows are dropped by their mask, so every example
counts once. Process 0 writes, for a stem ``DIR/eval/<dataset>_<split>_<step>``
(``/`` and other characters unfit for file names become ``_``; ``_flip`` is
appended with TTA so both variants can sit side by side):

* ``<stem>.json``: the :func:`agejax.evaluation.age_metrics.summarize` metrics plus
  ``dataset``, ``split``, ``label``, ``label_std``, ``checkpoint_step``,
  ``tta`` (``"none"`` or ``"flip"``), ``card`` (the age card,
  :mod:`agejax.evaluation.age_card`: bands, FATE's MAE 18-30, challenge
  ages, band membership, groups by the dataset's attributes, face size,
  the spread's calibration), ``figures`` and ``predictions``; with
  ``--calibrate_on``, ``calibration``: the interval fitted on that split
  (:mod:`agejax.evaluation.conformal`) and its realised coverage on this
  one, overall and per band, and the mean width;
* ``<stem>_predictions.npz``: ``pred``, ``true``, ``std``, ``spread``, ``loss`` and
  ``index`` (the example's stored-order position), one entry per example;
* ``<stem>_{pred_vs_true,mae_by_age,cs,error_hist,card_bands,card_challenge}.png``
  (and ``<stem>_calibration.png`` with ``--calibrate_on``),
  titled with the run and the dataset;
* the scalars and the same figures in TensorBoard and ``metrics.jsonl`` under
  ``DIR/eval``, tagged ``<dataset>_<split>[_flip]`` at the checkpoint's step;
* with ``--calibrate_on``, ``DIR/calibration.json``: the fitted interval,
  which ``agejax.export`` writes into ``model.json`` for that checkpoint
  (:mod:`agejax.evaluation.intervals`).

Calibration. ``--calibrate_on=validation`` (a split of the run's dataset, or
``NAME:SPLIT``) fits split-conformal intervals at ``--coverage`` on that
split's predictions and measures them on every evaluated split. The
interval records the test-time augmentation it was fitted with, and export
gives it only to a model served the same way.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from agejax import json_files
from agejax import device_mesh
from agejax.data import catalog
from agejax.errors import ConfigError
from agejax.evaluation import age_card
from agejax.evaluation import age_metrics
from agejax.evaluation import attributes
from agejax.evaluation import conformal
from agejax.evaluation import eval_plots
from agejax.evaluation import predictions
from agejax.evaluation import intervals
from agejax.workdir import metric_io
from agejax.workdir import restore
from agejax.workdir import run_config

EVAL_DIR = "eval"
TTA_MODES = ("none", "flip")
# Scalars written to TensorBoard (lists and dicts stay in the JSON).
_SCALARS = ("n", "mae", "rmse", "mean_error", "cs5", "epsilon_error")


def parse_dataset(spec: str, default_split: str) -> tuple[str, str]:
  """``"imdb_wiki/clean:test"`` -> ``("imdb_wiki/clean", "test")``.

  The split follows the last ``:`` outside ``[...]``; without one the split
  is ``default_split``.
  """
  depth, cut = 0, -1
  for i, char in enumerate(spec):
    depth += {"[": 1, "]": -1}.get(char, 0)
    if char == ":" and depth == 0:
      cut = i
  name, split = (spec, default_split) if cut < 0 else (spec[:cut], spec[cut + 1:])
  if not name or not split:
    raise ConfigError("--dataset", f"{spec!r} is not NAME[:SPLIT]")
  return name, split


def file_tag(name: str, split: str, tta: bool) -> str:
  """``<dataset>_<split>[_flip]`` with every character unfit for a file name as ``_``."""
  tag = f"{name}_{split}" + ("_flip" if tta else "")
  return re.sub(r"[^A-Za-z0-9._-]", "_", tag)


def resolve_labels(run_data: ml_collections.ConfigDict, name: str,
                   features: Iterable[str], supervised_label: str | None,
                   label: str | None = None, label_std: str | None = None
                   ) -> tuple[str, str]:
  """``(label, label_std)`` features to read for ``name`` (see the module doc).

  ``label`` / ``label_std`` are the user's overrides (None: not given;
  ``label_std=""``: no std). ``features`` are the dataset's feature names.
  """
  features = set(features)
  own = name == run_data.dataset
  if not label:
    label = run_data.label if own else (
        supervised_label if supervised_label in features else "age")
  if label_std is None:
    if own and label == run_data.label:
      label_std = run_data.label_std
    else:
      label_std = f"{label}_std" if f"{label}_std" in features else ""
  for key, value in (("--label", label), ("--label_std", label_std)):
    if value and value not in features:
      raise ConfigError(key, f"{name} has no feature {value!r} (it has {sorted(features)})")
  return label, label_std


def _data_config(run_cfg: ml_collections.ConfigDict, name: str, split: str,
                 data_dir: str | None, label: str | None,
                 label_std: str | None) -> ml_collections.ConfigDict:
  """The run's ``data`` section pointed at ``name:split`` with its labels."""
  data = run_cfg.data.copy_and_resolve_references()
  data.dataset, data.eval_split = name, split
  if data_dir is not None:
    data.data_dir = data_dir
  catalog.ensure_prepared(data)
  info = catalog.builder(name, data.data_dir).info
  supervised = info.supervised_keys[1] if info.supervised_keys else None
  data.label, data.label_std = resolve_labels(
      run_cfg.data, name, info.features.keys(),
      supervised if isinstance(supervised, str) else None, label, label_std)
  return data


def make_predictor(trained: restore.TrainedModel, tta: bool
                   ) -> Callable[[ml_collections.ConfigDict, int], dict[str, np.ndarray]]:
  """``predict(data_cfg, batch_size)`` -> ``pred``, ``spread``, ``loss``, ``true``, ``std``.

  ``predict`` runs over every example of ``data_cfg.eval_split``. The weights
  are placed and the step compiled once, for all the splits evaluated, by
  the same function in-training validation uses.
  """
  mesh = device_mesh.data_parallel_mesh()
  params, batch_stats = jax.device_put((trained.params, trained.batch_stats),
                                       NamedSharding(mesh, P()))
  forward_fn = predictions.make_forward(trained.graphdef, tta, mesh)

  def predict(data: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
    return predictions.predict_split(forward_fn, params, batch_stats, data,
                                     trained.config.model, mesh, batch_size,
                                     batch_key="--batch_size", show_progress=True)

  return predict


def evaluate_run(workdir: str, which: str | int = "best",
                 datasets: Sequence[str] | None = None,
                 tta: bool | None = False, *, data_dir: str | None = None,
                 label: str | None = None, label_std: str | None = None,
                 batch_size: int | None = None, write_files: bool = True,
                 bands: Sequence[age_card.Band] = age_card.DEFAULT_BANDS,
                 extra_attributes: Sequence[str] = (),
                 resamples: int = age_card.RESAMPLES, calibrate_on: str | None = None,
                 coverage: float = conformal.DEFAULT_COVERAGE) -> dict[str, dict[str, Any]]:
  """Evaluates ``workdir``'s checkpoint ``which`` on each ``NAME:SPLIT`` of ``datasets``.

  Args:
    workdir: a training workdir (config.json and checkpoints/).
    which: ``"best"``, ``"latest"`` or a checkpoint step.
    datasets: ``NAME[:SPLIT]`` specs; None: the run's evaluation split.
    tta: flip test-time augmentation; None: the run's ``data.eval_flip_tta``.
    data_dir: TFDS data_dir; None: the run's ``data.data_dir``.
    label, label_std: feature overrides (module doc); None: the defaults.
    batch_size: global batch; None: the run's ``train.batch_size``.
    write_files: write JSON, predictions, PNGs and TensorBoard (process 0).
    bands: the age card's bands of the true age.
    extra_attributes: dataset features the card also groups by.
    resamples: the card's bootstrap resamples.
    calibrate_on: ``SPLIT`` or ``NAME:SPLIT`` to fit calibrated intervals on
      (saved as the run's ``calibration.json`` when ``write_files``).
    coverage: the intervals' target coverage.

  Returns:
    ``{"NAME:SPLIT": record}``, each record what ``<stem>.json`` holds.
  """
  try:
    trained = restore.load_trained(workdir, str(which))
  except ValueError as e:  # an unknown checkpoint step: the user's choice
    raise ConfigError("--checkpoint", str(e)) from e
  cfg = trained.config
  tta = bool(cfg.data.eval_flip_tta if tta is None else tta)
  batch_size = batch_size or cfg.train.batch_size
  specs = datasets or [f"{cfg.data.dataset}:{cfg.data.eval_split}"]
  write = write_files and jax.process_index() == 0
  out_dir = os.path.join(workdir, EVAL_DIR)
  writer = metric_io.create_writer(out_dir, is_chief=True) if write else None
  predict = make_predictor(trained, tta)
  results = {}
  try:
    interval, calibration_split = None, None
    if calibrate_on:
      # A bare SPLIT names a split of the run's dataset; NAME:SPLIT any other.
      calibration_split = (parse_dataset(calibrate_on, cfg.data.eval_split)
                           if ":" in calibrate_on else (cfg.data.dataset, calibrate_on))
      interval = _fit_interval(predict, _data_config(cfg, *calibration_split, data_dir, label,
                                                     label_std), batch_size, coverage,
                               trained.step, tta)
      if write:
        intervals.save(workdir, interval)
    for spec in specs:
      name, split = parse_dataset(spec, cfg.data.eval_split)
      data = _data_config(cfg, name, split, data_dir, label, label_std)
      rows = predict(data, batch_size)
      names = attributes.available(data, extra_attributes)
      found = attributes.joined(attributes.read(data, split, names), rows["index"])
      card = age_card.age_card(rows["pred"], rows["true"], rows["spread"], found,
                               bands=bands, resamples=resamples)
      record = {"dataset": name, "split": split, "label": data.label,
                "label_std": data.label_std, "checkpoint_step": trained.step,
                "tta": "flip" if tta else "none",
                **age_metrics.summarize(rows["pred"], rows["true"],
                                        rows["std"] if data.label_std else None),
                "card": card}
      if interval is not None:
        record["calibration"] = _measure_interval(
            rows, interval, (name, split) == calibration_split, cfg.model, bands,
            age_card.Bootstrap.over(found.get("identity"), rows["pred"].size, resamples))
      if write:
        _write(record, rows, out_dir, writer, run_config.run_name(workdir))
      results[f"{name}:{split}"] = record
  finally:
    if writer is not None:
      writer.close()
  return results


def _fit_interval(predict: Callable[..., dict[str, np.ndarray]],
                  data: ml_collections.ConfigDict, batch_size: int, coverage: float,
                  step: int, tta: bool) -> dict[str, Any]:
  """The conformal interval fitted on ``data``'s evaluation split (``--calibrate_on``)."""
  rows = predict(data, batch_size)
  try:
    interval = conformal.fit(rows["pred"], rows["true"], rows["spread"], coverage,
                             fitted_on=f"{data.dataset}:{data.eval_split}", step=step)
  except ValueError as e:
    raise ConfigError("--calibrate_on", str(e)) from e
  interval["tta"] = "flip" if tta else "none"
  return interval


def _measure_interval(rows: Mapping[str, np.ndarray], interval: dict[str, Any], in_sample: bool,
                      model: ml_collections.ConfigDict, bands: Sequence[age_card.Band],
                      boot: age_card.Bootstrap) -> dict[str, Any]:
  """A record's ``calibration``: the interval and its coverage on this split."""
  return {"interval": interval, "in_sample": in_sample,
          **conformal.assess(rows["pred"], rows["true"], rows["spread"], interval,
                             min_age=model.min_age, max_age=model.max_age, bands=bands,
                             boot=boot)}


def _write(record: dict[str, Any], rows: Mapping[str, np.ndarray], out_dir: str,
           writer: Any, run_name: str) -> None:
  """The JSON, predictions, figures and TensorBoard summaries of one evaluation."""
  tag = file_tag(record["dataset"], record["split"], record["tta"] == "flip")
  stem = os.path.join(out_dir, f"{tag}_{record['checkpoint_step']}")
  os.makedirs(out_dir, exist_ok=True)
  np.savez(f"{stem}_predictions.npz", **rows)
  title = f"{run_name}: {record['dataset']}:{record['split']}, step {record['checkpoint_step']}"
  if record["tta"] == "flip":
    title += ", flip TTA"
  figures = eval_plots.plot_all(rows["pred"], rows["true"], record, stem, title)
  record["predictions"] = os.path.basename(f"{stem}_predictions.npz")
  record["figures"] = {k: os.path.basename(v) for k, v in figures.items()}
  json_files.write_json(f"{stem}.json", record)
  step = record["checkpoint_step"]
  writer.write_scalars(step, {f"{tag}/{k}": record[k] for k in _SCALARS if k in record})
  writer.write_images(step, {f"{tag}/{k}": eval_plots.png_pixels(v)
                             for k, v in figures.items()})


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """One line per evaluated split: n, MAE, RMSE, bias, CS@5 and epsilon-error."""
  header = (f"{'dataset:split':<36} {'step':>7} {'tta':>4} {'n':>7} {'MAE':>7} "
            f"{'RMSE':>7} {'bias':>7} {'CS@5':>6} {'eps':>6}")
  lines = [header, "-" * len(header)]
  for key, r in results.items():
    eps = f"{r['epsilon_error']:.4f}" if "epsilon_error" in r else "-"
    lines.append(f"{key:<36} {r['checkpoint_step']:>7} {r['tta']:>4} {r['n']:>7} "
                 f"{r['mae']:>7.3f} {r['rmse']:>7.3f} {r['mean_error']:>+7.3f} "
                 f"{r['cs5']:>6.3f} {eps:>6}")
  return "\n".join(lines)
