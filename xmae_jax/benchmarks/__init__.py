"""One module per `python -m xmae_jax.bench` subcommand."""
