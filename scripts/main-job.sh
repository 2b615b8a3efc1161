#!/usr/bin/env bash
# The main job: set up .venv if needed, then train an MLP on scikit-learn's digits
# (examples/digits/config.yaml). Extra arguments are training-argument flags, e.g.
#   bash scripts/main-job.sh --num_train_epochs 5 --report_to none
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# no telemetry probes from mlflow (there may be no network); set them yourself to change that
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}" DO_NOT_TRACK="${DO_NOT_TRACK:-true}"
exec .venv/bin/hooktrain train examples/digits/config.yaml "$@"
