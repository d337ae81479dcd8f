#!/usr/bin/env bash
# Set up (if needed) and run the test suite. The default suite is fast (tiny configs, CPU).
# Slow tests (training runs, subprocess kills) run too when CI=true or with --all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv="${CASCADE_VENV:-.venv}"
export CASCADE_DATA="${CASCADE_DATA:-$(cd .. && pwd)/shared/data}"
"$venv/bin/python" -m pytest -q
if [ "${CI:-}" = "true" ] || [ "${1:-}" = "--all" ]; then
  # exit status 5 = no slow tests collected, which is fine
  "$venv/bin/python" -m pytest -q -m slow || [ $? -eq 5 ]
fi
