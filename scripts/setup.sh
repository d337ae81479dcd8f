#!/usr/bin/env bash
# Create .venv and install cascade with its test extras and the app extra (gradio). Idempotent: a second run with an
# unchanged pyproject.toml / constraints.txt does nothing. Used by demo.sh, test.sh and CI.
#   CASCADE_VENV   where the virtual environment lives (default: .venv in the repository)
#   PYTHON         the interpreter that creates it (default: python3, >= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CASCADE_VENV:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.cascade-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing cascade and its dependencies into $venv (first time: a few minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # constraints.txt pins torch/torchvision to the builds this project is developed with.
  "$venv/bin/python" -m pip install -q -c constraints.txt -e ".[dev,app]"
  echo "$want" > "$stamp"
fi
"$venv/bin/python" -c "import cascade, torch; print(f'setup: cascade {cascade.__version__}, torch {torch.__version__}, python $("$venv/bin/python" -V | cut -d' ' -f2)')"
