"""Fine-tune BERT: `python -m bert_jax.finetune --config=configs/finetune/<task>.py:... --workdir=DIR
--config.init_checkpoint=CKPT`. With --sweep, runs config.sweep.lrs x config.sweep.seeds
into DIR/lr<lr>_seed<seed>/ and reports best and mean per metric (sweep_results.json)."""

from __future__ import annotations

import json
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from bert_jax import distributed, storage
from bert_jax.finetune import sweep, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_bool("sweep", False, "Run the config's learning-rate x seed sweep.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore at INFO
    if FLAGS.config is None or not FLAGS.workdir:
        raise app.UsageError("--config and --workdir are required")
    distributed.initialize()
    try:
        if FLAGS.sweep:
            result = sweep.run_sweep(FLAGS.config, FLAGS.workdir)
            if jax.process_index() == 0:  # the others saw no metrics (trainer returns {})
                storage.write_text(storage.join(FLAGS.workdir, "sweep_results.json"),
                                   json.dumps(result, indent=2, default=float))
                print(sweep.format_table(result))
        else:
            trainer.finetune(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, FloatingPointError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
