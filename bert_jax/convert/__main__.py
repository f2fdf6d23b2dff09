"""`python -m bert_jax.convert SRC DST`."""

from bert_jax import cli
from bert_jax.convert import main

if __name__ == "__main__":
    cli.run(main)
