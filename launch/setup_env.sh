#!/usr/bin/env bash
# Creates (or reuses) .venv and installs xmae-jax with the pinned set in constraints.txt.
# Usage: source launch/setup_env.sh [extras]   e.g. "test" for the test suite.
set -euo pipefail
extras="${1:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  "$py" -m venv "$root/.venv"
fi
stamp="$root/.venv/.xmae-installed-${extras:-core}"
if [ ! -f "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ] || [ "$root/constraints.txt" -nt "$stamp" ]; then
  "$root/.venv/bin/python" -m pip install -q --upgrade pip
  spec="$root"; [ -n "$extras" ] && spec="$root[$extras]"
  "$root/.venv/bin/python" -m pip install -q -c "$root/constraints.txt" -e "$spec"
  touch "$stamp"
fi
