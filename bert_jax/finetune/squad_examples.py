"""SQuAD examples: reading the official JSON (and TFDS), gold answers, and the
offline data sets made from one file (the article split, a v2.0-style set with
unanswerable questions from v1.1). Used by the SQuAD task (`squad.py`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bert_jax.storage import paths

# ----------------------------------------------------------------------------
# Examples and reading
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset into the context


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question about one paragraph. `answers` is empty for unanswerable
    v2.0 questions (whose `plausible_answers` the model never trains on)."""

    qas_id: str
    question: str
    context: str
    answers: tuple[Answer, ...] = ()
    is_impossible: bool = False
    title: str = ""
    plausible_answers: tuple[Answer, ...] = ()


def _answers(raw: Any, where: str) -> tuple[Answer, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: answers must be a list")
    out = []
    for i, a in enumerate(raw):
        try:
            out.append(Answer(str(a["text"]), int(a["answer_start"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}.answers[{i}]: needs 'text' and integer "
                             f"'answer_start' ({e!r})") from None
    return tuple(out)


def examples_from_data(data: Sequence[Mapping], source: str = "<data>") -> list[SquadExample]:
    """SquadExamples from the official JSON's `data` list (v1.1 or v2.0).

    Raises:
      ValueError: one line naming `source` and the article/paragraph/question
        when the structure is not SQuAD's, or a question id repeats.
    """
    examples, seen = [], set()
    if not isinstance(data, list):
        raise ValueError(f"{source}: 'data' must be a list of articles")
    for i, article in enumerate(data):
        for j, paragraph in enumerate(_field(article, "paragraphs", f"{source}: data[{i}]")):
            where = f"{source}: data[{i}].paragraphs[{j}]"
            context = str(_field(paragraph, "context", where))
            for k, qa in enumerate(_field(paragraph, "qas", where)):
                qwhere = f"{where}.qas[{k}]"
                qid = str(_field(qa, "id", qwhere))
                if qid in seen:
                    raise ValueError(f"{qwhere}: duplicate question id {qid!r}")
                seen.add(qid)
                examples.append(SquadExample(
                    qas_id=qid, question=str(_field(qa, "question", qwhere)), context=context,
                    answers=_answers(qa.get("answers", []), qwhere),
                    is_impossible=bool(qa.get("is_impossible", False)),
                    title=str(article.get("title", "")),
                    plausible_answers=_answers(qa.get("plausible_answers", []), qwhere)))
    return examples


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise ValueError(f"{where}: missing {key!r}")
    return obj[key]


def load_squad_json(path: str | os.PathLike) -> dict:
    """The parsed official JSON file ({"version", "data"}).

    Raises:
      ValueError: one line naming the file when it is not JSON or has no data list.
    """
    try:
        with open(paths.local_copy(path), encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: "
                         f"{e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise ValueError(f"{path}: not a SQuAD file (expected an object with a 'data' list)")
    return obj


def read_squad_json(path: str | os.PathLike) -> list[SquadExample]:
    """Every question of an official SQuAD v1.1 / v2.0 JSON file, in file order."""
    return examples_from_data(load_squad_json(path)["data"], source=str(path))


def read_squad_tfds(name: str, split: str, data_dir: str | None = None) -> list[SquadExample]:
    """Every question of TFDS `squad/v1.1` or `squad/v2.0` (split 'train' or
    'validation'), in the dataset's order."""
    # optional (the `tf` extra): only TFDS / TF1 paths need TensorFlow
    import tensorflow as tf
    import tensorflow_datasets as tfds

    # TF only reads records here; keep it off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
    ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)

    def text(x) -> str:
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

    def answers(d) -> tuple[Answer, ...]:
        return tuple(Answer(text(t), int(s)) for t, s in zip(d["text"], d["answer_start"]))

    return [SquadExample(
        qas_id=text(r["id"]), question=text(r["question"]), context=text(r["context"]),
        answers=answers(r["answers"]), is_impossible=bool(r.get("is_impossible", False)),
        title=text(r["title"]),
        plausible_answers=answers(r["plausible_answers"]) if "plausible_answers" in r else ())
        for r in tfds.as_numpy(ds)]


def gold_answers(examples: Sequence[SquadExample]) -> dict[str, list[str]]:
    """question id -> gold answer texts ([] when unanswerable), for squad_metrics."""
    return {ex.qas_id: [] if ex.is_impossible else [a.text for a in ex.answers]
            for ex in examples}


# ----------------------------------------------------------------------------
# Offline data sets: the article split and the v2.0-style set from v1.1
# ----------------------------------------------------------------------------

def split_articles(data: Sequence[Mapping], n_train: int = 38, n_eval: int = 10
                   ) -> tuple[list[Mapping], list[Mapping]]:
    """The first `n_train` articles and the last `n_eval`: a fixed split in which
    no article (so no paragraph or question) is on both sides."""
    if n_train < 1 or n_eval < 1 or n_train + n_eval > len(data):
        raise ValueError(f"split_articles: n_train={n_train} + n_eval={n_eval} must be >= 1 "
                         f"each and fit the {len(data)} articles")
    return list(data[:n_train]), list(data[len(data) - n_eval:])


def build_unanswerable_v2(data: Sequence[Mapping], fraction: float = 0.5, seed: int = 0) -> dict:
    """A SQuAD v2.0-format data set from v1.1 articles, with unanswerable questions.

    Each paragraph keeps its questions (marked is_impossible=False) and gains
    round(fraction * #questions) questions drawn from OTHER articles, with
    is_impossible=True and no answers: a question about another topic is not
    answered by this paragraph. fraction=0.5 gives about a third unanswerable,
    as in train-v2.0. A pure function of (data, fraction, seed).

    Returns:
      {"version": "v2.0", "data": [...]}, ready for json.dump / examples_from_data.
    """
    if len(data) < 2:
        raise ValueError("build_unanswerable_v2: needs at least 2 articles to pair "
                         "questions with paragraphs of other articles")
    rng = np.random.default_rng(seed)
    pool = [[(qa["id"], qa["question"]) for p in a["paragraphs"] for qa in p["qas"]]
            for a in data]
    out = []
    for ai, article in enumerate(data):
        others = [i for i in range(len(data)) if i != ai and pool[i]]
        paragraphs = []
        for pi, paragraph in enumerate(article["paragraphs"]):
            qas = [{**qa, "is_impossible": False} for qa in paragraph["qas"]]
            k = math.floor(len(qas) * fraction + 0.5)
            chosen: set[tuple[str, str]] = set()
            while len(chosen) < k and others:
                src = pool[others[rng.integers(len(others))]]
                chosen.add(src[rng.integers(len(src))])
            for qid, question in sorted(chosen):
                qas.append({"question": question, "id": f"{qid}_unanswerable_{ai}_{pi}",
                            "answers": [], "is_impossible": True})
            paragraphs.append({"context": paragraph["context"], "qas": qas})
        out.append({"title": article.get("title", ""), "paragraphs": paragraphs})
    return {"version": "v2.0", "data": out}


def subsample_examples(examples: Sequence[SquadExample], n: int, seed: int = 0
                       ) -> list[SquadExample]:
    """n examples drawn without replacement (a pure function of seed), in their
    original order; all of them when n <= 0 or n >= len(examples). Benchmarks
    use it to give two frameworks the very same training questions."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
    return [examples[int(i)] for i in keep]
