"""What an audit finds in a scanned dataset: duplicate pairs, leaks, conflicts, bad labels.

* **Pairs** of examples showing the same picture, each with its ``kind``:
  ``exact`` (identical decoded pixels), ``near`` (pHash within
  ``max_distance`` bits and signatures correlated at ``min_correlation`` or
  more: re-encoded, brightened, slightly moved) and ``mirrored`` (the same,
  against the flipped image). A pair is a ``leak`` when its two examples sit
  in different splits, a ``conflict`` when their labels differ by more than
  ``conflict_years``.
* **Impossible labels**: not a number, below 0 or above ``max_age``.
* **Age histograms** per split (whole years) and each split's share of the
  age card's bands, so a split without children or the elderly shows.
* **The exclusion list**: one member of every leak (the one outside
  ``train``; the later split's when neither is), both members of every
  conflict, every impossible label, and where asked the listed label
  issues; each with its reasons.

The hash finds candidates; the signature decides. pHash within 8 bits
keeps every re-encoded, brightened and mirrored copy of the measurement
(``python -m agejax.benchmark audit``); a correlation of 0.99 then keeps
the planted copies of ``tests/audit_fixture.py`` and no other pair.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from agejax.auditing import dataset_scan
from agejax.auditing import hash_pairs
from agejax.evaluation import age_card

KINDS = ("exact", "near", "mirrored")
_SPLIT_ORDER = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Settings:
  max_distance: int = 8
  min_correlation: float = 0.99
  conflict_years: float = 0.5
  max_age: float = 120.0
  # Label issues (agejax.auditing.label_issues): the share listed, and the
  # score a label must pass to count, in spreads or, without one, years.
  label_issue_share: float = 0.01
  label_issue_spreads: float = 3.0
  label_issue_years: float = 15.0


def _exact_pairs(scan: dataset_scan.Scan) -> set[tuple[int, int]]:
  groups: dict[str, list[int]] = {}
  for index, digest in enumerate(scan.digests):
    groups.setdefault(digest, []).append(index)
  return {(a, b) for members in groups.values() if len(members) > 1
          for k, a in enumerate(members) for b in members[k + 1:]}


def _confirmed(scan: dataset_scan.Scan, i: np.ndarray, j: np.ndarray, mirrored: bool,
               settings: Settings) -> tuple[np.ndarray, np.ndarray]:
  """Which candidates the signatures confirm, and their correlations."""
  first = scan.signatures[i].astype(np.float32)
  second = scan.signatures[j].astype(np.float32)
  if mirrored:
    second = dataset_scan.mirror_signatures(second)
  correlation = np.sum(first * second, axis=1)
  return correlation >= settings.min_correlation, correlation


def find_pairs(scan: dataset_scan.Scan, settings: Settings = Settings()) -> list[dict[str, Any]]:
  """Every duplicate pair (module doc), exact first, each pair once under its first kind."""
  found: dict[tuple[int, int], tuple[str, int, float]] = {
      pair: ("exact", 0, 1.0) for pair in _exact_pairs(scan)}
  i, j, distance = hash_pairs.pairs(scan.hashes, max_distance=settings.max_distance)
  ok, correlation = _confirmed(scan, i, j, False, settings)
  for a, b, d, c in zip(i[ok], j[ok], distance[ok], correlation[ok]):
    found.setdefault((int(a), int(b)), ("near", int(d), float(c)))
  i, j, distance = hash_pairs.pairs(scan.hashes, scan.mirror_hashes,
                                    max_distance=settings.max_distance)
  other = i != j
  i, j, distance = i[other], j[other], distance[other]
  ok, correlation = _confirmed(scan, i, j, True, settings)
  for a, b, d, c in zip(i[ok], j[ok], distance[ok], correlation[ok]):
    found.setdefault((int(min(a, b)), int(max(a, b))), ("mirrored", int(d), float(c)))
  rows = []
  for (a, b), (kind, d, c) in sorted(found.items(), key=lambda x: (KINDS.index(x[1][0]), x[0])):
    rows.append({
        "kind": kind, "distance": d, "correlation": round(c, 4),
        "keys": [scan.keys[a], scan.keys[b]], "splits": [scan.splits[a], scan.splits[b]],
        "labels": [float(scan.labels[a]), float(scan.labels[b])],
        "leak": scan.splits[a] != scan.splits[b],
        "conflict": bool(abs(scan.labels[a] - scan.labels[b]) > settings.conflict_years),
        "index": [a, b]})
  return rows


def impossible_labels(scan: dataset_scan.Scan, settings: Settings = Settings()) -> list[int]:
  bad = ~np.isfinite(scan.labels) | (scan.labels < 0) | (scan.labels > settings.max_age)
  return [int(i) for i in np.nonzero(bad)[0]]


def histograms(scan: dataset_scan.Scan) -> dict[str, dict[str, Any]]:
  """Per split: examples, counts per whole year (0..max seen) and the card bands' shares."""
  out = {}
  finite = np.isfinite(scan.labels)
  top = int(np.max(scan.labels[finite])) if finite.any() else 0
  for split in sorted(set(scan.splits.tolist()), key=_split_rank):
    ages = scan.labels[(scan.splits == split) & finite]
    years = np.bincount(np.clip(np.floor(ages), 0, None).astype(int), minlength=top + 1)
    out[split] = {"n": int(len(ages)), "years": years[:top + 1].tolist(),
                  "bands": {age_card.band_label(b): float(np.mean(age_card.in_band(ages, b)))
                            if len(ages) else 0.0 for b in age_card.DEFAULT_BANDS}}
  return out


def _split_rank(split: str) -> tuple[int, str]:
  base = split.split("[")[0]
  return (_SPLIT_ORDER.index(base) if base in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def exclusions(scan: dataset_scan.Scan, pairs: list[dict[str, Any]],
               impossible: list[int], label_issues: Sequence[tuple[str, str]] = ()
               ) -> dict[str, list[str]]:
  """``{key: [reasons]}`` of the examples training should leave out (module doc);
  ``label_issues``: ``(key, reason)`` of the label issues to leave out."""
  out: dict[str, list[str]] = {key: [reason] for key, reason in label_issues}
  for pair in pairs:
    a, b = pair["index"]
    if pair["conflict"]:
      for x, y in ((a, b), (b, a)):
        out.setdefault(scan.keys[x], []).append(
            f"conflict: {pair['kind']} duplicate of {scan.keys[y]} labelled "
            f"{_years(scan.labels[y])}, this one {_years(scan.labels[x])}")
    elif pair["leak"]:
      drop, keep = sorted((a, b), key=lambda x: _split_rank(scan.splits[x]))[::-1]
      out.setdefault(scan.keys[drop], []).append(
          f"leak: {pair['kind']} duplicate of {scan.keys[keep]} ({scan.splits[keep]}), "
          f"this one in {scan.splits[drop]}")
  for index in impossible:
    out.setdefault(scan.keys[index], []).append(
        f"impossible label {_years(scan.labels[index])}")
  return out


def _years(value: float) -> str:
  return "not a number" if not math.isfinite(value) else f"{value:g}"


def format_exclusions(dataset: str, excluded: dict[str, list[str]]) -> str:
  """exclude.txt: ``# reason`` lines, then the key, for each example
  (``data.exclude`` reads it: :func:`agejax.data.exclusions.parse_keys`)."""""
  lines = [f"# agejax.audit of {dataset}: {len(excluded)} example(s) to leave out",
           "# one key per line; lines starting with # are comments"]
  for key in sorted(excluded):
    lines += [f"# {reason}" for reason in excluded[key]] + [key]
  return "\n".join(lines) + "\n"

