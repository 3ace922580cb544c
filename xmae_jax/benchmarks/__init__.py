"""One module per `python -m xmae_jax.benchmarks` subcommand."""
