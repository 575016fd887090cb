"""``agejax.report``: read runs, diagnose, draw, write, and tell the console."""

from __future__ import annotations

import os
from typing import Any, Sequence

from agejax import terminal
from agejax.analysis import diagnoses
from agejax.analysis import documents
from agejax.analysis import report_figures
from agejax.analysis import run_records
from agejax.errors import UsageError


def write_report(workdirs: Sequence[str], output: str | None = None,
                 thresholds: Sequence[str] = ()) -> dict[str, Any]:
  """Writes the report of ``workdirs`` (one run, or a comparison); returns report.json's content.

  Raises:
    UsageError: a workdir that is not a training run, or a bad threshold.
  """
  limits = diagnoses.Thresholds.parse(list(thresholds))
  runs = []
  for workdir in workdirs:
    try:
      runs.append(run_records.load(workdir))
    except FileNotFoundError as e:
      raise UsageError(f"--workdir={workdir}: {e}") from None
  if len({r.name for r in runs}) < len(runs):  # same folder name under different parents
    runs = [run_records.Run(r.workdir, r.workdir, r.config, r.summary, r.records) for r in runs]
  out = output or os.path.join(workdirs[0], "report")
  found = [d for r in runs for d in diagnoses.diagnose(r, limits)]
  figures = report_figures.write_all(runs, os.path.join(out, "figures"))
  files = documents.write(runs, found, figures, out)

  for record in (documents.run_record(r) for r in runs):
    terminal.echo(f"{record['name']}: {record['stopped']}; best {record['metric']} "
                  f"{documents._num(record['best'])} at step {documents._num(record['best_step'])}")
  if len(runs) > 1:
    differing = documents.differing_config(runs)
    terminal.echo(terminal.block("config keys that differ", [
        (k, "  |  ".join(map(str, v))) for k, v in differing.items()] or [("none", "")]))
  for d in found:
    terminal.echo(f"{d.run}: {d.line()}" if len(runs) > 1 else d.line())
  if not found:
    terminal.echo("no diagnosis: nothing in the curves calls for a change")
  terminal.echo(f"report: {files['html']} (also {os.path.basename(files['md'])}, "
                f"{os.path.basename(files['json'])}, figures/)")
  with open(files["json"], encoding="utf-8") as f:
    import json  # pylint: disable=import-outside-toplevel

    return json.load(f)
