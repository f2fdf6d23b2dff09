"""`make demo`: the main job end to end, offline, on the embedded default corpus.

1. trains a WordPiece vocab on the Python standard library's docstrings,
2. tokenizes them once into the prepared cache (9 in 10 modules for training,
   every 10th module held out for evaluation),
3. pretrains BERT-tiny (MLM + NSP) for about 5 minutes on CPU with a progress
   bar, evaluating on the held-out modules,
4. plots the curves and prints fill-mask predictions from the checkpoint.

    python -m bert_jax.demo --workdir=runs/demo [--steps=N]
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags, logging

# pretrain defines --workdir (and --config); the demo reuses its --workdir.
from bert_jax import fill_mask, plot, pretrain

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 0, "Override the number of pretraining steps (0 = config's).")
flags.DEFINE_integer("vocab_size", 8000, "WordPiece vocabulary size.")

SENTENCES = [
    "Return a new [MASK] containing all items from the iterable.",
    "The [MASK] is closed when the with statement exits.",
    "Raise a ValueError if the [MASK] is not found.",
    "This module provides functions for working with [MASK] and directories.",
]


def _config(workdir: pathlib.Path):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from configs.pretrain import bert_tiny
    c = bert_tiny.get_config()
    c.data.prepared_dir = str(workdir / "prepared_train")
    c.eval_data.prepared_dir = str(workdir / "prepared_heldout")
    if FLAGS.steps:
        c.num_train_steps = FLAGS.steps
        c.checkpoint.every = max(FLAGS.steps // 4, 1)
        c.eval_every = max(FLAGS.steps // 4, 1)
    return c


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from bert_jax.data.prepare import prepare_corpus
    from bert_jax.data.vocab import train_vocab

    workdir = pathlib.Path(FLAGS.workdir or "runs/demo")
    workdir.mkdir(parents=True, exist_ok=True)
    vocab = workdir / "vocab.txt"
    if not vocab.exists():
        print(f"[1/4] training a {FLAGS.vocab_size}-token WordPiece vocab on the stdlib "
              "docstrings", flush=True)
        train_vocab("builtin:stdlib:train", FLAGS.vocab_size, vocab)
    print("[2/4] tokenizing the corpus into the prepared cache", flush=True)
    for part in ("train", "heldout"):
        prepare_corpus(f"builtin:stdlib:{part}", vocab, workdir / f"prepared_{part}",
                       num_workers=2, progress=True)
    config = _config(workdir)
    print(f"[3/4] pretraining BERT-{config.model.size} for {config.num_train_steps} steps "
          f"(batch {config.global_batch_size}, seq {config.data.max_seq_length})", flush=True)
    run = workdir / "pretrain"
    summary = pretrain.train(config, str(run))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "mlm_accuracy" in r]
    if train_recs:
        first, last = train_recs[0], train_recs[-1]
        print(f"MLM accuracy (train): {first['mlm_accuracy']:.3f} at step {first['step']} -> "
              f"{last['mlm_accuracy']:.3f} at step {last['step']}")
    if "eval" in summary:
        ev = summary["eval"]
        print("held-out: " + ", ".join(f"{k}={v:.3f}" for k, v in ev.items()))
    print("[4/4] curves and fill-mask predictions", flush=True)
    png = run / "curves.png"
    plot.plot_curves(plot.read_metrics(run / "metrics.jsonl"), png, title="make demo: BERT-tiny")
    print(f"wrote {png}")
    for text, preds in zip(SENTENCES, fill_mask.fill_mask(run, SENTENCES, 5)):
        print(fill_mask.render(text, preds))
    return 0


if __name__ == "__main__":
    app.run(main)
