#!/usr/bin/env bash
# Run the test suite on every Python this machine has among python3.10 .. python3.13, each in its own venv
# under .venv-matrix/<version> (made once, reused after). torch==2.13.0 goes in first, then `-e .[test]`.
# Arguments pass through to pytest:  bash scripts/test-matrix.sh -x tests/test_config.py
# PYTHONS="3.10 3.12" picks versions.  Prints one result line per interpreter and exits non-zero when any of them failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# pythonX.Y on PATH when it runs, else a pyenv install of X.Y (pyenv's shims refuse versions not selected).
find_python() {
    if "python$1" -c "" 2>/dev/null; then command -v "python$1"; return; fi
    local root
    root="$(pyenv root 2>/dev/null)" || return 1
    for candidate in "$root"/versions/"$1".*/bin/"python$1"; do
        [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
    return 1
}
results=()
status=0
for version in ${PYTHONS:-3.10 3.11 3.12 3.13}; do
    if ! python="$(find_python "$version")"; then
        results+=("python$version: not found, skipped")
        continue
    fi
    venv=".venv-matrix/$version"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv" \
            && "$venv/bin/python" -m pip install -q --upgrade pip \
            && "$venv/bin/python" -m pip install -q "torch==2.13.0" \
            || { results+=("python$version: venv setup failed"); status=1; continue; }
    fi
    if ! "$venv/bin/python" -m pip install -q -e ".[test]"; then
        results+=("python$version: install failed"); status=1; continue
    fi
    echo "=== python$version ==="
    # SIGINT back to Python's default: a background job (`... &`) starts with it ignored, every child
    # inherits that, and the suite's Ctrl-C tests would then wait for an interrupt that never comes.
    if "$venv/bin/python" -c 'import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))' -q "$@"; then
        results+=("python$version: passed")
    else
        results+=("python$version: FAILED"); status=1
    fi
done
printf '%s\n' "${results[@]}"
exit $status
