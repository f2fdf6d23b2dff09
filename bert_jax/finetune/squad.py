"""SQuAD v1.1 / v2.0 as a fine-tuning task: reading (`squad_examples.py`),
windowed features (`squad_features.py`), n-best span decoding, metrics and
prediction files (`squad_decoding.py`), and the task and single-question
prediction here.

The semantics are Google's `run_squad.py`, with one change of mechanism:
answers are located and cut through the tokenizer's character offsets instead
of whitespace tokens plus `get_final_text`, so a prediction is always a slice
of the original context (never detokenized word pieces).

- Features: `[CLS] question [SEP] window [SEP]`. The question is cut to
  `max_query_length` tokens; windows of up to `max_seq_length - len(q) - 3`
  context tokens start every `doc_stride` tokens (Google's stride is the step,
  not the overlap). Training labels are the answer's first / last token inside
  the window, or [CLS] (0, 0) when the answer is not wholly inside it or the
  question is unanswerable.
- Decoding: for each window the `n_best_size` best start and end positions
  (ties by position), kept when both lie in the window's context, the start
  token has its maximum context in this window (`_check_is_max_context`), and
  the span is at most `max_answer_length` tokens; then all windows of an
  example are ranked together by start + end logit and deduplicated by text.
  v2.0 adds the null answer, scored by the smallest [CLS] start + end over the
  windows, and predicts "" when null minus the best non-null score exceeds
  `null_score_diff_threshold`.

Bad input (an answer_start that does not point at the answer text, an empty
context, a question longer than max_query_length, an answer that covers no
token) is counted in an `InputReport` and skipped in training, never raised.
Non-ASCII text is counted too but kept: the tokenizer handles it (a third of
dev-v1.1's questions have some), and the offsets still point into the original.
"""


from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bert_jax.finetune import batching
from bert_jax.finetune.squad_decoding import postprocess, score_predictions, write_prediction_files
from bert_jax.finetune.squad_examples import (
    SquadExample,
    build_unanswerable_v2,
    examples_from_data,
    load_squad_json,
    read_squad_json,
    read_squad_tfds,
    split_articles,
    subsample_examples,
)
from bert_jax.finetune.squad_features import SquadFeatures, build_features
from bert_jax.finetune.task import Batch, FinetuneTask, PredictFn, PredictRequest, register
from bert_jax.storage import paths

# ----------------------------------------------------------------------------
# The fine-tuning task
# ----------------------------------------------------------------------------

@register
class SquadTask(FinetuneTask):
    """FinetuneTask for SQuAD: span head, train/eval windows, official metrics."""

    kind = "squad"
    names = ("squad",)
    heads = ("span",)
    accepts_question = True
    head = "span"
    num_labels = 2
    main_metric = "f1"
    label_names: list[str] = []

    @classmethod
    def build(cls, config, tokenizer) -> SquadTask:
        return build_task(config, tokenizer)

    @classmethod
    def train_file(cls, config) -> str | None:
        # article_split trains on the first articles of dev_file.
        return config.dev_file if config.get("article_split") else config.get("train_file")

    @classmethod
    def unread_files(cls, config, tfds: bool) -> dict[str, str]:
        if tfds:
            return {"train_file": "with config.tfds (TFDS brings its own splits)"}
        if config.get("article_split"):
            return {"train_file": f"with config.article_split={config.article_split!r} (the "
                                  "first articles of dev_file train); set "
                                  "config.article_split='' to train on it"}
        return {}

    @classmethod
    def predict(cls, predictor, request: PredictRequest) -> list[tuple[dict, str]]:
        """Answers to --question/--context, or to every question of a SQuAD JSON file."""
        if request.question is not None:
            items = [("q", request.question, request.context)]
        elif request.input_path:
            examples = read_squad_json(paths.local_copy(request.input_path))
            items = [(e.qas_id, e.question, e.context) for e in examples]
        else:
            raise ValueError("a QA model needs --question and --context, or --input=FILE "
                             "(SQuAD JSON)")
        out = []
        for qid, q, c in items:
            text, score, start, end = answer(q, c, predictor.predict_fn, predictor.tokenizer,
                                             predictor.task_config)
            out.append(({"id": qid, "answer": text, "score": float(score), "start": start,
                         "end": end}, q))
        return out

    def __init__(self, config, tokenizer, train_examples: Sequence[SquadExample],
                 eval_examples: Mapping[str, Sequence[SquadExample]]):
        if max(config.length_buckets) < config.max_seq_length:
            raise ValueError(f"length_buckets={tuple(config.length_buckets)}: the largest must "
                             f"be >= max_seq_length={config.max_seq_length}")
        self.config = config
        self.version_2 = str(config.version).startswith("2")
        self.name = f"squad_v{config.version}"
        self.eval_splits = tuple(eval_examples)
        feat = dict(tokenizer=tokenizer, max_seq_length=config.max_seq_length,
                    doc_stride=config.doc_stride, max_query_length=config.max_query_length)
        self.train = build_features(train_examples, training=True, desc=f"{self.name}/train",
                                    **feat)
        self.evals = {k: build_features(v, training=False, desc=f"{self.name}/{k}", **feat)
                      for k, v in eval_examples.items()}
        self._train_rows = self.train.feature_dicts(with_index=False)
        self._eval_rows = {k: f.feature_dicts(with_index=True) for k, f in self.evals.items()}
        for split, line in self.reports().items():
            logging.info("%s/%s input: %s", self.name, split, line)

    def reports(self) -> dict[str, str]:
        """One line per split on skipped / questionable input."""
        return {"train": self.train.report.summary(),
                **{k: f.report.summary() for k, f in self.evals.items()}}

    def input_report(self, split: str) -> dict:
        """Examples read, skipped (no window: bad label in training, empty
        context) and flagged, by reason (`InputReport.counts`)."""
        r = self.train.report if split == "train" else self._split(split)[0].report
        return {"examples": r.examples, "skipped": r.skipped, "reasons": dict(r.counts)}

    def num_train_examples(self) -> int:
        return len(self._train_rows)

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        return batching.iterate_batches(self._train_rows, batch_size, self.config.length_buckets,
                                        shuffle=True, seed=seed, epoch=epoch)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        return batching.iterate_batches(self._split(split)[1], batch_size,
                                        self.config.length_buckets, shuffle=False,
                                        pad_values={"feature_index": -1})

    def _split(self, split: str) -> tuple[SquadFeatures, list[dict]]:
        if split not in self.evals:
            raise ValueError(f"split={split!r}: SQuAD has {sorted(self.evals)}")
        return self.evals[split], self._eval_rows[split]

    def collect_logits(self, split: str, outputs: Sequence[Mapping[str, np.ndarray]]
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-window start / end logits from the outputs of eval_batches(split).

        Rows are placed by the batch's `feature_index` when the outputs carry
        it, else by replaying the evaluation batch plan."""
        features, rows = self._split(split)
        n = len(features.windows)
        start: list[np.ndarray | None] = [None] * n
        end: list[np.ndarray | None] = [None] * n
        if outputs and all("feature_index" in o for o in outputs):
            plan = [np.asarray(o["feature_index"]) for o in outputs]
        else:
            size = np.asarray(outputs[0]["start_logits"]).shape[0] if outputs else 1
            plan = batching.plan_batches([len(r["input_ids"]) for r in rows], size,
                                         self.config.length_buckets, shuffle=False)
        if len(plan) != len(outputs):
            raise ValueError(f"evaluate({split!r}): {len(outputs)} output batches, "
                             f"expected {len(plan)}")
        for idx, o in zip(plan, outputs):
            sl, el = np.asarray(o["start_logits"]), np.asarray(o["end_logits"])
            for row, fi in enumerate(np.asarray(idx).tolist()):
                if 0 <= fi < n:
                    start[fi], end[fi] = sl[row], el[row]
        missing = sum(x is None for x in start)
        if missing:
            raise ValueError(f"evaluate({split!r}): no logits for {missing} of {n} windows")
        return start, end

    def evaluate(self, split: str, outputs: list[Mapping[str, np.ndarray]],
                 out_dir: str | None = None) -> dict[str, float]:
        """Official metrics of the outputs of eval_batches(split); with out_dir
        writes predictions.json, nbest_predictions.json, null_odds.json (v2.0)
        and eval_results.json under `<out_dir>/<split>/`."""
        features = self._split(split)[0]
        start, end = self.collect_logits(split, outputs)
        c = self.config
        preds = postprocess(features, start, end, c.n_best_size, c.max_answer_length,
                            self.version_2, c.null_score_diff_threshold)
        metrics = score_predictions(features.examples, preds, self.version_2,
                                    c.null_score_diff_threshold)
        logging.info("%s/%s: %s", self.name, split,
                     ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        if out_dir is not None:
            write_prediction_files(os.path.join(out_dir, split), preds, metrics, self.version_2)
        return metrics


def load_examples(config) -> tuple[list[SquadExample], dict[str, list[SquadExample]]]:
    """(train examples, {'dev': eval examples[, 'test': ...]}) as the config says:
    TFDS (`tfds`: True for squad/v<version>, or a name), the official JSON files, or the offline
    article split of one file (`article_split` 'N/M': its first N articles
    train, its last M evaluate), optionally turned into a v2.0-style set
    (`synthesize_v2`). `max_train_examples` / `max_eval_examples` > 0 keep a
    fixed random subset."""
    if config.tfds:
        name = config.tfds if isinstance(config.tfds, str) else f"squad/v{config.version}"
        data_dir = config.tfds_data_dir or None
        train = read_squad_tfds(name, "train", data_dir)
        dev = read_squad_tfds(name, "validation", data_dir)
    elif config.article_split:
        try:
            n_train, n_eval = (int(x) for x in str(config.article_split).split("/"))
        except ValueError:
            raise ValueError(f"article_split={config.article_split!r}: expected 'N/M', "
                             f"e.g. '38/10'") from None
        data = load_squad_json(config.dev_file)["data"]
        parts = split_articles(data, n_train, n_eval)
        if config.synthesize_v2:  # within each side, so no question crosses the split
            parts = tuple(build_unanswerable_v2(p, config.unanswerable_fraction,
                                                config.seed)["data"] for p in parts)
        train = examples_from_data(parts[0], f"{config.dev_file} (train articles)")
        dev = examples_from_data(parts[1], f"{config.dev_file} (eval articles)")
    else:
        train = read_squad_json(config.train_file) if config.train_file else []
        dev = read_squad_json(config.dev_file)
    train = subsample_examples(train, config.max_train_examples, config.seed)
    dev = subsample_examples(dev, config.max_eval_examples, config.seed)
    evals = {"dev": dev}
    if config.get("test_file"):
        # Evaluated and predicted like dev, into eval/<label>/test/ (whole:
        # max_eval_examples samples dev only). checks.check_files refuses it
        # with TFDS.
        evals["test"] = read_squad_json(config.test_file)
    return train, evals


def build_task(config, tokenizer) -> SquadTask:
    """The SQuAD FinetuneTask of a configs/finetune/squad.py config."""
    train, evals = load_examples(config)
    return SquadTask(config, tokenizer, train, evals)


# ----------------------------------------------------------------------------
# Single-question prediction (bert_jax.predict)
# ----------------------------------------------------------------------------

def answer(question: str, context: str, predict_fn: PredictFn, tokenizer, config
           ) -> tuple[str, float, int, int]:
    """The best answer to one question about one context.

    Args:
      predict_fn: batch -> {'start_logits', 'end_logits'} ([B, L] each).
      config: a squad config (sequence lengths, n-best, threshold, buckets).

    Returns:
      (answer text, start + end logit, char_start, char_end) with
      context[char_start:char_end] == text; for a v2.0 model that prefers no
      answer, ("", null score, -1, -1).
    """
    ex = SquadExample("predict", question, context)
    features = build_features([ex], tokenizer, config.max_seq_length, config.doc_stride,
                              config.max_query_length, training=False)
    start, end = [], []
    if features.windows:
        rows = features.feature_dicts(with_index=False)
        batch_size = len(rows)
        out = predict_fn(batching.collate(rows, np.arange(batch_size), batch_size,
                                          config.length_buckets))
        start = list(np.asarray(out["start_logits"]))
        end = list(np.asarray(out["end_logits"]))
    version_2 = str(config.version).startswith("2")
    preds = postprocess(features, start, end, config.n_best_size, config.max_answer_length,
                        version_2, config.null_score_diff_threshold)
    nbest = preds.nbest["predict"]
    if version_2 and preds.predictions["predict"] == "":
        null = next((x for x in nbest if not x.text), nbest[0])
        return "", null.start_logit + null.end_logit, -1, -1
    best = preds.best_non_null.get("predict") if version_2 else nbest[0]
    return best.text, best.start_logit + best.end_logit, best.char_start, best.char_end
