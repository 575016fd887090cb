#!/usr/bin/env bash
# Several hosts without a cluster manager: start this on every host with the
# same coordinator (host:port of process 0, reachable from all hosts), the
# number of processes and each host's own id (0 .. N-1).
#
#   host0$ launch/multi_host.sh 10.0.0.1:1234 2 0 configs/imdb_wiki_resnet50.py /shared/runs/r50
#   host1$ launch/multi_host.sh 10.0.0.1:1234 2 1 configs/imdb_wiki_resnet50.py /shared/runs/r50
#
# Every process reads its own part of each split and feeds its local devices;
# the global batch (train.batch_size) is split over all devices of all hosts.
# To resume after a failure or preemption, start the same commands again with
# the same workdir (on a shared file system).
set -euo pipefail
usage="usage: $0 COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID CONFIG WORKDIR [--config.k=v ...]"
coordinator=${1:?$usage}
num_processes=${2:?$usage}
process_id=${3:?$usage}
config=${4:?$usage}
workdir=${5:?$usage}
shift 5
exec python -m agejax.main --config="$config" --workdir="$workdir" \
  --coordinator_address="$coordinator" --num_processes="$num_processes" \
  --process_id="$process_id" "$@"
