#!/usr/bin/env bash
# Installs the test dependencies into .venv (created if missing) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `./run_tests.sh -m "not slow"` or `./run_tests.sh tests/test_models.py`.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${BERTJAX_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements-test.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m ruff check bertjax tests configs launch benchmarks
"$VENV/bin/python" -m pytest -q "$@"
