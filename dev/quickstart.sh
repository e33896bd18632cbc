#!/usr/bin/env bash
# Sets up the environment (dev/install.sh, quick when already done), then trains the demo
# SSD on the embedded ssd_shapes data set (generated on first use) and evaluates it.
# Extra arguments are config overrides, e.g. `dev/quickstart.sh SOLVER.MAX_ITER 100`.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO_ROOT/dev/install.sh"
VENV="${SSD_D2_VENV:-$REPO_ROOT/.venv}"
cd "$REPO_ROOT"
# Without a GPU, two data-parallel processes of one thread each keep two cores busier than one
# process of two threads (0.18 s against 0.25 s an iteration on a 2-core machine).
PROCESSES=1
if ! "$VENV/bin/python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" \
  && [ "$(nproc)" -ge 2 ]; then
  PROCESSES=2
fi
exec "$VENV/bin/python" train_net.py --num-gpus "$PROCESSES" --dist-url auto \
  --config-file configs/ssd160_shapes_demo.yaml "$@"
