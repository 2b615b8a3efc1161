#!/usr/bin/env bash
# Create the project's virtualenv (.venv in the repository root) and install hooktrain into it
# with every extra: the trackers, plotting, the examples' and Hugging Face's packages, the dev tools.
#
# torch is pinned to 2.13.0 and installed first, on its own: that is the CPU build this machine
# holds on disk, so no multi-GB CUDA build is downloaded. Idempotent and fast on a re-run: the
# install is skipped while .venv/.hooktrain-setup holds the same hash of pyproject.toml and this
# script. Set PYTHON to choose the interpreter (default python3), HOOKTRAIN_SETUP_FORCE=1 to
# reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.hooktrain-setup"
TORCH_VERSION=2.13.0

hash_inputs() {
    cat pyproject.toml scripts/setup.sh | "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

want="$(hash_inputs)"
if [[ -z "${HOOKTRAIN_SETUP_FORCE:-}" && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0  # up to date
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV with $("$PYTHON" --version 2>&1)" >&2
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

echo "setup: installing torch==$TORCH_VERSION" >&2
pip install --quiet "torch==$TORCH_VERSION"
echo "setup: installing hooktrain[all,examples,hf,dev] (editable)" >&2
pip install --quiet -e ".[all,examples,hf,dev]"
# pip may not replace the torch build above; fail loudly if something did
"$VENV/bin/python" - "$TORCH_VERSION" <<'PY'
import sys
import torch
if not torch.__version__.startswith(sys.argv[1]):
    sys.exit(f"setup: expected torch {sys.argv[1]}, found {torch.__version__}")
PY
echo "$want" > "$STAMP"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))" >&2
