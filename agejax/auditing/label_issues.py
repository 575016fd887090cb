"""Labels a model strongly disagrees with, from predictions of models that never saw them.

Confident learning's premise (Northcutt, Jiang and Chuang, "Confident
Learning: Estimating Uncertainty in Dataset Labels", 2021; cleanlab): a
label is suspect when a model that did not train on its example predicts
something far from it. The predictions come from one of:

* ``--protocol_root=ROOT``: the runs ``agejax.protocol`` trained in
  ``ROOT/split_<k>``. Each run's test folders (its ``data.test_split``)
  are predicted by its best checkpoint, which neither trained on them nor
  chose its step on them. The benchmark's five splits test folders 3 and 4
  twice and 6 and 7 never: an example gets the first run that tests on it,
  else the first that validated on it (it never trained on it; its labels
  only chose that run's checkpoint), so every example gets a prediction
  from a model that never fitted its label.
* ``--workdir=RUN`` or ``--model=EXPORT``: one model for every split. Where
  it trained on a split of the audited dataset, a warning says so: its ages
  on those examples measure what it remembers, and a memorised wrong label
  ranks low.

Each example's score is its label's distance from the predicted age in the
units of the calibrated interval's scale
(:func:`agejax.evaluation.intervals.scale`): ``|label - age| / max(spread,
0.5)`` for a head with a spread (how many spreads off), ``|label - age|``
in years for one without. The audit reports the ``share`` (1%) of examples
with the highest scores and how many pass ``threshold`` (3 spreads, or 15
years), and writes every example's score to ``label_scores.csv``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

import numpy as np

from agejax.data import folders
from agejax.errors import UsageError
from agejax.evaluation import conformal
from agejax.evaluation import intervals

PREDICT_BATCH = 64
UNITS = {"normalized": "spreads", "absolute": "years"}


@dataclasses.dataclass(frozen=True)
class Models:
  """Which model predicts each split of the audited dataset."""
  by_split: dict[str, str]  # split -> workdir or export directory
  source: str  # how the audit names them
  notes: tuple[str, ...] = ()  # what the user should know about them


def _name(dataset: str) -> str:
  """A dataset name without its version: ``age_csv/x:1.1.0`` -> ``age_csv/x``."""
  return dataset.split(":")[0]


def protocol_models(root: str, dataset: str, splits: list[str]) -> Models:
  """The held-out model of every split of ``dataset`` among ``agejax.protocol``'s runs.

  A split is predicted by the first run that tests on it; the benchmark's
  five splits test folders 3 and 4 twice and folders 6 and 7 never, so a
  split no run tests on is predicted by the first run that validated on it
  (it never trained on it, but chose its checkpoint there: said in a note).

  Raises:
    UsageError: no run under ``root``, a run on another dataset, or a split
      of the dataset every run trained on.
  """
  from agejax.tools import protocol_runs  # pylint: disable=import-outside-toplevel
  from agejax.workdir import run_config  # pylint: disable=import-outside-toplevel

  runs = [os.path.join(root, protocol_runs.SPLIT_DIR.format(k))
          for k in range(len(folders.PROTOCOL_SPLITS))]
  runs = [run for run in runs if run_config.exists(run)]
  if not runs:
    raise UsageError(f"--protocol_root={root}: no run ({protocol_runs.SPLIT_DIR.format('<k>')}"
                     f"/{run_config.CONFIG_FILE}); train them with agejax.protocol")
  held_out: dict[str, tuple[str, str]] = {}  # split -> (run, "test" or "validation")
  for run in runs:
    data = run_config.load(run).data
    if _name(data.dataset) != _name(dataset):
      raise UsageError(f"--protocol_root: {run} trained on {data.dataset}, not {dataset}")
    for role, split_string in (("test", data.test_split), ("validation", data.eval_split)):
      for split in folders.split_parts(split_string):
        if split not in held_out or (held_out[split][1], role) == ("validation", "test"):
          held_out[split] = (run, role)
  missing = [s for s in splits if s not in held_out]
  if missing:
    raise UsageError(f"--protocol_root={root}: every run there trained on {', '.join(missing)} "
                     f"of {dataset}; run the protocol splits that hold them out")
  notes = [f"{split}: predicted by {run}, which did not train on it but chose its checkpoint "
           "on it (no run tests on it)"
           for split, (run, role) in sorted(held_out.items()) if role == "validation"]
  return Models({s: held_out[s][0] for s in splits},
                f"out-of-fold predictions of {len(runs)} protocol runs in {root}", tuple(notes))


def _trained_splits(path: str, dataset: str) -> tuple[str, list[str] | None]:
  """``(run, splits of dataset it trained on)`` of a workdir or export; ``None``: unknown
  splits of the dataset; ``[]``: another dataset."""
  from agejax.serving import bundle  # pylint: disable=import-outside-toplevel
  from agejax.serving import runtimes  # pylint: disable=import-outside-toplevel
  from agejax.workdir import run_config  # pylint: disable=import-outside-toplevel

  run = path
  if bundle.is_bundle(path):
    source = runtimes.read_meta(path).get("source", {})
    run = source.get("workdir", "")
    if not run or not run_config.exists(run):  # the export travelled without its run
      same = _name(str(source.get("dataset", ""))) == _name(dataset)
      return path, (None if same else [])
  data = run_config.load(run).data
  if _name(data.dataset) != _name(dataset):
    return run, []
  return run, folders.split_parts(data.train_split)


def single_model(path: str, flag: str, dataset: str, splits: list[str]) -> Models:
  """One model (a workdir or an export) for every split, and what it trained on."""
  run, trained = _trained_splits(path, dataset)
  warnings = []
  if trained is None:
    warnings.append(f"{flag}={path} trained on {dataset} (its run is not at hand to say which "
                    "splits): on its training examples the ranking measures memory")
  else:
    seen = [s for s in splits if s in trained]
    if seen:
      warnings.append(f"{flag}={path}: {run} trained on {dataset}'s {', '.join(seen)}: on those "
                      "examples the ranking measures memory, not label quality (use "
                      "--protocol_root for out-of-fold predictions)")
  return Models({s: path for s in splits}, f"predictions of {path}",
                tuple(f"warning: {w}" for w in warnings))


def predictor_source(models: Models) -> Callable[[str], Any]:
  """``split -> predictor`` (``agejax.serving.inference``), each model loaded once."""
  from agejax.serving import inference  # pylint: disable=import-outside-toplevel

  loaded: dict[str, Any] = {}

  def predictor(split: str) -> Any:
    path = models.by_split[split]
    if path not in loaded:
      loaded[path] = inference.load(path, batch_size=PREDICT_BATCH)
    return loaded[path]

  return predictor


def scores(labels: np.ndarray, ages: np.ndarray, spreads: np.ndarray
           ) -> tuple[np.ndarray, str]:
  """``(score per example, method)``: NaN where an example has no prediction."""
  predicted = np.isfinite(ages)
  method = conformal.method_for(spreads[predicted])
  scale = intervals.scale(np.where(predicted, spreads, 0.0),
                          {"method": method, "min_spread": intervals.MIN_SPREAD})
  return np.abs(labels - ages) / scale, method


def rank(scan: Any, share: float, threshold_spreads: float, threshold_years: float,
         source: str) -> tuple[dict[str, Any], np.ndarray]:
  """``(audit.json's label_issues section, every example's score)`` of a scan with ages."""
  score, method = scores(scan.labels, scan.ages, scan.spreads)
  finite = np.isfinite(score)
  order = np.nonzero(finite)[0][np.argsort(-score[finite], kind="stable")]
  listed = max(1, math.ceil(share * finite.sum())) if finite.any() else 0
  threshold = threshold_spreads if method == "normalized" else threshold_years
  top = [{"index": int(i), "key": scan.keys[i], "split": scan.splits[i],
          "label": float(scan.labels[i]), "age": round(float(scan.ages[i]), 2),
          "spread": round(float(scan.spreads[i]), 2), "score": round(float(score[i]), 3)}
         for i in order[:listed]]
  return {"source": source, "method": method, "unit": UNITS[method],
          "threshold": threshold, "share": share, "predicted": int(finite.sum()),
          "over_threshold": int(np.sum(score[finite] > threshold)), "top": top}, score


def caption(issue: dict[str, Any], unit: str) -> str:
  """A label issue in words: key, split, label, the model's age and the score."""
  return (f"{issue['key']} ({issue['split']}): labelled {issue['label']:g}, predicted "
          f"{issue['age']:.1f} +- {issue['spread']:.1f}, {issue['score']:.1f} {unit} off")
