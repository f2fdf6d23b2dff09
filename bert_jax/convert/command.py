"""Convert BERT weights between HuggingFace dirs, Google TF1 checkpoints and ours.

    python -m bert_jax.convert SRC DST --to {bert_jax,hf,tf1}

The input format is detected: a HF dir (config.json + model.safetensors or
pytorch_model.bin), a bert_jax model dir or training workdir (bert_jax.json),
or a Google TF1 dir (bert_config.json + bert_model.ckpt.*, needs the `tf` extra).
Parameters the source lacks (a pooler, the MLM/NSP heads) are initialized fresh
and listed. Output goes to a temp dir and is renamed into place on success.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from bert_jax import cli
from bert_jax.convert import formats

FLAGS = flags.FLAGS
flags.DEFINE_enum("to", "bert_jax", ["bert_jax", "hf", "tf1"], "Output format.")
# The names of bert_jax.model.heads.HEADS, spelled out: importing it (JAX, Flax)
# here would slow every start of the command.
flags.DEFINE_enum("head", None, ["pretraining", "encoder", "classification", "regression", "span",
                                 "tagging"],
                  "Head to keep/build (default: what the source has; pretraining for bare "
                  "encoders).")
flags.DEFINE_integer("seed", 0, "Seed for parameters the source lacks.")
if "overwrite" not in FLAGS:  # defined once per process (tests import several commands)
    flags.DEFINE_bool("overwrite", False, "Also replace a DST holding only what a conversion "
                      "writes but no record of one (older or interrupted); never another "
                      "command's output, other files, a bucket root or the source.")



def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore at INFO
    if len(argv) != 3:
        raise app.UsageError("usage: python -m bert_jax.convert SRC DST --to {bert_jax,hf,tf1}")
    try:
        report = formats.convert(argv[1], argv[2], FLAGS.to, FLAGS.head, FLAGS.seed,
                                 FLAGS.overwrite)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in report:
        print(line)
    print(f"wrote {FLAGS.to} checkpoint to {argv[2]}")
    return 0


if __name__ == "__main__":
    cli.run(main)
