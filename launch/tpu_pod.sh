#!/usr/bin/env bash
# Trains bertjax on a Cloud TPU VM pod slice: create it, set up every worker, start the run on all.
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR -- --config=configs/bert_base_pretrain.py:phase1 \
#       --workdir=gs://BUCKET/runs/bert_base --config.data.text_files='gs://BUCKET/wiki/*.txt' ...
#
# ACCELERATOR is a slice type, e.g. v4-32 or v5p-64. Every worker runs the same command;
# jax.distributed finds its peers from the TPU metadata (no flags needed), each worker reads
# its own shard of the data, and process 0 writes the metrics. The workdir must be storage
# that every worker sees (a gs:// bucket). The run goes to the background on each worker
# (log: ~/bertjax/run.log); re-running this script resumes from the workdir's latest checkpoint.
#
# Environment: PROJECT (gcloud project), RUNTIME (TPU VM image, default tpu-ubuntu2204-base),
# SPOT=1 for a preemptible (spot) slice: preemption sends SIGTERM, the run saves and exits,
# and the next start resumes. STOP=1 only stops the run on every worker.
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,16p' "$0"
  exit 2
fi
NAME=$1 ZONE=$2 ACCELERATOR=$3
shift 3
[ "${1:-}" = "--" ] && shift
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)

on_all_workers() {
  "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command="$1"
}

if [ "${STOP:-0}" = "1" ]; then
  # SIGTERM, as a preemption would: every worker saves a checkpoint and exits.
  on_all_workers "pkill -TERM -f 'python -m bertjax.main' || true"
  exit 0
fi

# 1. The slice (skipped when it exists).
if ! "${GCLOUD[@]}" describe "$NAME" "${COMMON[@]}" >/dev/null 2>&1; then
  "${GCLOUD[@]}" create "$NAME" "${COMMON[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" ${SPOT:+--spot}
fi

# 2. The code on every worker (this checkout, without its virtualenvs and runs).
tar -C "$REPO_DIR" --exclude=.git --exclude=.venv --exclude=runs -czf /tmp/bertjax.tgz .
"${GCLOUD[@]}" scp /tmp/bertjax.tgz "$NAME":/tmp/bertjax.tgz "${COMMON[@]}" --worker=all
on_all_workers "mkdir -p ~/bertjax && tar -C ~/bertjax -xzf /tmp/bertjax.tgz && cd ~/bertjax \
  && (test -x .venv/bin/python || python3 -m venv .venv) \
  && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]' \
  && .venv/bin/pip install -q --no-deps -e ."

# 3. The run, on all workers at once.
ARGS=$(printf ' %q' "$@")
on_all_workers "cd ~/bertjax && nohup .venv/bin/python -m bertjax.main${ARGS} > run.log 2>&1 &"
echo "started on every worker of $NAME; follow it with:"
echo "  gcloud compute tpus tpu-vm ssh $NAME --zone=$ZONE --worker=0 --command='tail -f ~/bertjax/run.log'"
