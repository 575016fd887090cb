r"""The audit experiment of README "Auditing a dataset": planted problems, found or not.

For each seed: writes tests/audit_fixture.py's release with planted
duplicates, conflicts, an impossible age and 5% random labels; builds it
with `tfds build` as ten identity folders; trains agejax.protocol's five
splits with CONFIG on it; audits it with `agejax.audit --protocol_root`;
and prints, per seed, how the planted problems ranked: the AUROC of the
noisy labels' scores against the clean ones (scipy's Mann-Whitney U), the
share of noisy labels among the top 1% listed, how many noisy labels pass
the threshold, and the recall and false pairs of the planted duplicates.
The table goes to OUT/table.md.

  python launch/audit_experiment.py OUT --config=configs/demo.py [--seeds=0,1] \
      [--scale=1] [--config.k=v ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np
from scipy import stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import audit_fixture  # noqa: E402  (the release the tests audit)

DATASET = "age_csv/planted_folders"


def _run(args: list[str], log: str) -> None:
  with open(log, "w") as f:
    subprocess.run([sys.executable, *args], cwd=REPO, check=True, stdout=f,
                   stderr=subprocess.STDOUT)


def measure(planted: audit_fixture.Planted, audit_dir: str) -> dict[str, float]:
  """The planted problems' ranks in one audit's files."""
  with open(os.path.join(audit_dir, "label_scores.csv")) as f:
    rows = list(csv.DictReader(f))
  score = np.array([float(r["score"]) for r in rows])
  noisy = np.array([r["key"] in planted.noisy for r in rows])
  doc = json.load(open(os.path.join(audit_dir, "audit.json")))
  issues = doc["label_issues"]
  top = [r["key"] for r in issues["top"]]
  over = {r["key"] for r, s in zip(rows, score) if s > issues["threshold"]}
  found = {tuple(sorted(p["keys"])) for p in doc["pairs"]}
  want = {tuple(sorted(p)) for p in planted.leaks | planted.conflicts}
  return {
      "auroc": float(stats.mannwhitneyu(score[noisy], score[~noisy]).statistic
                     / (noisy.sum() * (~noisy).sum())),
      "top_precision": float(np.mean([k in planted.noisy for k in top])),
      "top": len(top), "noisy": int(noisy.sum()),
      "noisy_over": len(over & set(planted.noisy)), "over": len(over),
      "pair_recall": len(found & want) / len(want), "false_pairs": len(found - want),
      "pairs": len(found)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("out")
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--scale", type=int, default=1, help="times the fixture's distinct faces")
  args, overrides = parser.parse_known_args()  # --config.k=v: for every run
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)}")
  results = {}
  for seed in [int(s) for s in args.seeds.split(",")]:
    root = os.path.abspath(os.path.join(args.out, f"seed{seed}"))
    os.makedirs(root, exist_ok=True)
    planted = audit_fixture.write_release(os.path.join(root, "manual"), seed=seed,
                                          scale=args.scale)
    data = os.path.join(root, "data")
    _run(["-m", "tensorflow_datasets.scripts.cli.main", "build", "data_builders/age_csv",
          f"--manual_dir={root}/manual", f"--data_dir={data}",
          f"--config={audit_fixture.FOLDERS_CONFIG}"], os.path.join(root, "build.log"))
    _run(["-m", "agejax.protocol", f"--config={args.config}", f"--benchmark={DATASET}",
          f"--workdir_root={root}/protocol", f"--config.data.data_dir={data}",
          "--config.data.num_train_examples=0", f"--config.seed={seed}", *overrides],
         os.path.join(root, "protocol.log"))
    _run(["-m", "agejax.audit", f"--dataset={DATASET}", f"--data_dir={data}",
          f"--output={root}/audit", f"--protocol_root={root}/protocol"],
         os.path.join(root, "audit.log"))
    results[seed] = measure(planted, os.path.join(root, "audit"))
    print(f"seed {seed}: {results[seed]}", flush=True)
  lines = ["| seed | AUROC | noisy among top 1% | noisy over threshold | duplicate recall | "
           "false pairs |", "|---|---|---|---|---|---|"]
  for seed, r in results.items():
    lines.append(f"| {seed} | {r['auroc']:.3f} | {r['top_precision']:.0%} of {r['top']} | "
                 f"{r['noisy_over']} of {r['noisy']} ({r['over']} over in all) | "
                 f"{r['pair_recall']:.0%} | {r['false_pairs']} of {r['pairs']} |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(table)
  print(table, end="")


if __name__ == "__main__":
  main()
