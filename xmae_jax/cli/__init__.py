"""Command-line tools: one thin module per console script (`xmae-prepare` ->
`xmae_jax.cli.xmae_prepare`, ...), each a `main(argv) -> exit status` that parses flags and calls
library functions. What several tools share (flags, the one-line user-error handling) is in
`common`; no tool imports another.
"""
