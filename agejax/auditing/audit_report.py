"""An audit's files: ``audit.json``, ``audit.html`` (self-contained) and ``exclude.txt``.

``audit.html`` holds, each image embedded: the age histogram of every split
overlaid, with the band shares beside it; then a contact sheet per finding
(leaks, conflicts, the other duplicates, impossible labels and, with
predictions, label issues), the two images of a pair side by side with their
keys, splits and labels, a label issue's image with its label and the
predicted age, the worst first (at most ``SHEET_ROWS`` per sheet; audit.json
lists every one). With predictions, ``label_scores.csv`` holds every
example's label score, highest first.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from agejax import json_files  # noqa: E402
from agejax.auditing import dataset_scan  # noqa: E402
from agejax.auditing import findings  # noqa: E402
from agejax.auditing import label_issues  # noqa: E402

JSON_FILE, HTML_FILE, EXCLUDE_FILE = "audit.json", "audit.html", "exclude.txt"
SCORES_FILE = "label_scores.csv"  # with predictions: every example's label score
SHEET_ROWS = 24
_THUMB = 96


def _png(fig_or_image: Any) -> str:
  buffer = io.BytesIO()
  if isinstance(fig_or_image, Image.Image):
    fig_or_image.save(buffer, "PNG")
  else:
    fig_or_image.tight_layout()
    fig_or_image.savefig(buffer, format="png")
    plt.close(fig_or_image)
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_figure(hist: Mapping[str, Mapping[str, Any]], title: str) -> plt.Figure:
  fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
  for split, h in hist.items():
    years = np.asarray(h["years"], np.float64)
    ax.step(np.arange(len(years)), years / max(h["n"], 1), where="mid",
            label=f"{split} (n={h['n']:,})")
  ax.set_xlabel("age (whole years)")
  ax.set_ylabel("share of the split")
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(True, alpha=0.3)
  return fig


def _sheet(rows: list[tuple[list[np.ndarray], str]]) -> Image.Image:
  """One line per row: its images as thumbnails, then its caption."""
  width = 2 * (_THUMB + 6) + 520
  sheet = Image.new("RGB", (width, len(rows) * (_THUMB + 6) + 6), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  font = ImageFont.load_default()
  for r, (images, caption) in enumerate(rows):
    y = 6 + r * (_THUMB + 6)
    for c, image in enumerate(images):
      sheet.paste(Image.fromarray(image).resize((_THUMB, _THUMB)), (6 + c * (_THUMB + 6), y))
    draw.multiline_text((2 * (_THUMB + 6) + 6, y + 4), caption, fill=(0, 0, 0), font=font)
  return sheet


def _pair_caption(pair: Mapping[str, Any]) -> str:
  a, b = pair["keys"]
  return (f"{pair['kind']}, {pair['distance']} bits, correlation {pair['correlation']:.3f}\n"
          f"{a} ({pair['splits'][0]}, {pair['labels'][0]:g})\n"
          f"{b} ({pair['splits'][1]}, {pair['labels'][1]:g})")


def _sections(doc: Mapping[str, Any]) -> list[tuple[str, list]]:
  pairs = doc["pairs"]
  return [
      ("leaks: the same picture in two splits", [p for p in pairs if p["leak"]]),
      ("conflicts: the same picture with two ages", [p for p in pairs if p["conflict"]]),
      ("other duplicates (within a split)", [p for p in pairs
                                              if not p["leak"] and not p["conflict"]]),
      ("impossible labels", doc["impossible_labels"]),
  ] + ([("label issues: labels furthest from the predicted age", doc["label_issues"]["top"])]
       if "label_issues" in doc else [])


def write(out_dir: str, doc: dict[str, Any], scan: dataset_scan.Scan, data_dir: str,
          excluded: Mapping[str, list[str]]) -> dict[str, str]:
  """Writes the three files; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {name: os.path.join(out_dir, name) for name in (JSON_FILE, HTML_FILE, EXCLUDE_FILE)}
  json_files.write_text(paths[EXCLUDE_FILE], findings.format_exclusions(doc["dataset"], excluded))
  sections = _sections(doc)
  wanted: dict[str, set[int]] = {}
  for _, items in sections:
    for item in items[:SHEET_ROWS]:
      for index in _indices(item):
        wanted.setdefault(scan.splits[index], set()).add(int(scan.positions[index]))
  images = dataset_scan.read_images(doc["dataset"], data_dir, wanted)
  image_of = lambda i: images[(scan.splits[i], int(scan.positions[i]))]
  parts = [f"<h1>audit of {html.escape(doc['dataset'])}</h1>",
           f"<pre>{html.escape(doc['summary'])}</pre>",
           f'<img src="data:image/png;base64,{_png(histogram_figure(doc["histograms"], "age histogram per split"))}">',
           _bands_table(doc["histograms"])]
  for title, items in sections:
    parts.append(f"<h2>{html.escape(title)}: {len(items)}</h2>")
    if items is doc.get("label_issues", {}).get("top"):
      issues = doc["label_issues"]
      parts.append(f"<p>{html.escape(issues['source'])}; score: |label - age| in "
                   f"{issues['unit']}; {issues['over_threshold']} of {issues['predicted']} "
                   f"above {issues['threshold']:g}; every score in {SCORES_FILE}</p>")
      parts += [f"<p>{html.escape(note)}</p>" for note in issues["notes"]]
    rows = []
    for item in items[:SHEET_ROWS]:
      if "keys" in item:
        caption = _pair_caption(item)
      elif "score" in item:
        caption = label_issues.caption(item, doc["label_issues"]["unit"])
      else:
        caption = f"{item['key']} ({item['split']}): label {item['label']}"
      rows.append(([image_of(i) for i in _indices(item)], caption))
    if rows:
      parts.append(f'<img src="data:image/png;base64,{_png(_sheet(rows))}">')
  json_files.write_text(paths[HTML_FILE], "<!doctype html><meta charset=utf-8>"
                        "<title>agejax audit</title><body style='font-family:sans-serif'>"
                        + "\n".join(parts) + "</body>")
  json_files.write_json(paths[JSON_FILE], doc)
  if "label_issues" in doc:
    paths[SCORES_FILE] = os.path.join(out_dir, SCORES_FILE)
    _write_scores(paths[SCORES_FILE], scan)
  return paths


def _write_scores(path: str, scan: dataset_scan.Scan) -> None:
  """label_scores.csv: key, split, label, age, spread, score; highest score first."""
  score, _ = label_issues.scores(scan.labels, scan.ages, scan.spreads)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["key", "split", "label", "age", "spread", "score"])
  for i in np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable"):
    writer.writerow([scan.keys[i], scan.splits[i], f"{scan.labels[i]:g}", f"{scan.ages[i]:.3f}",
                     f"{scan.spreads[i]:.3f}", f"{score[i]:.4f}"])
  json_files.write_text(path, buffer.getvalue())


def _indices(item: Mapping[str, Any]) -> list[int]:
  """The scan positions of a finding: a pair's two, a label's one."""
  index = item["index"]
  return list(index) if isinstance(index, list) else [index]


def _bands_table(hist: Mapping[str, Mapping[str, Any]]) -> str:
  splits = list(hist)
  bands = list(next(iter(hist.values()))["bands"]) if hist else []
  head = "".join(f"<th>{html.escape(s)}</th>" for s in splits)
  body = "".join(f"<tr><td>{b}</td>" + "".join(f"<td>{hist[s]['bands'][b]:.1%}</td>"
                                               for s in splits) + "</tr>" for b in bands)
  return f"<table border=1 cellpadding=3><tr><th>band</th>{head}</tr>{body}</table>"
