#!/usr/bin/env bash
# The GPU check, in one command (under 8 minutes): the CUDA tests, the CUDA benchmark (one summary table), and
# the demo probe on the GPU with logging at debug against logging off.
# Run it first whenever a machine with a GPU is lent; put its table, the GPU's name and the date in
# benchmarks/RESULTS.md. Extra arguments go to bench_cuda.py (e.g. --max-mib 256).
#
# Python: .venv/bin/python when there is one, else $PYTHON or python3 (a lent GPU machine has its own torch
# and cannot install anything). What it lacks travels as wheels in .whl/ (see scripts/gpu-wheels.sh); they are
# unpacked into /tmp/asynclog-site and put on PYTHONPATH with this checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/asynclog-site \
    .whl/*.whl || exit 4
  export PYTHONPATH="/tmp/asynclog-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'devices', torch.cuda.device_count()); sys.exit(0 if torch.cuda.is_available() else 3)" || {
  echo "gpu-check: torch sees no CUDA device"; exit 3; }
$PY -c "import msgspec, zstandard, crc32c, yaml, psutil, pytest" || { echo "gpu-check: missing packages (scripts/gpu-wheels.sh)"; exit 4; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
# A hung test must not eat the whole lease: pytest-timeout, where installed, stops it after 90 s.
per_test=$($PY -c "import pytest_timeout" 2>/dev/null && echo "--timeout 90")
timeout 200 $PY -m pytest -q -rs -p no:cacheprovider $per_test tests/test_cuda.py tests/test_cuda_stream.py || status=1
timeout 120 $PY benchmarks/bench_cuda.py --profile "$@" || status=1
# The demo probe on the GPU at debug level against logging off (goal: <= 1 % wall).
timeout 120 $PY benchmarks/bench_probe_overhead.py --device cuda --size small --repeats 5 --no-naive || status=1
exit $status
