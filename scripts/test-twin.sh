#!/usr/bin/env bash
# scripts/test-twin.sh: the model outside the daemon (issue 13, docs/export.md). Runs the
# PyTorch twin's unit tests (its region extractor against the Rust golden file) and the
# end-to-end check: a tiny checkpoint of each architecture trained by the real daemon,
# exported as safetensors, must give the same embeddings in PyTorch (max abs diff <= 1e-4)
# and the same recall as `unimod eval`; a lineage warm-started from it must hold its weights.
#
# Needs Python with torch, safetensors and tokenizers: UNIMOD_PYTHON, else the virtual
# environment that scripts/install-deps.sh creates (UNIMOD_VENV, default
# ~/.cache/unimod/venv). Without them this script fails (exit 2): it never skips silently.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=${UNIMOD_VENV:-$HOME/.cache/unimod/venv}
py=${UNIMOD_PYTHON:-$venv/bin/python}
if ! "$py" -c 'import torch, safetensors, tokenizers' >/dev/null 2>&1; then
    printf 'test-twin.sh: %s cannot import torch, safetensors and tokenizers\n' "$py" >&2
    printf 'test-twin.sh: run scripts/install-deps.sh (or set UNIMOD_PYTHON)\n' >&2
    exit 2
fi
export UNIMOD_PYTHON=$py
# This checkout's twin, whatever an editable install in the venv points at.
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
echo "test-twin.sh: python unit tests ($("$py" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null))"
PYTHONPATH=python "$py" -m unittest discover -s python/tests -t python
echo "test-twin.sh: cargo test -p unimod-e2e --test daemon export_twin -- --ignored"
cargo test --locked -p unimod-e2e --test daemon export_twin -- --ignored --nocapture --test-threads=1
echo "test-twin.sh: passed in $((SECONDS - start)) s"
