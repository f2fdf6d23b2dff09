"""`make demo`: the main job end to end, offline, on the embedded default corpus.

1. trains a WordPiece vocab on the Python standard library's docstrings,
2. tokenizes them once into the prepared cache (9 in 10 modules for training,
   every 10th module held out for evaluation),
3. pretrains ModernBERT-tiny (MLM only, configs/pretrain/demo.py) with a
   progress bar, evaluating on the held-out modules, and prints the held-out
   table beside two context-free references (the most frequent token; copy
   the visible token),
4. plots the curves and prints fill-mask predictions from the checkpoint,

then the time each stage took (README "What the demo shows": about 4 minutes
on 2 idle CPU cores).

    python -m bert_jax.demo --workdir=runs/demo [--steps=N] [--vocab_size=V]
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import numpy as np
from absl import flags, logging

# pretrain defines --workdir (and --config); the demo reuses its --workdir.
from bert_jax import fill_mask, plot, pretrain
from bert_jax.data.pipeline import PretrainingPipeline
from bert_jax.data.token_cache import open_prepared
from bert_jax.train.run_identity import RerunMismatch

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 0, "Override the number of pretraining steps (0 = config's).")
flags.DEFINE_integer("vocab_size", 8000, "WordPiece vocabulary size.")

# Docstring-like sentences: the first four were the BERT-tiny demo's, the other
# twelve were written together before any ModernBERT run (none dropped after
# seeing answers); some need a noun, some a function word the context decides.
SENTENCES = [
    "Return a new [MASK] containing all items from the iterable.",
    "The [MASK] is closed when the with statement exits.",
    "Raise a ValueError if the [MASK] is not found.",
    "This module provides functions for working with [MASK] and directories.",
    "Return [MASK] if the object is callable, False otherwise.",
    "Raise a KeyError if the key is [MASK] found.",
    "If the argument is omitted, it defaults to [MASK].",
    "Return the number of [MASK] in the string.",
    "Return True if the path [MASK] to an existing file.",
    "This function is [MASK] for internal use only.",
    "See the documentation [MASK] more details.",
    "The default value [MASK] None.",
    "Open the file and return a file [MASK].",
    "Return the [MASK] of the file in bytes.",
    "Return a list of [MASK] and values.",
    "If [MASK] is None, the current directory is used.",
]


def _config(workdir: pathlib.Path):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    # configs/ is importable only after cli.configs_importable()
    from configs.pretrain import demo
    c = demo.get_config()
    c.data.prepared_dir = str(workdir / "prepared_train")
    c.eval_data.prepared_dir = str(workdir / "prepared_heldout")
    if FLAGS.steps:
        demo.set_steps(c, FLAGS.steps)
    return c


def pretrain_demo(config, run: pathlib.Path) -> None:
    """pretrain.train, with what to do when `run` holds an earlier demo's other
    recipe (a checkout updated since: the BERT-tiny demo before ModernBERT-tiny)."""
    try:
        pretrain.train(config, str(run))
    except RerunMismatch as e:
        raise RerunMismatch(f"{e} (for `make demo`: delete {run}, or pass WORKDIR=another/dir "
                            "to make, --workdir to python -m bert_jax.demo)") from None


def _model_name(config) -> str:
    family = "ModernBERT" if config.model.get("architecture") == "modernbert" else "BERT"
    return f"{family}-{config.model.size}"


def context_free_accuracy(config) -> tuple[str, float, float]:
    """What a model that ignores the context scores on the held-out batches
    `pretraining.evaluate` scores: (the training corpus's most frequent token,
    accuracy of always answering it, accuracy of answering the input token where
    BERT's masking left it in place (10% of the predictions) or replaced it with
    a random one (10%), and the most frequent token at [MASK]). A model must beat
    the second number to show it uses the context."""

    eval_cfg = config.data.copy_and_resolve_references()
    eval_cfg.prepared_dir = config.eval_data.prepared_dir
    pipe = PretrainingPipeline.from_config(eval_cfg, config.global_batch_size)
    V = pipe.tokenizer.vocab_size
    counts = sum(np.bincount(t, minlength=V) for t in open_prepared(config.data.prepared_dir).tokens)
    top = int(np.argmax(counts))
    unigram = copy = total = 0.0
    for i in range(config.eval_batches):
        b = pipe.batch(i)
        w = b["masked_weights"]
        seen = np.take_along_axis(b["input_ids"], b["masked_positions"], axis=1)
        guess = np.where(seen == pipe.tokenizer.mask_id, top, seen)
        unigram += float(np.sum((b["masked_ids"] == top) * w))
        copy += float(np.sum((b["masked_ids"] == guess) * w))
        total += float(np.sum(w))
    total = max(total, 1.0)
    return pipe.tokenizer.id_to_token(top), unigram / total, copy / total


def heldout_table(records: list[dict]) -> str:
    evals = [r for r in records if "eval_mlm_loss" in r]
    nsp = any("eval_nsp_accuracy" in r for r in evals)  # absent when MLM-only
    head = ["step", "held-out MLM loss", "held-out MLM accuracy"] + \
        (["held-out NSP accuracy"] if nsp else [])
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in evals:
        cells = [str(r["step"]), f"{r['eval_mlm_loss']:.2f}", f"{r['eval_mlm_accuracy']:.3f}"]
        if nsp:
            cells.append(f"{r.get('eval_nsp_accuracy', float('nan')):.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _seconds_since_process_start() -> float:
    """How long Python has run (interpreter start and imports), from /proc on Linux; 0 elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv):
    del argv
    times: dict[str, float] = {"0 start + imports": _seconds_since_process_start()}
    t_start = time.perf_counter() - times["0 start + imports"]
    logging.set_verbosity(logging.WARNING)
    # a command's module: importing it defines its flags (demo has its own)
    from bert_jax.data.prepare import prepare_corpus
    from bert_jax.data.vocab import train_vocab

    workdir = pathlib.Path(FLAGS.workdir or "runs/demo")
    workdir.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    vocab = workdir / "vocab.txt"
    if vocab.exists():
        print(f"[1/4] reusing {vocab}", flush=True)
    else:
        print(f"[1/4] training a {FLAGS.vocab_size}-token WordPiece vocab on the stdlib "
              "docstrings", flush=True)
        train_vocab("builtin:stdlib:train", FLAGS.vocab_size, vocab)
    times["1 vocab"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[2/4] tokenizing the corpus into the prepared cache", flush=True)
    for part in ("train", "heldout"):
        prepare_corpus(f"builtin:stdlib:{part}", vocab, workdir / f"prepared_{part}",
                       num_workers=2, progress=True)
    times["2 prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    config = _config(workdir)
    print(f"[3/4] pretraining {_model_name(config)} for {config.num_train_steps} steps "
          f"(batch {config.global_batch_size}, seq {config.data.max_seq_length}; the first "
          "step includes compilation)", flush=True)
    run = workdir / "pretrain"
    pretrain_demo(config, run)
    times["3 pretrain + held-out eval"] = time.perf_counter() - t
    records = plot.read_metrics(run / "metrics.jsonl")
    train_recs = [r for r in records if "mlm_accuracy" in r]
    if train_recs:
        first, last = train_recs[0], train_recs[-1]
        print(f"MLM accuracy (train): {first['mlm_accuracy']:.3f} at step {first['step']} -> "
              f"{last['mlm_accuracy']:.3f} at step {last['step']} "
              f"({last['step_time']:.3f} s/step)")
    print(f"held-out ({config.eval_batches} batches of {config.global_batch_size} from the "
          "held-out modules):\n" + heldout_table(records))
    token, unigram, copy = context_free_accuracy(config)
    print(f"without context, on the same batches: always answering the most frequent "
          f"training token {token!r} scores {unigram:.3f}; answering the input token where "
          f"masking kept or randomized it and {token!r} at [MASK] scores {copy:.3f}")

    t = time.perf_counter()
    print("[4/4] curves and fill-mask predictions", flush=True)
    png = run / "curves.png"
    plot.plot_curves(records, png, title=f"make demo: {_model_name(config)}")
    print(f"wrote {png}")
    for text, preds in zip(SENTENCES, fill_mask.fill_mask(run, SENTENCES, 5)):
        print(fill_mask.render(text, preds))
    times["4 curves + fill-mask"] = time.perf_counter() - t

    times["total"] = time.perf_counter() - t_start
    print("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    (workdir / "stage_times.json").write_text(json.dumps(times, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from bert_jax import cli
    cli.run(main)
