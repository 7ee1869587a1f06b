#!/usr/bin/env bash
# The test command (README): sets up the virtual environment if needed, then runs the whole suite.
#   bash tests/run.sh [pytest options, e.g. --allow-missing-data or -k name]
# PYRO_SPARSE_VENV: the venv folder (default .venv); it is (re)installed when missing or when pyproject.toml changed.
# PYRO_SPARSE_DATA: the data root (default: the repository's sibling shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PYRO_SPARSE_VENV:-.venv}"
stamp="$venv/.pyro-sparse-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 -e ".[dev]"
  echo "$want" > "$stamp"
fi
. "$venv/bin/activate"
export PYRO_SPARSE_DATA="${PYRO_SPARSE_DATA:-$(cd .. && pwd)/shared/data}"
exec python -m pytest -q "$@"
