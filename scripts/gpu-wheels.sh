#!/usr/bin/env bash
# Fetch, here, the wheels a lent GPU machine lacks (it has torch, pyyaml, psutil and pytest, but no msgspec,
# zstandard or crc32c, and cannot reach PyPI) into .whl/ (ignored by git), for scripts/gpu-check.sh to unpack there.
# Its python3 is 3.12 on x86_64 (the device tool's KINDS.md); pass another version as $1.
set -euo pipefail
cd "$(dirname "$0")/.."
ver=${1:-3.12}
mkdir -p .whl
exclude=$(git rev-parse --git-path info/exclude)  # .git is a file in a worktree
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
for pkg in msgspec zstandard crc32c; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$ver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg"
done
ls -la .whl
