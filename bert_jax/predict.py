"""Predictions from a fine-tuned model (the `model/` dir a fine-tuning run writes).

Classification / regression (GLUE), one example per line, a tab separates a pair:
    python -m bert_jax.predict --checkpoint=runs/sst2/model --input=lines.txt [--json]
Span QA (SQuAD):
    python -m bert_jax.predict --checkpoint=runs/squad/model --question=Q --context=C
    python -m bert_jax.predict --checkpoint=runs/squad/model --input=qa.json   # SQuAD JSON
NER (CoNLL-2003), raw text per line:
    python -m bert_jax.predict --checkpoint=runs/ner/model --input=text.txt [--json]
Lines also come from positional arguments or, with --input=-, standard input.
"""

from __future__ import annotations

import io
import json
import pathlib
import sys

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import ConfigDict

from bert_jax.convert import formats, model_dir
from bert_jax.finetune import conll, squad
from bert_jax.finetune import task as tasks
from bert_jax.finetune.task import PredictRequest
from bert_jax.model.heads import get_head, restore_model
from bert_jax.storage import paths


class Predictor:
    """A fine-tuned model dir (or its fine-tuning workdir) ready to predict."""

    def __init__(self, checkpoint: str | pathlib.Path):
        path = checkpoint if paths.is_url(checkpoint) else pathlib.Path(checkpoint)
        if model_dir.is_model_dir(paths.join(path, "model")):
            path = paths.join(path, "model")  # a fine-tuning workdir
        cfg, meta, flat = formats.read_any(path)
        self.meta = meta
        self.head = meta["head"]
        self.head_obj = get_head(self.head)
        if not self.head_obj.task:
            raise ValueError(f"{path}: a {self.head} checkpoint has no task head; fine-tune "
                             "it first (python -m bert_jax.finetune)")
        # The task that trained it (HF / TF1 checkpoints: the first with its head)
        # turns raw input into records.
        self.task = tasks.of_kind(meta.get("task", {}).get("kind"), self.head)
        self.label_names = meta.get("label_names", [])
        self.task_config = ConfigDict(meta.get("task", {}).get("config", {}))
        self.tokenizer = model_dir.tokenizer_of(path, meta)
        graphdef, state = restore_model(cfg, self.head, meta.get("num_labels", 0), flat, str(path))

        @jax.jit
        def forward(state, ids, types, mask):
            return nnx.merge(graphdef, state)(ids, types, mask)

        self._state, self._forward = state, forward

    def predict_fn(self, batch) -> dict[str, np.ndarray]:
        out = self._forward(self._state, batch["input_ids"], batch["token_type_ids"],
                            batch["attention_mask"])
        return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

    def classify(self, texts: list[str], pairs: list[str | None] | None = None,
                 batch_size: int = 32) -> list[dict]:
        max_len = int(self.task_config.get("max_seq_length", 128))
        encs = self.tokenizer.encode_batch(texts, pairs, max_length=max_len)
        results = []
        for s in range(0, len(encs), batch_size):
            chunk = encs[s:s + batch_size]
            t = max(len(e) for e in chunk)
            t = -(-t // 16) * 16
            batch = {k: np.zeros((batch_size, t), np.int32)
                     for k in ("input_ids", "token_type_ids", "attention_mask")}
            for i, e in enumerate(chunk):
                batch["input_ids"][i, :len(e)] = e.ids
                batch["token_type_ids"][i, :len(e)] = e.type_ids
                batch["attention_mask"][i, :len(e)] = 1
            logits = self.predict_fn(batch)["logits"][:len(chunk)]
            for row in logits:
                if not self.head_obj.named_labels:  # regression: the score itself
                    results.append({"label": None, "score": float(row[0])})
                else:
                    z = np.exp(row - row.max())
                    p = z / z.sum()
                    k = int(p.argmax())
                    name = self.label_names[k] if k < len(self.label_names) else str(k)
                    results.append({"label": name, "score": float(p[k]),
                                    "probabilities": {
                                        (self.label_names[i] if i < len(self.label_names)
                                         else str(i)): float(x) for i, x in enumerate(p)}})
        return results

    def answer(self, question: str, context: str) -> dict:
        text, score, start, end = squad.answer(question, context, self.predict_fn,
                                               self.tokenizer, self.task_config)
        return {"answer": text, "score": float(score), "start": start, "end": end}

    def entities(self, text: str) -> list[dict]:
        c = self.task_config
        return conll.tag_text(text, self.predict_fn, self.tokenizer, self.label_names,
                              max_seq_length=int(c.get("max_seq_length", 128)),
                              window_stride=int(c.get("window_stride", 64)),
                              length_buckets=tuple(c.get("length_buckets", (32, 64, 128))))


FLAGS = flags.FLAGS


def define_flags() -> None:
    """CLI flags, defined only when run as a program: embed, predict and
    fill_mask share flag names and may be imported into one process."""
    flags.DEFINE_string("checkpoint", None, "Fine-tuned model dir (or its fine-tuning workdir).")
    flags.DEFINE_string("input", None, "Input file ('-' = stdin): lines, or SQuAD JSON for QA.")
    flags.DEFINE_string("question", None, "QA: the question.")
    flags.DEFINE_string("context", None, "QA: the context paragraph.")
    flags.DEFINE_bool("json", False, "Print JSON lines.")


def _lines(argv) -> list[str]:
    if FLAGS.input:
        # newline=None: universal newlines, as open() reads a local file.
        f = sys.stdin if FLAGS.input == "-" else io.StringIO(paths.read_text(FLAGS.input),
                                                            newline=None)
        with f:
            lines = [line.rstrip("\n") for line in f]
    else:
        lines = list(argv[1:])
    return [line for line in lines if line.strip()]


def _check_input(argv) -> None:
    """Reject missing input before loading the model, which takes seconds."""
    if FLAGS.question is not None:
        if not (FLAGS.context or "").strip():
            raise ValueError("--question needs a non-empty --context")
    elif FLAGS.input:
        if FLAGS.input != "-" and not paths.isfile(FLAGS.input):
            raise FileNotFoundError(f"{FLAGS.input}: no such input file")
    elif len(argv) < 2:
        raise ValueError("no input: pass --input=FILE ('-' = stdin), text arguments, or "
                         "--question and --context")


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required")
    try:
        _check_input(argv)
        pred = Predictor(FLAGS.checkpoint)
        if not pred.task.accepts_question and FLAGS.question is not None:
            raise ValueError(f"--question/--context are for QA models; {FLAGS.checkpoint} is "
                             f"a {pred.head} model")
        lines = [] if pred.task.accepts_question else _lines(argv)
        if not pred.task.accepts_question and not lines:
            raise ValueError("no input: the input has only empty lines")
        request = PredictRequest(lines, FLAGS.question, FLAGS.context, FLAGS.input)
        for record, line in pred.task.predict(pred, request):
            print(json.dumps(record) if FLAGS.json else pred.head_obj.format(record, line))
    except (ValueError, FileNotFoundError, paths.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    from bert_jax import cli
    cli.run(main)
