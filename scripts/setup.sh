#!/usr/bin/env bash
# Create the project's virtualenv (.venv in the repository root) and install hooktrain into it
# with every extra: the trackers, plotting, the examples' and Hugging Face's packages, the dev tools.
#
# torch is pinned to 2.13.0 and installed first, on its own: that is the CPU build this machine
# holds on disk, so no multi-GB CUDA build is downloaded. Idempotent and fast on a re-run: the
# install is skipped while .venv/.hooktrain-setup holds the same hash of pyproject.toml and this
# script. Set PYTHON to choose the interpreter (default python3), HOOKTRAIN_SETUP_FORCE=1 to
# reinstall, HOOKTRAIN_SETUP_PIP=1 to install with pip alone (uv is used by default, see below).
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

# uv installs the ~160 packages in seconds where pip takes minutes (parallel downloads and
# installs, bytecode compiled on every core; compiled up front as pip does, since a run with
# PYTHONDONTWRITEBYTECODE=1 would otherwise compile torch at every start). pip puts uv into .venv; uv is
# then given pip's own configuration (index URLs, find-links, constraints, certificate, timeout)
# and pip's choice among them (the best version over all indexes), so it installs the same files.
# Without uv (HOOKTRAIN_SETUP_PIP=1, or uv not installable) pip does it all, as before.
uv_args() {  # pip's configuration as uv options, one a line; the certificate and timeout as env
    "$VENV/bin/python" - "$("$VENV/bin/python" -m pip config list 2>/dev/null)" <<'PY'
import sys
options = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint", "trusted-host": "--allow-insecure-host"}
environment = {"cert": "SSL_CERT_FILE", "timeout": "UV_HTTP_TIMEOUT", "default-timeout": "UV_HTTP_TIMEOUT"}
seen = set()
for line in sys.argv[1].splitlines():  # section.key='value' (section: global, install, :env:)
    key, _, value = line.partition("=")
    name, value = key.rsplit(".", 1)[-1], value.strip().strip("'\"")
    for item in value.split() if name in options else [value]:
        if name in options and (name, item) not in seen:
            seen.add((name, item))
            print(f"{options[name]}={item}")
        elif name in environment:
            print(f"env:{environment[name]}={item}")
        elif name == "no-index" and value.lower() in ("1", "true", "yes", "on"):
            print("--no-index")
PY
}
install() {  # install ARGS...: with uv when it is there, else with pip
    if [[ -n "$use_uv" ]]; then
        "${uv_env[@]}" "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" \
            --index-strategy unsafe-best-match --compile-bytecode "${uv_opts[@]}" "$@"
    else
        pip install --quiet "$@"
    fi
}
uv_opts=() uv_env=(env) use_uv=
if [[ -z "${HOOKTRAIN_SETUP_PIP:-}" ]] && pip install --quiet uv; then
    use_uv=1
    while IFS= read -r line; do
        if [[ "$line" == env:* ]]; then uv_env+=("${line#env:}"); else uv_opts+=("$line"); fi
    done < <(uv_args)
else
    echo "setup: installing with pip alone (HOOKTRAIN_SETUP_PIP set, or uv not installable)" >&2
fi

echo "setup: installing torch==$TORCH_VERSION" >&2
install "torch==$TORCH_VERSION"
echo "setup: installing hooktrain[all,examples,hf,dev] (editable)" >&2
pin="$VENV/.torch-pin.txt"
echo "torch==$TORCH_VERSION" > "$pin"  # nothing below may replace that build
install --constraint "$pin" -e ".[all,examples,hf,dev]"
rm -f "$pin"
# pip may not replace the torch build above; fail loudly if something did
"$VENV/bin/python" - "$TORCH_VERSION" <<'PY'
import sys
import torch
if not torch.__version__.startswith(sys.argv[1]):
    sys.exit(f"setup: expected torch {sys.argv[1]}, found {torch.__version__}")
PY
echo "$want" > "$STAMP"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))" >&2
