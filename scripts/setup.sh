#!/usr/bin/env bash
# Create .venv and install asynclog in it, editable, with its test extra:
#
#   bash scripts/setup.sh                        .venv with `-e .[test]`
#   bash scripts/setup.sh --extras bench         also the peers `asynclog bench` compares against
#                                                (TensorBoard, wandb, loguru): `-e .[test,bench]`
#   bash scripts/setup.sh --extras export,plot   any extras of pyproject.toml, comma-separated
#   bash scripts/setup.sh --help                 this text, and the extras there are
#
# torch==2.13.0 goes in first: a CPU wheel, seconds to install; a bare `torch` requirement would pull a
# multi-GB CUDA build. Running it again on an existing .venv only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The extras pyproject.toml declares: the keys of its [project.optional-dependencies] table.
known_extras() {
    awk '/^\[/ { inside = ($0 == "[project.optional-dependencies]"); next }
         inside && /^[A-Za-z0-9_-]+ *=/ { sub(/ *=.*/, ""); print }' pyproject.toml
}

extras="test"
while [ $# -gt 0 ]; do
    case "$1" in
        --extras) [ $# -ge 2 ] || { echo "setup.sh: --extras needs NAME[,NAME]" >&2; exit 2; }
                  extras="test,$2"; shift 2 ;;
        --extras=*) extras="test,${1#--extras=}"; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'
                   echo "extras: $(known_extras | paste -sd, -)"; exit 0 ;;
        *) echo "setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for extra in ${extras//,/ }; do
    if ! known_extras | grep -qx "$extra"; then
        echo "setup.sh: no extra named '$extra'; pyproject.toml has: $(known_extras | paste -sd, -)" >&2
        exit 2
    fi
done

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[$extras]"
