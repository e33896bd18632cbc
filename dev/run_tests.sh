#!/usr/bin/env bash
# Sets up the environment (dev/install.sh, quick when already done) and runs the test suite.
# Extra arguments go to pytest, e.g. `dev/run_tests.sh -m slow` for the end-to-end runs.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO_ROOT/dev/install.sh"
VENV="${SSD_D2_VENV:-$REPO_ROOT/.venv}"
cd "$REPO_ROOT"
exec "$VENV/bin/python" -m pytest "$@"
