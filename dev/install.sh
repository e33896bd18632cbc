#!/usr/bin/env bash
# Sets up a virtual environment with everything ssd_d2 and its tests need.
#
#   dev/install.sh            # creates ./.venv (or $SSD_D2_VENV) and installs into it
#
# Idempotent: when nothing in the install recipe changed since the last successful run, it
# only checks that the imports work and returns in a few seconds.
#
# detectron2 is installed from its GitHub source when that is reachable (the official route,
# with compiled ops), otherwise from PyPI's pb1-detectron2==0.6 source distribution, which
# carries detectron2 v0.6's Python code without the C++ sources: its build skips the
# extension and installs dev/detectron2_C_stub.py as detectron2._C so that every
# detectron2 module imports.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSD_D2_VENV:-$REPO_ROOT/.venv}"
PYTHON_FOR_VENV="${PYTHON:-python3.11}"
command -v "$PYTHON_FOR_VENV" >/dev/null || PYTHON_FOR_VENV=python3

STAMP="$VENV/.ssd_d2_install_stamp"
RECIPE_HASH="$(cat "$REPO_ROOT/dev/install.sh" "$REPO_ROOT/dev/detectron2_C_stub.py" \
    "$REPO_ROOT/setup.py" | sha256sum | cut -d' ' -f1)"

check_imports() {
    "$VENV/bin/python" - <<'EOF'
import detectron2.modeling, detectron2.engine  # noqa: F401
import ssd_d2  # noqa: F401
EOF
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE_HASH" ]] && check_imports 2>/dev/null; then
    echo "[install] environment at $VENV is up to date"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[install] creating virtual environment $VENV with $PYTHON_FOR_VENV"
    "$PYTHON_FOR_VENV" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Pinned so that pip never resolves another (multi-GB) torch build.
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
echo "[install] torch"
"${PIP[@]}" install -q "${TORCH_PINS[@]}"

install_official_detectron2() {
    "${PIP[@]}" install -q --no-build-isolation "${TORCH_PINS[@]}" \
        "git+https://github.com/facebookresearch/detectron2.git"
}

install_pypi_detectron2() {
    local workdir
    workdir="$(mktemp -d)"
    # Fetch the sdist without building it (its setup.py needs torch at metadata time).
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
        -d "$workdir" "pb1-detectron2==0.6"
    tar -xzf "$workdir"/pb1-detectron2-0.6.tar.gz -C "$workdir"
    local src="$workdir/pb1-detectron2-0.6"
    # No C++ sources ship in this sdist: build no extension, install the stand-in _C.
    sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$src/setup.py"
    grep -q "ext_modules=\[\]," "$src/setup.py"
    cp "$REPO_ROOT/dev/detectron2_C_stub.py" "$src/detectron2/_C.py"
    "${PIP[@]}" install -q --no-build-isolation "${TORCH_PINS[@]}" "${V06_PINS[@]}" "$src"
    rm -rf "$workdir"
}

# detectron2 v0.6 uses numpy, Pillow and matplotlib APIs removed in later releases.
V06_PINS=()
echo "[install] detectron2"
if timeout 20 git ls-remote https://github.com/facebookresearch/detectron2.git HEAD \
    >/dev/null 2>&1; then
    install_official_detectron2
else
    echo "[install] github.com unreachable: using PyPI pb1-detectron2==0.6 (no compiled ops)"
    V06_PINS=("numpy<1.24" "Pillow<10" "matplotlib<3.8")
    install_pypi_detectron2
fi

echo "[install] ssd_d2 and test tools"
"${PIP[@]}" install -q "${TORCH_PINS[@]}" "${V06_PINS[@]}" -e "$REPO_ROOT[test]"

check_imports
echo "$RECIPE_HASH" >"$STAMP"
echo "[install] done: $VENV"
