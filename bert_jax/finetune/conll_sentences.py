"""CoNLL-2003 sentences: the shared task's column files or TFDS `conll2003`, and their tags.

Column files hold `WORD POS CHUNK NER`, a blank line between sentences and
`-DOCSTART- -X- O O` between documents; the English files are IOB1. TFDS
drops the document boundaries. Tags are converted to IOB2 for training (every
entity opens with `B-`), and the label set is read from the training data:
'O', then `B-T` and `I-T` for every type T, sorted.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from bert_jax.storage import paths

DOCSTART = "-DOCSTART-"
TFDS_SPLITS = {"train": "train", "dev": "dev", "test": "test"}
_FIELD_SEP = re.compile(r"[ \t]+")
_IOB_TAG = re.compile(r"^(O|[BI]-.+)$")


# ------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence. `line` is the 1-based line of its first word in `source`
    (word i sits on line + i); `doc` numbers documents from 0 within the
    source, -1 where documents are unknown (TFDS)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    doc: int
    source: str
    line: int


def read_conll_file(path: str | os.PathLike) -> list[Sentence]:
    """Sentences of a CoNLL column file: WORD first, NER tag last, any columns between.

    Raises:
      ValueError `path:line: ...` for a line whose column count differs from
      the first token line's, a line of one column, a tag that is neither O
      nor B-/I-TYPE, text that is not UTF-8, or a file without sentences.
    """
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    doc, first_line, n_cols, n_cols_line = 0, 0, None, 0
    lineno = 0

    def flush():
        nonlocal words, tags
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags), doc, str(path), first_line))
        words, tags = [], []

    with open(paths.local_copy(path), "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from None
            fields = _FIELD_SEP.split(line.strip(" \t"))
            if fields == [""]:
                flush()
                continue
            if fields[0] == DOCSTART:
                flush()
                if sentences and sentences[-1].doc == doc:
                    doc += 1
                continue
            if n_cols is None:
                n_cols, n_cols_line = len(fields), lineno
                if n_cols < 2:
                    raise ValueError(f"{path}:{lineno}: 1 column; expected WORD ... TAG "
                                     f"(CoNLL-2003: WORD POS CHUNK NER)")
            elif len(fields) != n_cols:
                raise ValueError(f"{path}:{lineno}: {len(fields)} columns where line "
                                 f"{n_cols_line} has {n_cols} (WORD POS CHUNK NER)")
            if not _IOB_TAG.match(fields[-1]):
                raise ValueError(f"{path}:{lineno}: tag {fields[-1]!r} is not O, B-TYPE or "
                                 f"I-TYPE")
            if not words:
                first_line = lineno
            words.append(fields[0])
            tags.append(fields[-1])
    flush()
    if not sentences:
        raise ValueError(f"{path}:{max(lineno, 1)}: no sentences (empty file or only "
                         f"{DOCSTART} lines)")
    return sentences


def read_tfds(split: str, name: str = "conll2003", data_dir: str | None = None
              ) -> list[Sentence]:
    """Sentences of TFDS `name` (features tokens / ner); TFDS keeps no documents."""
    # optional (the `tf` extra): only TFDS / TF1 paths need TensorFlow
    import tensorflow_datasets as tfds

    ds, info = tfds.load(name, split=TFDS_SPLITS.get(split, split), data_dir=data_dir or None,
                         with_info=True, shuffle_files=False)
    names = info.features["ner"].feature.names
    source = f"tfds:{name}/{split}"
    out = []
    for i, ex in enumerate(tfds.as_numpy(ds)):
        words = tuple(w.decode("utf-8") for w in ex["tokens"])
        tags = tuple(names[int(t)] for t in ex["ner"])
        if len(words) != len(tags):
            raise ValueError(f"{source}#{i}: {len(words)} tokens but {len(tags)} ner tags")
        if words:
            out.append(Sentence(words, tags, -1, f"{source}#{i}", 1))
    if not out:
        raise ValueError(f"{source}: no sentences")
    return out


# ---------------------------------------------------------------------- tags


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB2 tags: an `I-T` that opens an entity (after O or another type)
    becomes `B-T`. IOB2 input comes back unchanged."""
    out = []
    prev = "O"
    for t in tags:
        if t.startswith("I-") and (prev == "O" or prev[2:] != t[2:]):
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


def label_names_from(sentences: Sequence[Sentence]) -> list[str]:
    """'O' followed by sorted B-/I- tags of every entity type in `sentences`."""
    types = {t[2:] for s in sentences for t in s.tags if t != "O"}
    return ["O"] + sorted(f"{p}-{t}" for t in types for p in "BI")


def check_entity_types(sentences: Sequence[Sentence], allowed: Sequence[str]) -> None:
    """Every tag's entity type must be a known one: a typo ('B-PRE') would
    otherwise become a class of its own."""
    allowed_set = set(allowed)
    for s in sentences:
        for i, t in enumerate(s.tags):
            if t != "O" and t[2:] not in allowed_set:
                raise ValueError(f"{s.source}:{s.line + i}: tag {t!r} has entity type "
                                 f"{t[2:]!r}, not one of config.entity_types "
                                 f"({', '.join(allowed)}); add it there to learn a new type")


def tag_ids(sentence: Sentence, label_index: Mapping[str, int]) -> np.ndarray:
    """int32 [words]: label ids of the IOB2 form of the sentence's tags.

    Raises:
      ValueError `source:line: ...` for a tag outside the label set.
    """
    iob2 = iob1_to_iob2(sentence.tags)
    ids = np.empty(len(iob2), np.int32)
    for i, t in enumerate(iob2):
        if t not in label_index:
            raise ValueError(f"{sentence.source}:{sentence.line + i}: tag {sentence.tags[i]!r} "
                             f"is not in the label set learned from the training data "
                             f"({', '.join(label_index)})")
        ids[i] = label_index[t]
    return ids
