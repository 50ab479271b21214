#!/usr/bin/env bash
# The test suite (set-up included): the default run excludes `slow` and `gpu` tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
