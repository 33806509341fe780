#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Pass --full for the long fault and property suites.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
