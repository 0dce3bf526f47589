# shellcheck shell=bash
# Shared by scripts/test, scripts/demo, scripts/bench and .ci/run: source it, don't run it.
#
# Sets REPO, VENV, VENV_PYTHON; exports PYO3_PYTHON (so every cargo build
# embeds and links the venv's base Python, the same one pytest runs) and
# VIRTUAL_ENV (so maturin installs into the venv).
#
# Environment:
#   FARCALL_PYTHON  interpreter that creates .venv (default: python3 on PATH)

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
VENV_PYTHON="$VENV/bin/python"

export PYO3_PYTHON="$VENV_PYTHON"
export VIRTUAL_ENV="$VENV"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"

# step NAME: announce the next step; if the script then fails, the EXIT trap
# names the step that failed.
CURRENT_STEP=""
step() {
    CURRENT_STEP="$1"
    printf '\n==> %s\n' "$1"
}

# report_failure [CODE]: the EXIT trap (CODE defaults to the exit status).
report_failure() {
    local code=${1:-$?}
    if (( code != 0 )) && [[ -n "$CURRENT_STEP" ]]; then
        printf '\n*** %s: FAILED at step "%s" (exit code %d) ***\n' "$(basename "$0")" "$CURRENT_STEP" "$code" >&2
    fi
    return "$code"
}
trap report_failure EXIT

# ensure_venv PACKAGES...: create .venv if missing or broken, then pip install PACKAGES.
ensure_venv() {
    local python="${FARCALL_PYTHON:-python3}"
    if ! "$VENV_PYTHON" -c 'import sys' >/dev/null 2>&1; then
        command -v "$python" >/dev/null || { echo "error: $python not found; install CPython 3 or set FARCALL_PYTHON" >&2; return 1; }
        echo "creating $VENV with $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
    fi
    "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check "$@"
}

# cargo_target_dir: where cargo puts binaries (honours CARGO_TARGET_DIR and .cargo/config).
cargo_target_dir() {
    cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" \
        | "$VENV_PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# install_python_package [--release]: build the farcall Python package into the venv.
# shellcheck disable=SC2120 # arguments are optional
install_python_package() {
    (cd "$REPO" && "$VENV/bin/maturin" develop "$@" -m python/Cargo.toml)
}

# Python packages the scripts need in the venv (cloudpickle: `conn.teleport`, and the embedded
# backend, which runs this venv's Python, unpickles teleported functions with it).
# shellcheck disable=SC2034 # used by the scripts that source this file
VENV_PACKAGES=("maturin>=1.5,<2" "pytest>=8" "rpyc>=6,<7" "cloudpickle>=3,<4")
