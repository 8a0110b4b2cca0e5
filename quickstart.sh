#!/usr/bin/env bash
# Installs bertjax's runtime dependencies into .venv and pretrains the tiny BERT on the embedded corpus.
# Offline: no model or data set is downloaded. Extra arguments go to bertjax.main, e.g. --config.total_steps=200.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${BERTJAX_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
WORKDIR="${WORKDIR:-runs/bert_tiny}"
echo "Pretraining configs/bert_tiny_pretrain.py into $WORKDIR (metrics: $WORKDIR/metrics.jsonl)"
exec "$VENV/bin/python" -m bertjax.main --config=configs/bert_tiny_pretrain.py --workdir="$WORKDIR" "$@"
