#!/usr/bin/env bash
# README command 2: set up (or reuse) the environment and run the whole test suite on CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup_env.sh" test
cd "$root"
exec .venv/bin/python -m pytest -q tests "$@"
