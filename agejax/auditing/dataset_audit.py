"""The audit of one built dataset: scan it, find what is wrong, say it in numbers.

:func:`audit` returns the JSON document ``audit.json`` holds (and the
exclusion list); :mod:`agejax.auditing.audit_report` writes the files.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from agejax.auditing import dataset_scan
from agejax.auditing import findings


def audit(scan: dataset_scan.Scan, settings: findings.Settings = findings.Settings()
          ) -> tuple[dict[str, Any], dict[str, list[str]]]:
  """``(document, exclusions)`` of a scanned dataset (:mod:`agejax.auditing.findings`)."""
  pairs = findings.find_pairs(scan, settings)
  impossible = findings.impossible_labels(scan, settings)
  excluded = findings.exclusions(scan, pairs, impossible)
  doc: dict[str, Any] = {
      "dataset": scan.dataset, "key_feature": scan.key_feature, "label": scan.label,
      "examples": {s: int(np.sum(scan.splits == s)) for s in sorted(set(scan.splits.tolist()))},
      "settings": dataclasses.asdict(settings),
      "counts": {
          **{kind: sum(p["kind"] == kind for p in pairs) for kind in findings.KINDS},
          "leaks": sum(p["leak"] for p in pairs),
          "conflicts": sum(p["conflict"] for p in pairs),
          "impossible_labels": len(impossible), "excluded": len(excluded)},
      "pairs": pairs,
      "impossible_labels": [{"index": i, "key": scan.keys[i], "split": scan.splits[i],
                             "label": float(scan.labels[i])} for i in impossible],
      "histograms": findings.histograms(scan),
  }
  doc["summary"] = summary(doc)
  return doc, excluded


def summary(doc: dict[str, Any]) -> str:
  """The few lines the command prints."""
  c = doc["counts"]
  sizes = ", ".join(f"{s} {n:,}" for s, n in doc["examples"].items())
  lines = [f"{doc['dataset']}: {sum(doc['examples'].values()):,} examples ({sizes}), "
           f"keyed by {doc['key_feature']}",
           f"  duplicate pairs: {c['exact']} exact, {c['near']} near, {c['mirrored']} mirrored",
           f"  leaks (a pair across splits): {c['leaks']}",
           f"  conflicts (a pair with two ages): {c['conflicts']}",
           f"  impossible labels: {c['impossible_labels']}"]
  for split, h in doc["histograms"].items():
    shares = h["bands"]
    lines.append(f"  {split}: {shares['0-12']:.1%} aged 0-12, {shares['65+']:.1%} aged 65+")
  lines.append(f"  excluded: {c['excluded']} example(s) listed in exclude.txt")
  return "\n".join(lines)
