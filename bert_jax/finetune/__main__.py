"""Fine-tune BERT: `python -m bert_jax.finetune --config=configs/finetune/<task>.py:... --workdir=DIR
--config.init_checkpoint=CKPT`. With --sweep, runs config.sweep.lrs x config.sweep.seeds
into DIR/lr<lr>_seed<seed>/ and reports best and mean per metric (sweep_results.json).

A rerun of the same command resumes from the newest checkpoint (a sweep skips
the runs that finished). SIGTERM or a first Ctrl-C saves the step and exits 75
(rerun to continue); see bert_jax/cli/ for the exit codes."""

from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

from bert_jax import cli
from bert_jax.finetune import checks
from bert_jax.storage import outputs, paths, run_dir
from bert_jax.train import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_bool("sweep", False, "Run the config's learning-rate x seed sweep.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore at INFO
    if FLAGS.config is None or not FLAGS.workdir:
        raise app.UsageError("--config and --workdir are required")
    # Before JAX, the model code and the processes joining: a bad config or
    # workdir is reported in a fraction of a second.
    checks.check_config(FLAGS.config)
    workdir = FLAGS.workdir
    outputs.check_destination(workdir, what="workdir", flag="a new --workdir",
                              is_own=checks.is_finetune_workdir, resume=True,
                              record=outputs.record("finetune", "fine-tuning workdir"),
                              sources=[FLAGS.config.get("init_checkpoint") or None])
    # JAX: its config and workdir checks run first, before JAX loads
    from bert_jax.train import distributed
    distributed.initialize()
    with run_dir.claim(workdir, has_progress=_has_progress):
        summary = _run()
    return cli.EXIT_PREEMPTED if "preempted_at" in summary else cli.EXIT_OK


def _has_progress(workdir) -> bool:
    """A checkpoint or a logged step in the run, or in one run of a sweep."""
    if loop.has_progress(workdir):
        return True
    try:
        return any(loop.has_progress(paths.join(workdir, e)) for e in paths.listdir(workdir)
                   if e.startswith("lr") and "_seed" in e)
    except OSError:
        return True  # cannot tell: keep it


def _run() -> dict:
    """The run's summary; 'preempted_at' in it when a signal stopped it (exit 75)."""
    # JAX: its config and workdir checks run first, before JAX loads
    import jax

    # JAX: its config and workdir checks run first, before JAX loads
    from bert_jax.finetune import sweep, trainer
    if not FLAGS.sweep:
        return trainer.finetune(FLAGS.config, FLAGS.workdir)
    result = sweep.run_sweep(FLAGS.config, FLAGS.workdir)
    if "preempted_at" in result:
        return result
    if jax.process_index() == 0:  # the others saw no metrics (trainer returns {})
        paths.write_text(paths.join(FLAGS.workdir, "sweep_results.json"),
                         json.dumps(result, indent=2, default=float))
        print(sweep.format_table(result))
    return result


if __name__ == "__main__":
    cli.run(main)
