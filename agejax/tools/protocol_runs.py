"""The face age benchmark's protocol: one run per split, tested in and across datasets.

``run_protocol`` trains ``ROOT/split_<k>`` for each requested split ``k``
(an ordinary run directory, ``data.protocol_split = k``: train and model
choice on that split's train and validation folders), then evaluates its best
checkpoint on the split's test folders of the training dataset and of every
cross dataset, and writes ``ROOT/protocol.json`` and ``ROOT/protocol.md``:
MAE and CS5 per split, mean +- std over the splits, one column per dataset.

Nothing finished is redone: a split whose run completed (or stopped early
by its own rule) is not retrained (an interrupted one resumes from its
checkpoints), and its evaluation, kept
in ``split_<k>/protocol_eval.json`` with the checkpoint step it read, is
reused while that step is the run's best. The table is assembled from every
``split_<k>`` under ``ROOT``, so splits trained on other machines into the
same root (or copied there) all appear.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from agejax import json_files
from agejax.data import folders
from agejax.errors import ConfigError

SPLIT_DIR = "split_{}"
EVAL_FILE = "protocol_eval.json"
JSON_FILE = "protocol.json"
MARKDOWN_FILE = "protocol.md"
METRICS = ("mae", "cs5")


def dataset_name(name: str) -> str:
  """A TFDS name, or a benchmark database (``AgeDB``, ``FG-NET``) as ``facebase/<config>``."""
  if "/" in name or ":" in name:
    return name
  from data_builders.facebase import facebase_dataset_builder as facebase  # pylint: disable=import-outside-toplevel

  key = re.sub(r"[^a-z0-9]", "", name.lower())
  for config, file in facebase.DATABASES:
    if key in (config.replace("_", ""), re.sub(r"[^a-z0-9]", "", file.lower()[:-len(
        "_aligned.json")])):
      return f"facebase/{config}"
  raise ConfigError("--benchmark", f"{name!r} is neither a TFDS name nor one of the "
                    f"benchmark's databases ({', '.join(c for c, _ in facebase.DATABASES)})")


def parse_splits(text: str) -> list[int]:
  """``"0-4"`` / ``"0,2,3"`` -> split numbers."""
  chosen: list[int] = []
  try:
    for part in text.split(","):
      low, _, high = part.strip().partition("-")
      chosen += range(int(low), int(high or low) + 1)
  except ValueError:
    raise ConfigError("--splits", f"{text!r} is not like 0-4 or 0,2,3") from None
  bad = [k for k in chosen if not 0 <= k < len(folders.PROTOCOL_SPLITS)]
  if bad or not chosen:
    raise ConfigError("--splits", f"{text!r}: splits are 0-{len(folders.PROTOCOL_SPLITS) - 1}")
  return sorted(set(chosen))


def _test_split(data_cfg: ml_collections.ConfigDict, dataset: str, split: int) -> str:
  from agejax.data import catalog  # pylint: disable=import-outside-toplevel

  probe = data_cfg.copy_and_resolve_references()
  probe.dataset = dataset
  catalog.ensure_prepared(probe)  # an unbuilt dataset: the error that says how to build it
  return folders.dataset_splits(dataset, probe.data_dir, split)["test"]


def _ended(summary: dict[str, Any] | None) -> bool:
  """A run that ran its length or stopped early by its own rule: its best checkpoint stands."""
  stopped = (summary or {}).get("stopped", "")
  return stopped == "completed" or stopped.startswith("early stopping")


def _finished(workdir: str) -> bool:
  from agejax.workdir import run_config  # pylint: disable=import-outside-toplevel

  return os.path.isdir(workdir) and _ended(run_config.load_summary(workdir))


def _evaluate(workdir: str, split: int, datasets: Sequence[str]) -> dict[str, Any]:
  """The split's test metrics on each dataset, reusing a saved evaluation of this checkpoint."""
  from agejax.evaluation import evaluate_run  # pylint: disable=import-outside-toplevel
  from agejax.workdir import restore  # pylint: disable=import-outside-toplevel

  trained = restore.load_trained(workdir, "best")
  path = os.path.join(workdir, EVAL_FILE)
  saved = json.load(open(path)) if os.path.exists(path) else {}
  if saved.get("checkpoint_step") != trained.step:
    saved = {"checkpoint_step": trained.step, "datasets": {}}
  todo = [d for d in datasets if d not in saved["datasets"]]
  if todo:
    specs = {d: f"{d}:{_test_split(trained.config.data, d, split)}" for d in todo}
    records = evaluate_run.evaluate_run(workdir, "best", list(specs.values()))
    for dataset, spec in specs.items():
      record = records[spec]
      saved["datasets"][dataset] = {"split": record["split"], "n": record["n"],
                                    **{m: record[m] for m in METRICS}}
    json_files.write_json(path, saved)
  return saved


def _mean_std(values: list[float]) -> dict[str, float]:
  # Sample standard deviation over the splits (0 for one split).
  return {"mean": statistics.fmean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0, "splits": len(values)}


def assemble(root: str, benchmark: str, cross: Sequence[str]) -> dict[str, Any]:
  """protocol.json's content from every evaluated ``split_<k>`` under ``root``."""
  datasets = [benchmark, *cross]
  rows = []
  for k in range(len(folders.PROTOCOL_SPLITS)):
    path = os.path.join(root, SPLIT_DIR.format(k), EVAL_FILE)
    if os.path.exists(path):
      saved = json.load(open(path))
      rows.append({"split": k, "checkpoint_step": saved["checkpoint_step"],
                   "datasets": {d: saved["datasets"][d] for d in datasets
                                if d in saved["datasets"]}})
  summary = {d: {m: _mean_std([r["datasets"][d][m] for r in rows if d in r["datasets"]])
                 for m in METRICS}
             for d in datasets if any(d in r["datasets"] for r in rows)}
  return {"benchmark": benchmark, "cross": list(cross), "splits": rows, "summary": summary}


def markdown(doc: dict[str, Any]) -> str:
  """The table: a row per split, mean +- std, MAE and CS5 of the training dataset, cross MAEs."""
  benchmark, cross = doc["benchmark"], doc["cross"]
  header = (["split", f"{benchmark} MAE", f"{benchmark} CS5"]
            + [f"{d} MAE" for d in cross])
  lines = [f"# Protocol: trained on {benchmark}", "",
           "Test folders of each split (identity-disjoint); MAE in years, CS5 = share "
           "within 5 years. Mean +- sample std over the splits.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

  def cell(metrics: dict[str, Any] | None, metric: str) -> str:
    return "" if metrics is None else f"{metrics[metric]:.2f}"

  for row in doc["splits"]:
    got = row["datasets"]
    lines.append("| " + " | ".join(
        [str(row["split"]), cell(got.get(benchmark), "mae"), cell(got.get(benchmark), "cs5")]
        + [cell(got.get(d), "mae") for d in cross]) + " |")
  summary = doc["summary"]

  def mean_std(dataset: str, metric: str) -> str:
    s = summary.get(dataset, {}).get(metric)
    return "" if s is None else f"{s['mean']:.2f} +- {s['std']:.2f}"

  lines.append("| " + " | ".join(
      ["mean +- std", mean_std(benchmark, "mae"), mean_std(benchmark, "cs5")]
      + [mean_std(d, "mae") for d in cross]) + " |")
  return "\n".join(lines) + "\n"


def run_protocol(make_config: Callable[[], ml_collections.ConfigDict], benchmark: str,
                 root: str, splits: Iterable[int] = range(5), cross: Sequence[str] = (),
                 *, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains (or resumes) and evaluates each split, then writes the table under ``root``.

  ``make_config()`` gives a fresh copy of the base config; its dataset
  becomes ``benchmark`` and its ``data.protocol_split`` each split.
  Returns protocol.json's content.
  """
  from agejax.train import loop  # pylint: disable=import-outside-toplevel

  benchmark = dataset_name(benchmark)
  cross = [dataset_name(c) for c in cross]
  os.makedirs(root, exist_ok=True)
  for k in splits:
    workdir = os.path.join(root, SPLIT_DIR.format(k))
    if _finished(workdir):
      log(f"split {k}: trained ({workdir}), not retrained")
    else:
      cfg = make_config()
      cfg.data.dataset = benchmark
      cfg.data.protocol_split = k
      log(f"split {k}: training in {workdir}")
      summary = loop.train_and_evaluate(cfg, workdir)
      if not _ended(summary):
        log(f"split {k}: stopped ({summary.get('stopped')}); rerun to resume it")
        continue
    saved = _evaluate(workdir, k, [benchmark, *cross])
    log(f"split {k}: " + ", ".join(f"{d} MAE {r['mae']:.2f}"
                                   for d, r in saved["datasets"].items()))
  doc = assemble(root, benchmark, cross)
  json_files.write_json(os.path.join(root, JSON_FILE), doc)
  with open(os.path.join(root, MARKDOWN_FILE), "w") as f:
    f.write(markdown(doc))
  return doc
