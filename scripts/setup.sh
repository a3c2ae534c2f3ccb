#!/usr/bin/env bash
# Creates .venv (if missing) and installs the package with its dev extras. torch goes first, pinned: a bare
# `torch` requirement would pull a multi-GB CUDA build, while torch==2.13.0 is a local CPU wheel on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q -e ".[dev,train${EXTRAS:+,$EXTRAS}]"
