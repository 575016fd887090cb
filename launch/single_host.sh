#!/usr/bin/env bash
# One host, any number of GPUs: a single process sees every local GPU, and the
# compiled step shards each global batch over all of them (data parallel).
#
#   launch/single_host.sh configs/imdb_wiki_resnet50.py /runs/dex_r50 [--config.k=v ...]
#
# train.batch_size is the GLOBAL batch: with 8 GPUs and batch 256 each GPU
# computes 32 images per step. It must divide by the number of GPUs.
# Preempted or killed? Run the same command with the same workdir: it resumes
# from the latest checkpoint, with the same input position.
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [--config.k=v ...]}
workdir=${2:?usage: $0 CONFIG WORKDIR [--config.k=v ...]}
shift 2
# TensorFlow runs only the input pipeline: keep it off the GPUs, and let XLA
# take most of the GPU memory up front instead of growing it.
export CUDA_DEVICE_ORDER=PCI_BUS_ID
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m agejax.main --config="$config" --workdir="$workdir" "$@"
