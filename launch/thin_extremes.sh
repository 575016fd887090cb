#!/usr/bin/env bash
# The thinned-extremes experiment of README "Ages you can trust": the demo
# recipe on synthetic_faces/thin_extremes (the train split keeps 10% of the
# faces under 13 and over 70; validation and test are whole), with no
# remedy, train.loss_weighting=lds and data.balance_ages, two seeds each.
# Each run is evaluated on the test split; the table of their age cards is
# printed at the end (and written to OUT/table.md).
#
#   launch/thin_extremes.sh OUT [--config.k=v ...]
set -euo pipefail
out=${1:?usage: $0 OUT [--config.k=v ...]}
shift
declare -A remedy=(
  [none]=""
  [lds]="--config.train.loss_weighting=lds"
  [balance_ages]="--config.data.balance_ages=True"
)
for name in none lds balance_ages; do
  for seed in 0 1; do
    workdir="$out/$name-seed$seed"
    # num_train_examples=0: the epochs count the thinned split's own faces.
    python -m agejax.main --config=configs/demo.py --workdir="$workdir" \
      --config.data.dataset=synthetic_faces/thin_extremes \
      --config.data.num_train_examples=0 --config.seed="$seed" ${remedy[$name]} "$@" \
      > "$workdir.log"
    python -m agejax.evaluate --workdir="$workdir" \
      --dataset=synthetic_faces/thin_extremes:test > "$workdir-evaluate.log"
    echo "$workdir: $(grep -m1 'best mae' "$workdir.log" | sed 's/^ *//')"
  done
done
python - "$out" <<'PY'
import glob, json, os, sys

out = sys.argv[1]
rows = ["| remedy | seed | MAE | 0-12 MAE | 0-12 bias | 65+ MAE | 65+ bias | Challenge-25 FPR |",
        "|---|---|---|---|---|---|---|---|"]
for name in ("none", "lds", "balance_ages"):
  for seed in (0, 1):
    path, = glob.glob(os.path.join(out, f"{name}-seed{seed}", "eval", "*_test_*[0-9].json"))
    record = json.load(open(path))
    bands = {b["band"]: b for b in record["card"]["bands"]}
    c25 = next(c for c in record["card"]["challenge"] if c["challenge"] == 25)
    rows.append(f"| {name} | {seed} | {record['mae']:.2f} | {bands['0-12']['mae']:.2f} | "
                f"{bands['0-12']['bias']:+.2f} | {bands['65+']['mae']:.2f} | "
                f"{bands['65+']['bias']:+.2f} | {c25['fpr']:.3f} |")
table = "\n".join(rows)
print(table)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
PY
