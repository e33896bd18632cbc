#!/usr/bin/env bash
# Sets up a virtual environment with everything ssd_d2 and its tests need.
#
#   dev/install.sh            # creates ./.venv (or $SSD_D2_VENV) and installs into it
#
# Idempotent: when nothing in the install recipe changed since the last successful run, it
# only checks that the imports work and returns in a few seconds.
#
# Where detectron2 comes from ($SSD_D2_DETECTRON2_SOURCE):
#   unset          github's main branch when github.com is reachable, otherwise pypi-0.6
#   github         pip install 'git+https://github.com/facebookresearch/detectron2.git'
#   pypi-0.6       PyPI's pb1-detectron2==0.6 source distribution: detectron2 v0.6's Python
#                  code without the C++ sources. Its build skips the extension and installs
#                  dev/detectron2_C_stub.py as detectron2._C so that every module imports;
#                  numpy, Pillow and matplotlib are held below the releases that removed
#                  APIs v0.6 uses.
#   PATH           a Detectron2 source of your own: a clone, or a .tar.gz of one (e.g.
#                  ../shared/vendor/detectron2-02b5c4e.tar.gz), built with its compiled ops
#                  (about 6 minutes on 2 cores). The built wheel is kept in
#                  ${SSD_D2_CACHE:-~/.cache/ssd_d2}/wheels, keyed by the source's content, the
#                  torch and the Python version, so a second environment installs it in seconds.
#
# SSD_D2_INSTALL_DETECTRON2_ONLY=1 stops before ssd_d2 itself (to try `pip install -e .` in a
# bare Detectron2 environment, as tests/test_packaging.py does).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSD_D2_VENV:-$REPO_ROOT/.venv}"
PYTHON_FOR_VENV="${PYTHON:-python3.11}"
command -v "$PYTHON_FOR_VENV" >/dev/null || PYTHON_FOR_VENV=python3
DETECTRON2_SOURCE="${SSD_D2_DETECTRON2_SOURCE:-}"
CACHE_DIR="${SSD_D2_CACHE:-$HOME/.cache/ssd_d2}"

if [[ -z "$DETECTRON2_SOURCE" ]]; then
    if timeout 20 git ls-remote https://github.com/facebookresearch/detectron2.git HEAD \
        >/dev/null 2>&1; then
        DETECTRON2_SOURCE=github
    else
        echo "[install] github.com unreachable: detectron2 from PyPI's pb1-detectron2==0.6"
        DETECTRON2_SOURCE=pypi-0.6
    fi
fi
case "$DETECTRON2_SOURCE" in
    github | pypi-0.6) SOURCE_ID="$DETECTRON2_SOURCE" ;;
    *)
        if [[ ! -e "$DETECTRON2_SOURCE" ]]; then
            echo "[install] SSD_D2_DETECTRON2_SOURCE=$DETECTRON2_SOURCE: no such file or" \
                "folder. Give github, pypi-0.6, a Detectron2 clone or a .tar.gz of one." >&2
            exit 2
        fi
        DETECTRON2_SOURCE="$(cd "$(dirname "$DETECTRON2_SOURCE")" && pwd)/$(basename "$DETECTRON2_SOURCE")"
        if [[ -f "$DETECTRON2_SOURCE" ]]; then
            SOURCE_ID="$(sha256sum "$DETECTRON2_SOURCE" | cut -d' ' -f1)"
        elif git -C "$DETECTRON2_SOURCE" rev-parse HEAD >/dev/null 2>&1 &&
            [[ -z "$(git -C "$DETECTRON2_SOURCE" status --porcelain)" ]]; then
            SOURCE_ID="$(git -C "$DETECTRON2_SOURCE" rev-parse HEAD)"
        else
            SOURCE_ID="uncached-$(date +%s)"  # a folder with local changes: always rebuild
        fi
        ;;
esac

STAMP="$VENV/.ssd_d2_install_stamp"
RECIPE_HASH="$( (cat "$REPO_ROOT/dev/install.sh" "$REPO_ROOT/dev/detectron2_C_stub.py" \
    "$REPO_ROOT/setup.py"; echo "$SOURCE_ID") | sha256sum | cut -d' ' -f1)"

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
"${PIP[@]}" install -q "${TORCH_PINS[@]}" wheel

install_github_detectron2() {
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

install_local_detectron2() {
    local torch_version py_version wheel_dir src workdir
    torch_version="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
    py_version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    wheel_dir="$CACHE_DIR/wheels/detectron2-${SOURCE_ID:0:16}-torch$torch_version-py$py_version"
    if ! ls "$wheel_dir"/detectron2-*.whl >/dev/null 2>&1; then
        workdir="$(mktemp -d)"
        src="$DETECTRON2_SOURCE"
        if [[ -f "$src" ]]; then
            tar -xzf "$src" -C "$workdir"
            src="$(dirname "$(find "$workdir" -maxdepth 2 -name setup.py | head -1)")"
        fi
        echo "[install] building detectron2 with its ops from $DETECTRON2_SOURCE (minutes)"
        mkdir -p "$wheel_dir.tmp"
        MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
            -w "$wheel_dir.tmp" "$src"
        rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
        rm -rf "$workdir"
    fi
    "${PIP[@]}" install -q "${TORCH_PINS[@]}" "$wheel_dir"/detectron2-*.whl
}

# detectron2 v0.6 uses numpy, Pillow and matplotlib APIs removed in later releases.
V06_PINS=()
echo "[install] detectron2 ($DETECTRON2_SOURCE)"
case "$DETECTRON2_SOURCE" in
    github) install_github_detectron2 ;;
    pypi-0.6)
        V06_PINS=("numpy<1.24" "Pillow<10" "matplotlib<3.8")
        install_pypi_detectron2
        ;;
    *) install_local_detectron2 ;;
esac

if [[ -n "${SSD_D2_INSTALL_DETECTRON2_ONLY:-}" ]]; then
    echo "[install] done (detectron2 only): $VENV"
    exit 0
fi

echo "[install] ssd_d2 and test tools"
"${PIP[@]}" install -q "${TORCH_PINS[@]}" "${V06_PINS[@]}" -e "$REPO_ROOT[test]"

check_imports
echo "$RECIPE_HASH" >"$STAMP"
echo "[install] done: $VENV"
