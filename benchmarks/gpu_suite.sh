#!/usr/bin/env bash
# The GPU benchmark of issue 7 as one prepared run (about 8 minutes on one H200).
#
#   bash benchmarks/gpu_suite.sh prepare   # on a machine with PyPI: fetch the wheels it may need
#   bash benchmarks/gpu_suite.sh           # on the GPU machine
#
# What it does on the GPU machine:
#   1. makes sure python has jax with CUDA, torch with CUDA and bertjax's pure-Python needs
#      (ml_collections is the one the lent H200 image lacks): from the wheels in .whl/ when
#      they are there (no network on that machine), else with pip;
#   2. runs benchmarks/gpu_checks.py (cuDNN flash attention vs the float32 formula for every
#      mask form; models with attention "auto" vs "xla") and stops if a check fails;
#   3. runs benchmarks/train_speed.py for BERT-base seq 128, BERT-large seq 512 and GPT-2 small
#      seq 1024 at two batch sizes each (largest first, so that a run cut short still has every
#      model), bf16 compute, float32 master weights, next to transformers (bf16 autocast, SDPA,
#      fused AdamW) on the same GPU; MFU against 989 TFLOP/s (datasheet) and the 8192^3 bf16
#      matmul rate it measures first;
#   4. profiles the largest batch of each model (a jax.profiler trace and the compiled HLO in
#      $OUT/profile/, and a summary of where the step's time goes in the log);
#   5. writes the table to stdout and to $OUT/gpu_table.md (and the logs to $OUT/).
#
# With the lent-device tool:  run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"],
# timeout_s=600) after `bash benchmarks/gpu_suite.sh prepare` here (.whl/ is in .gitignore, so
# it travels only when carried). Environment knobs: PYTHON (default
# python3), OUT (default /tmp/bertjax_gpu), CONFIGS (row:batch list), TIME_BUDGET (seconds
# after which no new row starts, default 330), ROUNDS, STEPS, TORCH_INDEX_URL (where pip finds
# CUDA torch wheels, if torch must be installed), CPU_SMOKE=1 (try the script without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/bertjax_gpu}
CONFIGS=${CONFIGS:-bert_base:256,bert_large:32,gpt2_small:32,bert_base:128,bert_large:16,gpt2_small:16}
TIME_BUDGET=${TIME_BUDGET:-330}
ROUNDS=${ROUNDS:-5}
STEPS=${STEPS:-10}
# Pure-Python packages bertjax imports that a CUDA image may lack (versions as requirements.txt).
EXTRA_WHEELS=("ml_collections==1.1.0")

if [[ "${1:-}" == "prepare" ]]; then
  mkdir -p .whl
  for spec in "${EXTRA_WHEELS[@]}"; do
    "$PYTHON" -m pip download --no-deps --only-binary=:all: -d .whl "$spec" || exit 1
  done
  echo "wheels in .whl/ (ignored by .gitignore; pass carry=[\".whl\"]): $(ls .whl)"
  exit 0
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[gpu_suite $(date +%H:%M:%S)] $*"; }

# ----------------------------------------------------------------------------- 1. packages
missing=$("$PYTHON" - <<'EOF'
import importlib
names = ["ml_collections", "flax", "optax", "orbax.checkpoint", "absl", "transformers"]
print(" ".join(n for n in names if importlib.util.find_spec(n.split(".")[0]) is None))
EOF
)
if [[ -n "$missing" ]]; then
  log "missing python packages: $missing"
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/bertjax_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/bertjax_site${PYTHONPATH:+:$PYTHONPATH}
  else
    "$PYTHON" -m pip install -q -r requirements.txt || { log "cannot install $missing"; exit 1; }
  fi
fi
if [[ -n "${CPU_SMOKE:-}" ]]; then
  log "CPU_SMOKE set: no GPU installs (a dry run of this script on a machine without a GPU)"
elif ! "$PYTHON" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  log "jax has no GPU backend here: installing jax[cuda12]"
  "$PYTHON" -m pip install -q -U "jax[cuda12]" || { log "cannot install jax[cuda12]"; exit 1; }
fi
if [[ -z "${CPU_SMOKE:-}" ]] &&
  ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  log "torch has no CUDA here: installing a CUDA build of torch"
  "$PYTHON" -m pip install -q -U torch ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} ||
    { log "cannot install torch with CUDA"; exit 1; }
fi
"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/environment.txt"
import jax, torch, transformers, flax, optax
print("jax", jax.__version__, jax.devices())
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print("torch", torch.__version__, "cuda", torch.version.cuda, gpu)
print("transformers", transformers.__version__, "flax", flax.__version__, "optax", optax.__version__)
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv \
  2>&1 | tee -a "$OUT/environment.txt"

# ----------------------------------------------------------------------------- 2. checks
log "correctness checks of the fast path"
if ! timeout 120 "$PYTHON" benchmarks/gpu_checks.py 2>&1 | tee "$OUT/gpu_checks.log"; then
  log "a fast-path check failed (see $OUT/gpu_checks.log); not timing a wrong program"
  exit 1
fi

# ----------------------------------------------------------------------------- 3. benchmark
log "train-step benchmark: $CONFIGS"
timeout $((TIME_BUDGET + 120)) "$PYTHON" benchmarks/train_speed.py \
  --configs="$CONFIGS" --rounds="$ROUNDS" --steps="$STEPS" --warmup=3 \
  --time_budget="$TIME_BUDGET" --out="$OUT/gpu_table.md" \
  --profile="$OUT/profile" --profile_rows=bert_base:256,bert_large:32,gpt2_small:32 \
  2>&1 | tee "$OUT/train_speed.log" |
  grep -v -E "^(W|I)[0-9]{4} " || true

# ----------------------------------------------------------------------------- 5. the table
log "results ($OUT/gpu_table.md)"
cat "$OUT/gpu_table.md" 2>/dev/null || { log "no table was written"; exit 1; }
