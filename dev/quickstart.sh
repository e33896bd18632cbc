#!/usr/bin/env bash
# Sets up the environment (dev/install.sh, quick when already done), then trains the demo
# SSD on the embedded ssd_shapes data set (generated on first use) and evaluates it.
# Extra arguments are config overrides, e.g. `dev/quickstart.sh SOLVER.MAX_ITER 100`.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO_ROOT/dev/install.sh"
VENV="${SSD_D2_VENV:-$REPO_ROOT/.venv}"
cd "$REPO_ROOT"
exec "$VENV/bin/python" train_net.py --config-file configs/ssd160_shapes_demo.yaml "$@"
