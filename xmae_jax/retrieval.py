"""`python -m xmae_jax.retrieval ...`: the console script `xmae-retrieval` (cross-modal retrieval
with M2AE fingerprints; xmae_jax/cli/xmae_retrieval.py)."""
import sys

from xmae_jax.cli.xmae_retrieval import main

if __name__ == "__main__":
  sys.exit(main())
