"""`python -m bert_jax.convert SRC DST` (the usage text is the command's docstring)."""

from bert_jax import cli
from bert_jax.convert import command

# absl prints the __main__ module's docstring as --help: show the command's full usage.
__doc__ = command.__doc__

if __name__ == "__main__":
    cli.run(command.main)
