"""Chunk (entity) evaluation exactly as the CoNLL `conlleval` Perl script computes it.

This re-implements the counting of conlleval version 2004-01-26 (Erik Tjong Kim
Sang), the script that scored CoNLL-2000 chunking and CoNLL-2002/2003 NER and
that papers report NER F1 with. Reproduced on purpose, quirks included:

- a chunk starts / ends where the script's startOfChunk / endOfChunk say, so
  IOB1 (`I-` everywhere, `B-` only between adjacent same-type chunks), IOB2, an
  `I-X` without a preceding `B-X`, and IOE tags all count the same way; tags it
  has no rule for (`S-X`, `X`) only matter through a type change;
- a tag splits at its first hyphen (`B-ORG-X` has type `ORG-X`) and a type that
  Perl reads as false (`""` or `"0"`) is the empty type;
- an empty line, or one whose first field is `-X-`, is a sentence boundary
  (tags O), and is not a token; every other line, `-DOCSTART-` included, is;
- precision, recall and FB1 are percentages, 0 where undefined.

Input and output files hold `WORD ... GOLD PRED` lines, fields separated by
single spaces, a blank line between sentences.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence

BOUNDARY = "-X-"
_TAG_RE = re.compile(r"^([^-]*)-(.*)$", re.DOTALL)


def split_tag(tag: str) -> tuple[str, str]:
    """(chunk tag, type) as conlleval splits it: `B-PER` -> ("B", "PER"), `O` -> ("O", "")."""
    m = _TAG_RE.match(tag)
    if m is None:
        return tag, ""
    prefix, type_ = m.group(1), m.group(2)
    # `$type = $type ? $type : ""` turns Perl-false strings into "".
    return prefix, ("" if type_ in ("", "0") else type_)


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk ended between the previous and the current word (conlleval's endOfChunk)."""
    if (prev_tag, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"),
                           ("E", "E"), ("E", "I"), ("E", "O")}:
        return True
    if prev_tag not in ("O", ".") and prev_type != type_:
        return True
    return prev_tag in ("]", "[")


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk started between the previous and the current word (conlleval's startOfChunk)."""
    if (prev_tag, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"),
                           ("E", "E"), ("E", "I"), ("O", "E")}:
        return True
    if tag not in ("O", ".") and prev_type != type_:
        return True
    return tag in ("[", "]")


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The chunks of one sentence as conlleval delimits them.

    Returns:
      (type, start, end) per chunk, end exclusive, in order.
    """
    out: list[tuple[str, int, int]] = []
    prev_tag, prev_type, start = "O", "", None
    for i, t in enumerate([*tags, "O"]):  # the boundary after the sentence is O
        tag, type_ = split_tag(t)
        if start is not None and end_of_chunk(prev_tag, tag, prev_type, type_):
            out.append((prev_type, start, i))
            start = None
        if i < len(tags) and start_of_chunk(prev_tag, tag, prev_type, type_):
            start = i
        prev_tag, prev_type = tag, type_
    return out


@dataclasses.dataclass
class ChunkCounts:
    """conlleval's counters. Per-type dicts are keyed by chunk type."""

    tokens: int = 0
    correct_tags: int = 0
    found_correct: int = 0
    found_guessed: int = 0
    correct_chunks: int = 0
    found_correct_by_type: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    found_guessed_by_type: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    correct_by_type: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class _Scorer:
    """The body of conlleval's main loop, one line at a time."""

    def __init__(self):
        self.c = ChunkCounts()
        self.in_correct = False
        self.last_correct, self.last_correct_type = "O", ""
        self.last_guessed, self.last_guessed_type = "O", ""

    def line(self, first_item: str | None, gold: str, pred: str) -> None:
        c = self.c
        correct, correct_type = split_tag(gold)
        guessed, guessed_type = split_tag(pred)
        if first_item == BOUNDARY:
            guessed = "O"
        end_c = end_of_chunk(self.last_correct, correct, self.last_correct_type, correct_type)
        end_g = end_of_chunk(self.last_guessed, guessed, self.last_guessed_type, guessed_type)
        if self.in_correct:
            if end_c and end_g and self.last_guessed_type == self.last_correct_type:
                self.in_correct = False
                c.correct_chunks += 1
                c.correct_by_type[self.last_correct_type] += 1
            elif end_c != end_g or guessed_type != correct_type:
                self.in_correct = False
        start_c = start_of_chunk(self.last_correct, correct, self.last_correct_type, correct_type)
        start_g = start_of_chunk(self.last_guessed, guessed, self.last_guessed_type, guessed_type)
        if start_c and start_g and guessed_type == correct_type:
            self.in_correct = True
        if start_c:
            c.found_correct += 1
            c.found_correct_by_type[correct_type] += 1
        if start_g:
            c.found_guessed += 1
            c.found_guessed_by_type[guessed_type] += 1
        if first_item != BOUNDARY:
            c.correct_tags += correct == guessed and guessed_type == correct_type
            c.tokens += 1
        self.last_correct, self.last_correct_type = correct, correct_type
        self.last_guessed, self.last_guessed_type = guessed, guessed_type

    def finish(self) -> ChunkCounts:
        if self.in_correct:
            self.c.correct_chunks += 1
            self.c.correct_by_type[self.last_correct_type] += 1
            self.in_correct = False
        return self.c


def count_sentences(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> ChunkCounts:
    """Counts for sentences of gold / predicted tags, as conlleval counts the
    file `write_file` makes of them (a boundary between sentences)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    s = _Scorer()
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        if i:
            s.line(BOUNDARY, "O", "O")
        for gt, pt in zip(g, p):
            s.line(None, gt, pt)
    return s.finish()


def _prf(correct: int, guessed: int, gold: int) -> tuple[float, float, float]:
    p = 100.0 * correct / guessed if guessed > 0 else 0.0
    r = 100.0 * correct / gold if gold > 0 else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def metrics(c: ChunkCounts) -> dict[str, float]:
    """precision / recall / f1 / accuracy (percent) overall and `<metric>_<TYPE>` per
    chunk type (types sorted as conlleval prints them), plus the raw counts."""
    p, r, f = _prf(c.correct_chunks, c.found_guessed, c.found_correct)
    out = {"precision": p, "recall": r, "f1": f,
           "accuracy": 100.0 * c.correct_tags / c.tokens if c.tokens else 0.0,
           "tokens": float(c.tokens), "gold_chunks": float(c.found_correct),
           "pred_chunks": float(c.found_guessed), "correct_chunks": float(c.correct_chunks)}
    for t in sorted(set(c.found_correct_by_type) | set(c.found_guessed_by_type)):
        tp, tr, tf = _prf(c.correct_by_type[t], c.found_guessed_by_type[t],
                          c.found_correct_by_type[t])
        out[f"precision_{t}"], out[f"recall_{t}"], out[f"f1_{t}"] = tp, tr, tf
    return out


def _report_types(c: ChunkCounts) -> list[str]:
    # conlleval dedups the sorted keys with `not($lastType) or ...`, so the empty
    # type, being Perl-false, is listed once per counter that holds it.
    types: list[str] = []
    last = None
    for t in sorted([*c.found_correct_by_type, *c.found_guessed_by_type]):
        if not last or last != t:
            types.append(t)
        last = t
    return types


def report(c: ChunkCounts) -> str:
    """The text conlleval prints (without -l) for these counts."""
    m = metrics(c)
    lines = [f"processed {c.tokens} tokens with {c.found_correct} phrases; "
             f"found: {c.found_guessed} phrases; correct: {c.correct_chunks}."]
    if c.tokens > 0:
        lines.append(f"accuracy: {m['accuracy']:6.2f}%; precision: {m['precision']:6.2f}%; "
                     f"recall: {m['recall']:6.2f}%; FB1: {m['f1']:6.2f}")
    for t in _report_types(c):
        lines.append(f"{t:>17}: precision: {m[f'precision_{t}']:6.2f}%; "
                     f"recall: {m[f'recall_{t}']:6.2f}%; "
                     f"FB1: {m[f'f1_{t}']:6.2f}  {c.found_guessed_by_type[t]}")
    return "\n".join(lines) + "\n"


def _fields(line: str, delimiter: str) -> list[str]:
    # Perl's split drops trailing empty fields (and so returns () for "").
    fields = line.split(delimiter)
    while fields and fields[-1] == "":
        fields.pop()
    return fields


def count_file(path: str | os.PathLike, delimiter: str = " ") -> ChunkCounts:
    """Counts for a `WORD ... GOLD PRED` file, read the way conlleval reads it.

    Raises:
      ValueError `path:line: ...` where conlleval stops: a line whose number of
      fields differs from the first line's, or a token line of fewer than 2.
    """
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")  # only "\n" ends a line: Perl's chomp keeps "\r"
    if lines and lines[-1] == "":
        lines.pop()
    s = _Scorer()
    n_fields = -1
    for lineno, line in enumerate(lines, 1):
        fields = _fields(line, delimiter)
        if n_fields < 0:
            n_fields = len(fields) - 1
        elif n_fields != len(fields) - 1 and fields:
            raise ValueError(f"{path}:{lineno}: {len(fields)} fields where the first line has "
                             f"{n_fields + 1} (WORD ... GOLD PRED)")
        if not fields or fields[0] == BOUNDARY:
            fields = [BOUNDARY, "O", "O"]
        if len(fields) < 2:
            raise ValueError(f"{path}:{lineno}: {len(fields)} field(s); a token line needs at "
                             f"least GOLD PRED")
        s.line(fields[0] if len(fields) > 2 else None, fields[-2], fields[-1])
    return s.finish()


def write_file(path: str | os.PathLike, words: Sequence[Sequence[str]],
               gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    """Write `WORD GOLD PRED` lines, a blank line between sentences (atomically).

    Raises:
      ValueError if a word or tag is empty or holds a space, which would shift
      conlleval's fields.
    """
    out: list[str] = []
    for i, (ws, gs, ps) in enumerate(zip(words, gold, pred, strict=True)):
        if not (len(ws) == len(gs) == len(ps)):
            raise ValueError(f"sentence {i}: {len(ws)} words, {len(gs)} gold, {len(ps)} pred tags")
        for w, g, p in zip(ws, gs, ps):
            for field in (w, g, p):
                if not field or any(ch.isspace() for ch in field):
                    raise ValueError(f"sentence {i}: field {field!r} is empty or holds "
                                     f"whitespace; conlleval would misread it")
            out.append(f"{w} {g} {p}\n")
        out.append("\n")
    write_text_atomic(path, "".join(out))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file beside `path`, then rename it over `path`."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_file(path: str | os.PathLike, delimiter: str = " "
              ) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """(words, gold, pred) per sentence from a `WORD ... GOLD PRED` file; blank or
    `-X-` lines separate sentences. Raises ValueError `path:line: ...` on a line
    whose field count differs from the first token line's."""
    words, gold, pred = [], [], []
    cur: tuple[list[str], list[str], list[str]] = ([], [], [])
    n_fields = None
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f.read().split("\n"), 1):
            fields = _fields(line, delimiter)
            if not fields or fields[0] == BOUNDARY:
                if cur[0]:
                    for acc, part in zip((words, gold, pred), cur):
                        acc.append(part)
                    cur = ([], [], [])
                continue
            n_fields = len(fields) if n_fields is None else n_fields
            if len(fields) != n_fields or len(fields) < 3:
                raise ValueError(f"{path}:{lineno}: {len(fields)} fields; expected "
                                 f"{max(n_fields, 3)} (WORD ... GOLD PRED)")
            cur[0].append(fields[0])
            cur[1].append(fields[-2])
            cur[2].append(fields[-1])
    if cur[0]:
        for acc, part in zip((words, gold, pred), cur):
            acc.append(part)
    return words, gold, pred


def evaluate_file(path: str | os.PathLike) -> dict[str, float]:
    """`metrics(count_file(path))`: what `conlleval < path` reports."""
    return metrics(count_file(path))


def main(argv: Iterable[str] | None = None) -> None:
    """`python -m bert_jax.finetune.conlleval FILE`: print conlleval's report."""

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m bert_jax.finetune.conlleval FILE")
    sys.stdout.write(report(count_file(args[0])))


if __name__ == "__main__":
    main()
