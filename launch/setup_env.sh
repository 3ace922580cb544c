#!/usr/bin/env bash
# Creates (or reuses) .venv and installs xmae-jax with the tested set for its Python:
#   Python 3.11       constraints.txt          (the pinned set CI uses; jax 0.10.x)
#   Python 3.12, 3.13 constraints-current.txt  (the tested current set; jax 0.11+ needs 3.12)
# Usage: bash launch/setup_env.sh [extras]     e.g. "train" to train, "train,test" for the
#                                             suite; none: the inference-only core
#   PYTHON=python3.12 bash launch/setup_env.sh test   the interpreter (default python3)
#   JAX_EXTRA=tpu (or cuda12, cuda13)                 also the accelerator build of jax, at the
#                                                     chosen set's jax version
# One .venv, whatever its Python: every launcher runs .venv/bin/python. Asking for another
# Python than the one .venv has rebuilds it (only a .venv this script made; it refuses others).
set -euo pipefail
extras="${1:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
venv="$root/.venv"
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
want="$(version_of "$py")"
case "$want" in
  3.11) constraints="$root/constraints.txt" ;;
  3.12 | 3.13) constraints="$root/constraints-current.txt" ;;
  *) echo "setup_env: xmae-jax supports Python 3.11-3.13; $py is ${want:-not found}" >&2
     exit 2 ;;
esac
if [ -e "$venv" ]; then
  have="$(version_of "$venv/bin/python")"
  if [ "$have" != "$want" ]; then
    if ! ls "$venv"/.xmae-installed-* > /dev/null 2>&1; then
      echo "setup_env: $venv is Python ${have:-?}, not $want, and not made here: move it" >&2
      exit 2
    fi
    echo "setup_env: $venv is Python ${have:-unknown}; rebuilding it for Python $want" >&2
    rm -rf "$venv"
  fi
fi
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
stamp="$venv/.xmae-installed-${extras:-core}${JAX_EXTRA:+-jax-$JAX_EXTRA}"
if [ ! -f "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ] || [ "$constraints" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  spec="$root"; [ -n "$extras" ] && spec="$root[$extras]"
  "$venv/bin/python" -m pip install -q -c "$constraints" -e "$spec"
  if [ -n "${JAX_EXTRA:-}" ]; then
    # The accelerator plugin is pinned to jax's exact version, so it follows the chosen set.
    jax_version="$(sed -n 's/^jax==//p' "$constraints")"
    "$venv/bin/python" -m pip install -q -c "$constraints" "jax[$JAX_EXTRA]==$jax_version"
  fi
  touch "$stamp"
fi
