#!/usr/bin/env bash
# The whole test suite: set up .venv if needed, then lint (ruff), type-check the core (mypy) and
# run the tests (pytest; the examples' smoke runs and the docs' code included). Extra arguments
# go to pytest, e.g.  bash scripts/test.sh -x -k digits
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Trackers run for real but offline: no account, no network, nothing under $HOME
# (docs/reporters.md; tests/conftest.py sets the same for a bare `pytest`).
TRACKER_HOME="$(mktemp -d "${TMPDIR:-/tmp}/hooktrain-ci-XXXXXX")"
trap 'rm -rf "$TRACKER_HOME"' EXIT
export WANDB_MODE=offline WANDB_SILENT=true WANDB_ERROR_REPORTING=false WANDB_CONSOLE=off
export WANDB_X_DISABLE_STATS=true WANDB_X_DISABLE_META=true WANDB_DISABLE_GIT=true WANDB_X_SAVE_REQUIREMENTS=false
export WANDB_CACHE_DIR="$TRACKER_HOME/wandb-cache" WANDB_CONFIG_DIR="$TRACKER_HOME/wandb-config" WANDB_DATA_DIR="$TRACKER_HOME/wandb-data"
export COMET_DISABLE_AUTO_LOGGING=1 COMET_ERROR_TRACKING_ENABLE=false COMET_DISABLE_ANNOUNCEMENT=true COMET_LOGGING_CONSOLE=ERROR
export MLFLOW_DISABLE_TELEMETRY=true MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 MLFLOW_HTTP_REQUEST_TIMEOUT=5 DO_NOT_TRACK=true
export XDG_CONFIG_HOME="$TRACKER_HOME/xdg-config" MPLCONFIGDIR="$TRACKER_HOME/matplotlib"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$TRACKER_HOME/hf"

echo "== ruff" >&2
.venv/bin/ruff check hooktrain tests examples benchmarks tools
echo "== mypy hooktrain/core" >&2
.venv/bin/mypy hooktrain/core
echo "== pytest" >&2
.venv/bin/python -m pytest -q "$@"
