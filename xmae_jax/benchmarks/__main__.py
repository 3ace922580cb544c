"""Benchmarks: `python -m xmae_jax.benchmarks {data,prepare,train,reference,scaling} [flags]`.

Each prints one JSON line. Benchmarks are not tests: they measure, they do not assert.
"""

import importlib
import sys

COMMANDS = {
    "data": "xmae_jax.benchmarks.bench_data",
    "prepare": "xmae_jax.benchmarks.bench_prepare",
    "train": "xmae_jax.benchmarks.bench_train",
    "reference": "xmae_jax.benchmarks.bench_reference",
    "scaling": "xmae_jax.benchmarks.bench_scaling",
}


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in COMMANDS:
    sys.exit(f"usage: python -m xmae_jax.benchmarks {{{','.join(COMMANDS)}}} [flags]")
  importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
  main()
