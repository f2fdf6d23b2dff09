"""`python -m bert_jax.convert SRC DST` (the usage text is the package's docstring)."""

import bert_jax.convert
from bert_jax import cli

# absl prints the __main__ module's docstring as --help: show the package's full usage.
__doc__ = bert_jax.convert.__doc__

if __name__ == "__main__":
    cli.run(bert_jax.convert.main)
