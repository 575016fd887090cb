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
from agejax.auditing import label_issues


def audit(scan: dataset_scan.Scan, settings: findings.Settings = findings.Settings(), *,
          models: label_issues.Models | None = None, exclude_label_issues: bool = False
          ) -> tuple[dict[str, Any], dict[str, list[str]]]:
  """``(document, exclusions)`` of a scanned dataset (:mod:`agejax.auditing.findings`).

  Where the scan has the predicted ages of ``models``, the labels
  they disagree with most (:mod:`agejax.auditing.label_issues`), which the
  exclusions list with ``exclude_label_issues``.
  """
  pairs = findings.find_pairs(scan, settings)
  impossible = findings.impossible_labels(scan, settings)
  issues = None
  if models is not None:
    issues, _ = label_issues.rank(scan, settings.label_issue_share, settings.label_issue_spreads,
                                  settings.label_issue_years, models.source)
    issues["notes"] = list(models.notes)
  listed = [(row["key"], "label issue: " + label_issues.caption(row, issues["unit"]))
            for row in issues["top"]] if issues and exclude_label_issues else []
  excluded = findings.exclusions(scan, pairs, impossible, listed)
  doc: dict[str, Any] = {
      "dataset": scan.dataset, "key_feature": scan.key_feature, "label": scan.label,
      "examples": {s: int(np.sum(scan.splits == s)) for s in sorted(set(scan.splits.tolist()))},
      "settings": dataclasses.asdict(settings),
      "counts": {
          **{kind: sum(p["kind"] == kind for p in pairs) for kind in findings.KINDS},
          "leaks": sum(p["leak"] for p in pairs),
          "conflicts": sum(p["conflict"] for p in pairs),
          "impossible_labels": len(impossible), "excluded": len(excluded),
          **({"label_issues_listed": len(issues["top"]),
              "label_issues_over_threshold": issues["over_threshold"]} if issues else {})},
      "pairs": pairs,
      "impossible_labels": [{"index": i, "key": scan.keys[i], "split": scan.splits[i],
                             "label": float(scan.labels[i])} for i in impossible],
      "histograms": findings.histograms(scan),
  }
  if issues:
    doc["label_issues"] = issues
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
  issues = doc.get("label_issues")
  if issues:
    lines.append(f"  label issues ({issues['source']}): {issues['over_threshold']} label(s) more "
                 f"than {issues['threshold']:g} {issues['unit']} from the predicted age; the "
                 f"{len(issues['top'])} furthest listed")
  for split, h in doc["histograms"].items():
    shares = h["bands"]
    lines.append(f"  {split}: {shares['0-12']:.1%} aged 0-12, {shares['65+']:.1%} aged 65+")
  lines.append(f"  excluded: {c['excluded']} example(s) listed in exclude.txt")
  return "\n".join(lines)
