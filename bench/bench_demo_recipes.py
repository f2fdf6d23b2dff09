"""Candidate recipes for `make demo`, each trained in its own process on the
demo's corpus (stdlib docstrings, every 10th module held out), then scored
against the demo's own context-free references on the held-out batches.

    taskset -c 0 .venv/bin/python bench/bench_demo_recipes.py --root=/tmp/demo_trials \
        --recipe="now:" --recipe="mlm:data.nsp=False,optim.lr=2e-3" --steps=400 \
        --results=trials.jsonl

A recipe is `name:key=value,...` over configs/pretrain/demo.py's fields
(`vocab=N` picks the WordPiece vocabulary size; its vocab and prepared cache
are built once under --root and reused; `arch=bert` starts from the config's
BERT-tiny recipe instead of ModernBERT-tiny). Per recipe: wall seconds of the
pretraining run (compilation and the held-out evaluations included), seconds
per step from its metrics, the last held-out MLM accuracy, the two references
(most frequent token; copy the visible token, most frequent token at [MASK])
and the top fill-mask answer for each of the demo's [MASK] sentences.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

from absl import flags
from common import REPO, markdown_table  # also puts REPO on sys.path

from bert_jax import demo as demo_cli  # defines --steps (0 = the config's) and --vocab_size

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "/tmp/demo_trials", "Vocabularies, caches and runs go here.")
flags.DEFINE_multi_string("recipe", [], "name:key=value,... (repeatable)")
flags.DEFINE_string("child", "", "internal: run this one recipe")
flags.DEFINE_string("results", "", "Append one JSON line per recipe here.")


def parse(recipe: str) -> tuple[str, dict[str, str]]:
    name, _, rest = recipe.partition(":")
    kv = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, kv


def prepared(root: pathlib.Path, vocab_size: int) -> pathlib.Path:
    from bert_jax.data.prepare import prepare_corpus
    from bert_jax.data.vocab import train_vocab
    d = root / f"v{vocab_size}"
    if not (d / "prepared_heldout").exists():
        d.mkdir(parents=True, exist_ok=True)
        train_vocab("builtin:stdlib:train", vocab_size, d / "vocab.txt")
        for part in ("train", "heldout"):
            prepare_corpus(f"builtin:stdlib:{part}", d / "vocab.txt", d / f"prepared_{part}",
                           num_workers=1, progress=False)
    return d


def _set(c, key: str, value: str) -> None:
    *path, leaf = key.split(".")
    for p in path:
        c = c[p]
    old = c[leaf]
    c[leaf] = (value.lower() == "true" if isinstance(old, bool)
               else type(old)(value) if old is not None else value)


def run_child(recipe: str) -> dict:
    from bert_jax import fill_mask, plot, pretrain
    from configs.pretrain import demo

    name, kv = parse(recipe)
    root = pathlib.Path(FLAGS.root)
    d = prepared(root, int(kv.pop("vocab", FLAGS.vocab_size)))
    c = demo.get_config(f"arch={kv.pop('arch', 'modernbert')}")
    steps = int(kv.pop("steps", FLAGS.steps))
    if steps:
        demo.set_steps(c, steps)
    for k, v in kv.items():
        _set(c, k, v)
    c.data.prepared_dir = str(d / "prepared_train")
    c.eval_data.prepared_dir = str(d / "prepared_heldout")
    run = root / "runs" / name
    t0 = time.perf_counter()
    pretrain.train(c, str(run))
    train_s = time.perf_counter() - t0
    records = plot.read_metrics(run / "metrics.jsonl")
    evals = [r for r in records if "eval_mlm_accuracy" in r]
    steps = [r for r in records if "step_time" in r]
    token, unigram, copy = demo_cli.context_free_accuracy(c)
    answers = [" / ".join(m[0][0] for m in preds)
               for preds in fill_mask.fill_mask(run, demo_cli.SENTENCES, 1)]
    return {"recipe": recipe, "steps": c.num_train_steps, "train_s": train_s,
            "s_per_step": steps[-1]["step_time"] if steps else float("nan"),
            "heldout": [(r["step"], r["eval_mlm_accuracy"]) for r in evals],
            "unigram": unigram, "copy": copy, "top_token": token, "fill_mask": answers}


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(run_child(FLAGS.child)))
        return 0
    rows = []
    for recipe in FLAGS.recipe:
        cmd = [sys.executable, __file__, f"--child={recipe}", f"--root={FLAGS.root}",
               f"--steps={FLAGS.steps}"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if p.returncode:
            print(f"{recipe}: failed (rc {p.returncode})\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["process_s"] = time.perf_counter() - t0
        print(json.dumps(r), file=sys.stderr, flush=True)
        if FLAGS.results:
            with open(FLAGS.results, "a") as f:
                f.write(json.dumps(r) + "\n")
        rows.append([r["recipe"], r["steps"], f"{r['s_per_step']:.3f}", f"{r['train_s']:.0f}",
                     f"{r['heldout'][-1][1]:.3f}" if r["heldout"] else "-",
                     f"{r['unigram']:.3f}", f"{r['copy']:.3f}", "; ".join(r["fill_mask"])])
    print(markdown_table(["recipe", "steps", "s/step", "train s", "held-out acc",
                          "top-token ref", "copy ref", "fill-mask top-1"], rows))
    return 0


if __name__ == "__main__":
    from bert_jax import cli
    cli.run(main)
