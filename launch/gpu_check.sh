#!/usr/bin/env bash
# Every check a new GPU machine needs before a real run, in a few minutes:
#
#   bash launch/gpu_check.sh [--platform gpu|cpu] [--output FILE]
#
# 1. the compiled train step, ResNet-50 at 224 px in bfloat16, batch 128 and
#    256: images/s, MFU against a bf16 matmul measured in the same run, and
#    peak memory (python -m agejax.benchmark step);
# 2. a short synthetic-data training run that checkpoints halfway, restores
#    and finishes, compared bit for bit with an uninterrupted run
#    (python -m agejax.benchmark resume).
#
# It needs JAX (CUDA), flax, optax, orbax-checkpoint and ml-collections, and
# neither TensorFlow nor the internet: nothing here reads a dataset. Wheels
# placed in .whl/ (for example ml-collections, fetched elsewhere with
# `pip download --no-deps ml-collections -d .whl`) are installed first into
# /tmp/agejax-site. One summary line per check goes to stdout; the JSON
# records to --output (default gpu_check.jsonl). `--platform cpu` runs the
# same checks at tiny sizes: the script's own self-test.
set -euo pipefail
cd "$(dirname "$0")/.."

platform=gpu
output=gpu_check.jsonl
while [[ $# -gt 0 ]]; do
  case "$1" in
    --platform) platform="$2"; shift 2 ;;
    --platform=*) platform="${1#*=}"; shift ;;
    --output) output="$2"; shift 2 ;;
    --output=*) output="${1#*=}"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --platform gpu|cpu, --output FILE)" >&2
       exit 2 ;;
  esac
done
if [[ "$platform" != gpu && "$platform" != cpu ]]; then
  echo "gpu_check.sh: --platform must be gpu or cpu, got $platform" >&2
  exit 2
fi

python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/agejax-site .whl/*.whl
  export PYTHONPATH="/tmp/agejax-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

if [[ "$platform" == gpu ]]; then
  # The published network and the batches a GPU run uses.
  model=(--arch resnet50 --width 64 --image_size 224 --dtype bfloat16)
  batches=(128 256)
  resume=(--batch_size 128 --resume_steps 20)
  timing=(--steps 10 --repeats 5 --warmup 2 --matmul_size 8192)
else
  model=(--arch resnet18 --width 8 --image_size 32 --dtype float32)
  batches=(8 16)
  resume=(--batch_size 8 --resume_steps 4)
  timing=(--steps 2 --repeats 2 --warmup 1 --matmul_size 256)
fi

rm -f "$output"
run() {  # one check: its table rows to stdout, its records to $output
  "$python" -m agejax.benchmark "$@" --platform "$platform" "${model[@]}" --output "$output"
}
start=$SECONDS
for batch in "${batches[@]}"; do
  run step --batch_size "$batch" "${timing[@]}"
done
run resume "${resume[@]}"
echo "gpu_check: ${platform}, $((SECONDS - start)) s, records in $output"
"$python" - "$output" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
failed = [r for r in records if r["name"] == "resume" and not r["bit_identical"]]
if failed:
  sys.exit("gpu_check: the resumed run is NOT bit-identical to the uninterrupted one")
print("gpu_check: ok (" + records[0]["device_kind"] + ")")
EOF
