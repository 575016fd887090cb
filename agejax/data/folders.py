"""The face age benchmark's five identity-disjoint splits, as TFDS split strings.

Builders that store the benchmark's ``folder`` write one TFDS split per
folder (``folder0`` ... ``folder9``; ``data_builders/facebase``). A protocol
split is three folder sets; here they become TFDS split sums
(``folder0+folder1+...``), which every reader in agejax already takes.

Datasets with their own train/validation/test (CLAP2016, CACD2000) have
folders 0/1/2 only, and every protocol split is that one split.

agejax's other builders split by a hash of the identity into
train/validation/test (``data_builders.common.split_of``); ``age_csv`` with
``identity_folders=10`` gives ten equal identity folders by the same hash
and key, so any CSV release runs under the protocol the same way.
"""

from __future__ import annotations

from typing import Iterable

from agejax.config import config_check
from agejax.errors import ConfigError

FOLDER_SPLIT = "folder{}"
# split -> (train, validation, test) folders, as the benchmark defines them.
PROTOCOL_SPLITS: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = (
    ((0, 1, 2, 3, 4, 5), (6, 7), (8, 9)),
    ((2, 3, 4, 5, 6, 7), (8, 9), (0, 1)),
    ((4, 5, 6, 7, 8, 9), (0, 1), (2, 3)),
    ((5, 6, 7, 8, 9, 0), (1, 2), (3, 4)),
    ((6, 7, 8, 9, 0, 1), (2, 3), (4, 5)),
)
# Datasets that define one train/val/test themselves.
OWN_SPLIT = ((0,), (1,), (2,))
PARTS = ("train", "validation", "test")
NUM_FOLDERS = 10


def split_string(folders: Iterable[int]) -> str:
  """``(0, 1)`` -> ``"folder0+folder1"``."""
  return "+".join(FOLDER_SPLIT.format(f) for f in folders)


def _check_split(protocol_split: int, off_allowed: bool) -> None:
  splits = f"one of the benchmark's splits 0-{len(PROTOCOL_SPLITS) - 1}"
  config_check.require("data.protocol_split",
                       -int(off_allowed) <= protocol_split < len(PROTOCOL_SPLITS),
                       f"-1 (off) or {splits}" if off_allowed else splits, protocol_split)


def check(cfg) -> None:
  """The benchmark split's number (the dataset's folders are checked when it is read)."""
  _check_split(cfg.data.protocol_split, off_allowed=True)


def folder_sets(protocol_split: int, available: Iterable[int]) -> dict[str, tuple[int, ...]]:
  """``{"train", "validation", "test"}`` folders of ``protocol_split`` for a dataset.

  ``available`` are the dataset's folders: ten (0-9) take the five splits;
  three (0-2: a dataset's own train/val/test) give that split for any of them.

  Raises:
    ConfigError: an unknown split number, or folders that are neither layout.
  """
  _check_split(protocol_split, off_allowed=False)
  folders = set(available)
  if folders <= {0, 1, 2} and len(folders) > 1:
    sets = OWN_SPLIT
  elif folders <= set(range(NUM_FOLDERS)):
    sets = PROTOCOL_SPLITS[protocol_split]
  else:
    raise ConfigError("data.protocol_split",
                      f"the dataset's folders {sorted(folders)} are neither 0-9 nor 0-2")
  return {part: tuple(f for f in chosen if f in folders) for part, chosen in zip(PARTS, sets)}


def split_strings(protocol_split: int, available: Iterable[int]) -> dict[str, str]:
  """:func:`folder_sets` as TFDS split strings; a part with no folder present raises."""
  sets = folder_sets(protocol_split, available)
  empty = [part for part, chosen in sets.items() if not chosen]
  if empty:
    raise ConfigError("data.protocol_split",
                      f"split {protocol_split} needs folders the dataset lacks for "
                      f"{', '.join(empty)} (it has {sorted(set(available))})")
  return {part: split_string(chosen) for part, chosen in sets.items()}


def available_folders(split_names: Iterable[str]) -> list[int]:
  """The folder numbers among a dataset's TFDS split names (``folder3`` -> 3)."""
  prefix = FOLDER_SPLIT.format("")
  return sorted(int(s[len(prefix):]) for s in split_names
                if s.startswith(prefix) and s[len(prefix):].isdigit())


def dataset_splits(dataset: str, data_dir: str, protocol_split: int) -> dict[str, str]:
  """:func:`split_strings` of ``protocol_split`` for the folders ``dataset`` was built with."""
  from agejax.data import catalog  # pylint: disable=import-outside-toplevel

  names = catalog.builder(dataset, data_dir).info.splits.keys()
  available = available_folders(names)
  if not available:
    raise ConfigError("data.protocol_split",
                      f"{dataset} is not stored as folders (its splits are "
                      f"{sorted(names)}); build it with data_builders/facebase")
  return split_strings(protocol_split, available)


def apply_protocol_split(data_cfg) -> None:
  """Sets ``data_cfg``'s train, eval and test splits from ``data.protocol_split``.

  In place; nothing when ``protocol_split`` is -1. The dataset's folders come
  from its built TFDS splits.
  """
  if data_cfg.protocol_split < 0:
    return
  splits = dataset_splits(data_cfg.dataset, data_cfg.data_dir, data_cfg.protocol_split)
  data_cfg.train_split, data_cfg.eval_split, data_cfg.test_split = (
      splits["train"], splits["validation"], splits["test"])


def split_parts(split: str) -> list[str]:
  """The TFDS split names a split string reads: ``"folder8+train[:80%]"`` -> folder8, train."""
  return [part.split("[")[0].strip() for part in split.split("+") if part.strip()]
