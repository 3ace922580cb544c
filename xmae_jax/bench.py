"""`python -m xmae_jax.bench ...`: the older name of `python -m xmae_jax.benchmarks ...`
(BENCHMARKS.md records its commands under this name)."""
from xmae_jax.benchmarks.__main__ import main

if __name__ == "__main__":
  main()
