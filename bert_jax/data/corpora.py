"""Text corpora as streams of documents, each a list of sentences.

A corpus spec is a comma-separated list of items:

- ``bert:PATH`` -- Google BERT's format: one sentence per line, a blank line
  between documents.
- ``raw:PATH`` -- one document per file, one paragraph per line; paragraphs are
  split into sentences by a segmenter (see `split_sentences`).
- ``PATH`` without a prefix -- a file with a blank line in its first MiB is
  read as BERT format, any other file as a raw document.
- ``tfds:NAME/CONFIG[:SPLIT]`` -- a TFDS text dataset (e.g.
  ``tfds:wikipedia/20230601.en``) read through `tfds.data_source`, one record
  per document, its ``text`` field split on newlines into paragraphs.
- ``builtin:stdlib`` -- the docstrings of the Python standard library, one
  document per module: real English prose on every machine that has Python.
  ``builtin:stdlib:train`` and ``builtin:stdlib:heldout`` split it by module
  (every 10th module is held out) for evaluation on unseen documents.

PATH may be a file, a directory (all files below it, sorted) or a glob; files
ending in ``.gz`` are decompressed as they are read, one line at a time.

A corpus resolves to `Unit`s, small picklable descriptions of work that one
worker process reads on its own (a file, a byte range of a large BERT-format
file cut at a blank line, a range of TFDS records, a group of stdlib modules).
Their order is fixed, so prepared shards have a stable order.

Bad input policy (counted in `ReadStats`, reported by `prepare`):
- empty files and empty documents are skipped and counted;
- one-sentence documents are kept (they pair with a random next segment);
- bytes that are not UTF-8 stop reading with ``FILE:LINE: ...`` unless
  ``encoding_errors='replace'``, which substitutes U+FFFD and counts the lines.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import glob
import gzip
import os
import pathlib
import re
import sysconfig
import zlib
from collections.abc import Callable, Iterator

import pysbd
import sentencex

from bert_jax.storage import paths

# Big BERT-format files are cut into units of about this size so that worker
# processes share one file.
DEFAULT_CHUNK_BYTES = 32 << 20
_STDLIB_FILES_PER_UNIT = 20
_TFDS_RECORDS_PER_UNIT = 10_000
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
SEGMENTERS = ("sentencex", "pysbd")
STDLIB_PARTS = ("", "train", "heldout")


class CorpusError(ValueError):
    """Bad corpus input; the message is one line naming the file and line."""


@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of a corpus that a single worker reads.

    kind is 'bert', 'raw', 'tfds' or 'stdlib'; `path` is a file, a TFDS name or
    the stdlib part ('', 'train', 'heldout'); [start, stop) is a byte range (bert), a record range (tfds)
    or a module-file range (stdlib); `split` is the TFDS split.
    """

    kind: str
    path: str
    start: int = 0
    stop: int = -1
    split: str = ""

    def describe(self) -> str:
        if self.kind in ("bert", "raw") and self.start == 0 and self.stop < 0:
            return f"{self.kind}:{self.path}"
        where = f"{self.path}:{self.split}" if self.split else self.path
        return f"{self.kind}:{where}[{self.start}:{self.stop}]"


@dataclasses.dataclass
class Document:
    """A document: its sentences, where it starts ('file:line' or 'name#index')
    and, for files, the line each sentence came from (for error messages)."""

    sentences: list[str]
    source: str
    lines: list[int] | None = None

    def where(self, i: int) -> str:
        """'file:line' of sentence i when known, else the document's source."""
        if self.lines is None:
            return self.source
        return f"{self.source.rsplit(':', 1)[0]}:{self.lines[i]}"


@dataclasses.dataclass
class ReadStats:
    """Counts of what reading skipped or repaired (the documented policies)."""

    documents: int = 0
    sentences: int = 0
    bytes: int = 0
    empty_files: int = 0
    empty_documents: int = 0
    one_sentence_documents: int = 0
    replaced_lines: int = 0

    def add(self, other: ReadStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


# ----------------------------------------------------------------------------- resolve


def resolve(spec: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Unit]:
    """Expand a corpus spec (see module docstring) into its units, in a fixed order."""
    units: list[Unit] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        prefix, _, rest = item.partition(":")
        if prefix == "builtin":
            name, _, part = rest.partition(":")
            if name != "stdlib" or part not in STDLIB_PARTS:
                raise CorpusError(f"corpus {item!r}: the builtin corpora are builtin:stdlib, "
                                  "builtin:stdlib:train and builtin:stdlib:heldout")
            units += _stdlib_units(part)
        elif prefix == "tfds":
            units += _tfds_units(rest)
        elif prefix in ("bert", "raw"):
            units += _file_units(rest, prefix, chunk_bytes)
        else:
            units += _file_units(item, "auto", chunk_bytes)
    if not units:
        raise CorpusError(f"corpus {spec!r}: no input found")
    return units


def _expand_paths(pattern: str) -> list[str]:
    if paths.is_url(pattern):  # a file or a directory, read through the local cache
        if any(c in pattern for c in "*?["):
            raise CorpusError(f"corpus {pattern}: globs are for local paths; name a gs:// "
                              "file or directory")
        if not paths.exists(pattern):
            raise CorpusError(f"corpus {pattern}: no such file or directory")
        pattern = str(paths.local_copy(pattern))
    p = pathlib.Path(pattern).expanduser()
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    if p.is_file():
        return [str(p)]
    matches = sorted(f for f in glob.glob(str(p), recursive=True) if os.path.isfile(f))
    if not matches:
        raise CorpusError(f"corpus {pattern}: no such file, directory or glob match")
    return matches


def _file_units(pattern: str, fmt: str, chunk_bytes: int) -> list[Unit]:
    units = []
    for path in _expand_paths(pattern):
        kind = _sniff_format(path) if fmt == "auto" else fmt
        if kind == "bert" and not path.endswith(".gz") and os.path.getsize(path) > chunk_bytes:
            units += [Unit("bert", path, a, b) for a, b in _blank_line_cuts(path, chunk_bytes)]
        else:
            units.append(Unit(kind, path))
    return units


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _sniff_format(path: str) -> str:
    """BERT format if a blank line occurs in the first MiB, else a raw document."""
    with _open_binary(path) as f:
        head = f.read(1 << 20)
    return "bert" if _BLANK_LINE.search(head.lstrip(b"\r\n \t")) else "raw"


def _blank_line_cuts(path: str, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of about chunk_bytes, each starting just after a blank line,
    so that every document lies in exactly one range."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        target = chunk_bytes
        while target < size:
            f.seek(target)
            window = f.read(1 << 20)
            m = _BLANK_LINE.search(window)
            while m is None and len(window) < size - target:
                more = f.read(1 << 20)
                if not more:
                    break
                window += more
                m = _BLANK_LINE.search(window)
            if m is None:
                break
            cut = target + m.end()
            if cut < size:
                cuts.append(cut)
            target = cut + chunk_bytes
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


# ----------------------------------------------------------------------------- read


def read_unit(unit: Unit, segmenter: str = "sentencex",
              encoding_errors: str = "strict") -> tuple[Iterator[Document], ReadStats]:
    """The documents of one unit (a generator) and the stats it fills as it runs."""
    stats = ReadStats()
    split = make_segmenter(segmenter)
    if unit.kind == "bert":
        gen = _read_bert(unit, stats, encoding_errors)
    elif unit.kind == "raw":
        gen = _read_raw(unit, split, stats, encoding_errors)
    elif unit.kind == "tfds":
        gen = _read_tfds(unit, split, stats)
    elif unit.kind == "stdlib":
        gen = _read_stdlib(unit, split, stats)
    else:
        raise CorpusError(f"unit {unit}: unknown kind {unit.kind!r}")
    return _counted(gen, stats), stats


def iter_documents(spec: str, segmenter: str = "sentencex",
                   encoding_errors: str = "strict") -> Iterator[Document]:
    """All documents of a corpus spec, in unit order (single process)."""
    for unit in resolve(spec):
        docs, _ = read_unit(unit, segmenter, encoding_errors)
        yield from docs


def _counted(gen: Iterator[Document], stats: ReadStats) -> Iterator[Document]:
    for doc in gen:
        if not doc.sentences:
            stats.empty_documents += 1
            continue
        stats.documents += 1
        stats.sentences += len(doc.sentences)
        stats.one_sentence_documents += len(doc.sentences) == 1
        yield doc


def _decode_line(raw: bytes, path: str, line: int, errors: str, stats: ReadStats) -> str:
    """UTF-8 text of one line; on a bad byte, stop naming the file and line (or
    replace and count the line when errors='replace')."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors != "replace":
            raise CorpusError(
                f"{path}:{line}: invalid UTF-8 byte 0x{raw[e.start]:02x} at column "
                f"{e.start + 1} (policy: stop; convert the file to UTF-8 or use "
                "encoding_errors='replace')") from None
    stats.replaced_lines += 1
    return raw.decode("utf-8", errors="replace")


def _lines(unit: Unit, stats: ReadStats, errors: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of the unit's byte range, read one line
    at a time: a .gz corpus is decompressed as it streams, never whole into
    memory (nor is a large plain file's range)."""
    first_line = 1
    if unit.start:
        with open(unit.path, "rb") as f:
            first_line += _count_newlines(f, unit.start)
    blank = True
    i = first_line
    with _open_binary(unit.path) as f:
        if unit.start:
            f.seek(unit.start)
        pos = unit.start
        it = iter(f)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                break
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a damaged or cut .gz
                raise CorpusError(f"{unit.path}:{i}: damaged gzip data ({e})") from None
            if 0 <= unit.stop <= pos:
                break  # ranges are cut at line starts (see _blank_line_cuts)
            pos += len(raw)
            stats.bytes += len(raw)
            if blank and raw.strip():
                blank = False
            yield i, _decode_line(raw.rstrip(b"\n"), unit.path, i, errors, stats)
            i += 1
    if blank and unit.start == 0:
        stats.empty_files += 1


def _count_newlines(f, upto: int) -> int:
    n, done = 0, 0
    while done < upto:
        block = f.read(min(1 << 24, upto - done))
        if not block:
            break
        n += block.count(b"\n")
        done += len(block)
    return n


def _read_bert(unit: Unit, stats: ReadStats, errors: str) -> Iterator[Document]:
    sentences: list[str] = []
    lines: list[int] = []
    for i, line in _lines(unit, stats, errors):
        line = line.strip()
        if line:
            sentences.append(line)
            lines.append(i)
        elif sentences:
            yield Document(sentences, f"{unit.path}:{lines[0]}", lines)
            sentences, lines = [], []
    if sentences:
        yield Document(sentences, f"{unit.path}:{lines[0]}", lines)


def _read_raw(unit: Unit, split: Callable[[str], list[str]], stats: ReadStats,
              errors: str) -> Iterator[Document]:
    sentences: list[str] = []
    lines: list[int] = []
    for i, para in _lines(unit, stats, errors):
        if para.strip():
            parts = split(para)
            sentences += parts
            lines += [i] * len(parts)
    yield Document(sentences, f"{unit.path}:1", lines)


# ----------------------------------------------------------------------------- segmenters


def make_segmenter(name: str = "sentencex", language: str = "en") -> Callable[[str], list[str]]:
    """A function paragraph -> stripped, non-empty sentences.

    'sentencex' (Wikimedia, Rust core) is the default: on ELTeC novels it runs at
    ~50 MB/s per core and agrees with pysbd's split on ~90% of paragraphs,
    erring towards fewer splits. 'pysbd' (pure Python, ~0.15 MB/s) is kept for
    comparison; blingfire (~7 MB/s) splits after 'Mr.' / 'Dr.' and is unmaintained.
    """
    if name == "sentencex":

        seg = functools.partial(sentencex.segment, language)
    elif name == "pysbd":

        seg = pysbd.Segmenter(language=language, clean=False).segment
    else:
        raise CorpusError(f"segmenter={name!r}: choose one of {', '.join(SEGMENTERS)}")
    return lambda para: [s for s in (t.strip() for t in seg(para)) if s]


# ----------------------------------------------------------------------------- tfds


def _parse_tfds(rest: str) -> tuple[str, str]:
    name, _, split = rest.partition(":")
    if not name:
        raise CorpusError(f"corpus tfds:{rest}: expected tfds:NAME/CONFIG[:SPLIT]")
    return name, split or "train"


def _tfds_source(name: str, split: str):
    # optional (the `tf` extra): only TFDS / TF1 paths need TensorFlow
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split)
    except Exception as e:  # noqa: BLE001 - tfds raises many types; name the dataset
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorpusError(f"corpus tfds:{name}:{split}: cannot open data source: {msg}") from e


def _tfds_units(rest: str) -> list[Unit]:
    name, split = _parse_tfds(rest)
    n = len(_tfds_source(name, split))
    step = _TFDS_RECORDS_PER_UNIT
    return [Unit("tfds", name, a, min(a + step, n), split) for a in range(0, n, step)]


def _tfds_text(record, name: str, index: int) -> str:
    value = record.get("text") if isinstance(record, dict) else None
    if value is None:
        strings = [v for v in record.values() if isinstance(v, (str, bytes))] \
            if isinstance(record, dict) else []
        if not strings:
            raise CorpusError(f"tfds:{name} record {index}: no 'text' field")
        value = strings[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _read_tfds(unit: Unit, split: Callable[[str], list[str]],
               stats: ReadStats) -> Iterator[Document]:
    source = _tfds_source(unit.path, unit.split)
    for i in range(unit.start, unit.stop):
        text = _tfds_text(source[i], unit.path, i)
        stats.bytes += len(text.encode("utf-8"))
        sentences = [s for para in text.split("\n") if para.strip() for s in split(para)]
        yield Document(sentences, f"tfds:{unit.path}:{unit.split}#{i}")


# ----------------------------------------------------------------------------- stdlib


@functools.lru_cache(maxsize=1)
def stdlib_files(part: str = "") -> tuple[pathlib.Path, ...]:
    """Python files of the standard library, without tests and site-packages;
    part 'train' / 'heldout' keeps the 9 in 10 / 1 in 10 modules of the split."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]  # prune before descending
        files += [pathlib.Path(dirpath, f) for f in filenames if f.endswith(".py")]
    files = sorted(files)
    if part:
        files = [f for i, f in enumerate(files) if (i % 10 == 5) == (part == "heldout")]
    return tuple(files)


def _stdlib_units(part: str = "") -> list[Unit]:
    n = len(stdlib_files(part))
    step = _STDLIB_FILES_PER_UNIT
    return [Unit("stdlib", part, a, min(a + step, n)) for a in range(0, n, step)]


def _prose_paragraphs(doc: str) -> list[str]:
    """Paragraphs of a docstring that read as English prose: no doctest or
    indented code blocks, no tables, at least four words."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = block.split("\n")
        if not lines or lines[0][:1].isspace() or any(
                ln.lstrip().startswith((">>>", "...", "$ ", "|", "+--")) for ln in lines):
            continue
        para = " ".join(ln.strip() for ln in lines)
        letters = sum(c.isalpha() or c == " " for c in para)
        if len(para.split()) >= 4 and letters >= 0.8 * len(para):
            out.append(para)
    return out


def _read_stdlib(unit: Unit, split: Callable[[str], list[str]],
                 stats: ReadStats) -> Iterator[Document]:
    files = stdlib_files(unit.path)[unit.start:unit.stop]
    for path in files:
        source = path.read_bytes()
        stats.bytes += len(source)
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue  # a few stdlib files are templates or need a newer parser
        sentences = [s for doc in _docstrings(tree) for para in _prose_paragraphs(doc)
                     for s in split(para)]
        yield Document(sentences, f"{path}:1")


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of a module and its classes and functions, in source order.
    Walks statements only (ast.walk visits every expression node, 5x slower)."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc:
            yield doc
    for field in ("body", "orelse", "finalbody", "handlers"):
        for child in getattr(node, field, ()):
            if isinstance(child, ast.stmt | ast.excepthandler):
                yield from _docstrings(child)
