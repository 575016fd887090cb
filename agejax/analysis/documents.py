"""The report's files: ``report.json`` (for tools), ``report.md`` and one self-contained ``report.html``.

``report.json`` holds ``{"runs": [...], "diagnoses": [{"run", "kind",
"evidence", "advice"}], "differing_config": {...}}``; the figures are PNGs
under ``figures/`` (the markdown links them, the HTML embeds them).
"""

from __future__ import annotations

import base64
import html
import math
import os
from typing import Any, Mapping, Sequence

from agejax import json_files
from agejax.analysis import diagnoses
from agejax.analysis import run_records
from agejax.config import config_check


def run_record(run: run_records.Run) -> dict[str, Any]:
  """Name, where, how it ended, and the best and final validation metrics."""
  metric = run.metric
  val = run.series(run_records.VALIDATION, metric)
  summary = run.summary or {}
  record = {"name": run.name, "workdir": run.workdir,
            "stopped": summary.get("stopped", "no summary (running, or killed)"),
            "step": summary.get("step"), "wall_seconds": summary.get("wall_seconds"),
            "metric": metric, "best": None, "best_step": None, "final": None, "final_step": None}
  if len(val):
    i = min(range(len(val)), key=lambda j: val.values[j] if math.isfinite(val.values[j])
            else math.inf)
    record.update(best=float(val.values[i]), best_step=int(val.steps[i]),
                  final=float(val.values[-1]), final_step=int(val.steps[-1]))
  return record


def differing_config(runs: Sequence[run_records.Run]) -> dict[str, list[Any]]:
  """``{dotted key: [value per run]}`` for the keys whose values differ, and only those."""
  flat = [dict(config_check.leaves(r.config)) for r in runs]
  keys = sorted(set().union(*flat))
  out = {}
  for key in keys:
    values = [f.get(key) for f in flat]
    if any(v != values[0] for v in values[1:]):
      out[key] = [v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
                  for v in values]
  return out


def _md(text: Any) -> str:
  """Text from a run (its name, config values) as Markdown shows it: viewers render raw
  HTML, so ``<script>`` becomes text; a ``|`` would cut a table cell."""
  return html.escape(str(text), quote=False).replace("|", "\\|")


def _table_md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _num(value: Any) -> str:
  return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _run_rows(records: Sequence[Mapping[str, Any]]) -> list[list[str]]:
  return [[r["name"], r["stopped"], _num(r["step"]), f"{_num(r['best'])} @ {_num(r['best_step'])}",
           f"{_num(r['final'])} @ {_num(r['final_step'])}"] for r in records]


_RUN_HEADER = ("run", "stopped", "steps", "best (step)", "final (step)")


def write(runs: Sequence[run_records.Run], found: Sequence[diagnoses.Diagnosis],
          figures: Mapping[str, str], out_dir: str) -> dict[str, str]:
  """Writes report.json, report.md and report.html into ``out_dir``; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  records = [run_record(r) for r in runs]
  differing = differing_config(runs) if len(runs) > 1 else {}
  doc = {"runs": records, "diagnoses": [d.record() for d in found],
         "differing_config": differing,
         "figures": {k: os.path.relpath(v, out_dir) for k, v in figures.items()}}
  paths = {k: os.path.join(out_dir, f"report.{k}") for k in ("json", "md", "html")}
  json_files.write_json(paths["json"], doc, default=str)

  metric = runs[0].metric
  md = [f"# agejax report: {_md(' vs '.join(r.name for r in runs))}", "",
        _table_md([*_RUN_HEADER[:3], f"best {metric} (step)", f"final {metric} (step)"],
                  _run_rows(records)), ""]
  if differing:
    md += ["## Config keys that differ", "",
           _table_md(["key", *[r.name for r in runs]],
                     [[k, *map(str, v)] for k, v in differing.items()]), ""]
  md += ["## Diagnoses", ""]
  md += [f"- **{_md(d.run)}: {_md(d.kind)}**: "
         + _md(d.line().split(": ", 1)[1]).replace("\n  -&gt; ", ". *Do:* ")
         for d in found] or ["No diagnosis: nothing in the curves calls for a change."]
  md += ["", "## Figures", ""]
  md += [f"![{name}]({os.path.relpath(p, out_dir)})" for name, p in figures.items()]
  with open(paths["md"], "w", encoding="utf-8") as f:
    f.write("\n".join(md) + "\n")

  def table_html(header, rows):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"

  parts = [f"<h1>agejax report: {html.escape(' vs '.join(r.name for r in runs))}</h1>",
           table_html([*_RUN_HEADER[:3], f"best {metric} (step)", f"final {metric} (step)"],
                      _run_rows(records))]
  if differing:
    parts += ["<h2>Config keys that differ</h2>",
              table_html(["key", *[r.name for r in runs]],
                         [[k, *map(str, v)] for k, v in differing.items()])]
  parts.append("<h2>Diagnoses</h2>")
  parts += [f"<p><b>{html.escape(d.run)}: {html.escape(d.kind)}</b>: "
            f"{html.escape(d.line().split(': ', 1)[1].split(chr(10))[0])}<br><i>Do:</i> "
            f"{html.escape(d.advice)}</p>" for d in found] or [
                "<p>No diagnosis: nothing in the curves calls for a change.</p>"]
  parts.append("<h2>Figures</h2>")
  for name, p in figures.items():
    with open(p, "rb") as f:
      data = base64.b64encode(f.read()).decode("ascii")
    parts.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
  style = ("body{font-family:sans-serif;max-width:60em;margin:auto}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
           "img{max-width:100%;display:block;margin:1em 0}")
  with open(paths["html"], "w", encoding="utf-8") as f:
    f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>agejax report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
  return paths
