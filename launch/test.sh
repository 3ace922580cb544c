#!/usr/bin/env bash
# README command 2: set up (or reuse) the environment, run the static checks (ruff, the pyink
# format check and mypy, with the settings in pyproject.toml; any failing fails the command) and the whole test suite on CPU.
# Two pytest-xdist workers, one test module per worker at a time (--dist loadscope: a module's
# fixtures are built once), the longest modules first (tests/conftest.py orders them), one
# compilation cache for the test run. Extra arguments go to pytest: `-n 0` runs in one process,
# `-n 4` uses four workers, `-x -k pipeline` as usual.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup_env.sh" train,test
cd "$root"
.venv/bin/ruff check --quiet .
.venv/bin/pyink --check --quiet .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder tests "$@"
