"""GLUE's nine tasks (which file and columns hold what) and their readers:
the official TSV layout of GLUE's `download_glue_data.py`
(`<root>/<TASK>/{train,dev,test}.tsv`, MNLI's `dev_matched` / `dev_mismatched`
/ `test_matched` / `test_mismatched`, and `<root>/diagnostic/diagnostic.tsv`
for the AX set scored by the MNLI model), or TFDS `glue/<task>`. TSV rows are
split on tabs with no CSV quoting: GLUE text holds unbalanced quote
characters, which the csv module would swallow across lines.

Bad input fails with one line naming the file and line. The one exception is
QQP, whose official files contain rows broken by newlines inside questions:
those rows (wrong column count or an empty question) are skipped, counted in
`SplitData.skipped` and logged, as GLUE's reference loaders do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Iterator, Mapping

from bert_jax.storage import paths

# ---------------------------------------------------------------- task table


@dataclasses.dataclass(frozen=True)
class SplitFile:
    """One split's file and which columns hold what. `columns` is None when the
    file starts with a header row (then columns are found by name), else the
    names given to the columns of a headerless file (CoLA train/dev)."""

    path: str                      # relative to the GLUE root
    text_a: str
    text_b: str | None
    label: str | None              # None: unlabeled (test)
    index: str | None              # None: the data-row number is the index
    columns: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str                      # TFDS config name, e.g. 'sst2'
    dir_name: str                  # GLUE folder, e.g. 'SST-2'
    label_names: tuple[str, ...]   # GLUE's label strings; () for regression
    files: Mapping[str, SplitFile]
    eval_splits: tuple[str, ...]
    submission: Mapping[str, str]  # test split -> GLUE leaderboard file name
    tfds_text: tuple[str, str | None]

    @property
    def is_regression(self) -> bool:
        return not self.label_names


def _standard(dir_name: str, a: str, b: str | None, label: str, index: str | None,
              test_index: str = "index") -> dict[str, SplitFile]:
    """train/dev labeled, test unlabeled with its own index column."""
    return {"train": SplitFile(f"{dir_name}/train.tsv", a, b, label, index),
            "dev": SplitFile(f"{dir_name}/dev.tsv", a, b, label, index),
            "test": SplitFile(f"{dir_name}/test.tsv", a, b, None, test_index)}


def _spec(name, dir_name, label_names, files, tfds_text, submission=None, eval_splits=("dev",)):
    return TaskSpec(name, dir_name, tuple(label_names), files, eval_splits,
                    submission or {"test": f"{dir_name}.tsv"}, tfds_text)


_COLA_COLUMNS = ("source", "label", "orig_label", "sentence")
_MNLI = "MNLI"
_MNLI_PAIR = ("sentence1", "sentence2")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    _spec("cola", "CoLA", ("0", "1"), {
        "train": SplitFile("CoLA/train.tsv", "sentence", None, "label", None, _COLA_COLUMNS),
        "dev": SplitFile("CoLA/dev.tsv", "sentence", None, "label", None, _COLA_COLUMNS),
        "test": SplitFile("CoLA/test.tsv", "sentence", None, None, "index")},
        ("sentence", None)),
    _spec("sst2", "SST-2", ("0", "1"), _standard("SST-2", "sentence", None, "label", None),
          ("sentence", None)),
    _spec("mrpc", "MRPC", ("0", "1"),
          _standard("MRPC", "#1 String", "#2 String", "Quality", None),
          ("sentence1", "sentence2")),
    _spec("stsb", "STS-B", (), _standard("STS-B", *_MNLI_PAIR, "score", "index"),
          ("sentence1", "sentence2")),
    _spec("qqp", "QQP", ("0", "1"),
          _standard("QQP", "question1", "question2", "is_duplicate", "id", test_index="id"),
          ("question1", "question2")),
    _spec("mnli", _MNLI, ("contradiction", "entailment", "neutral"), {
        "train": SplitFile(f"{_MNLI}/train.tsv", *_MNLI_PAIR, "gold_label", "index"),
        "dev_matched": SplitFile(f"{_MNLI}/dev_matched.tsv", *_MNLI_PAIR, "gold_label", "index"),
        "dev_mismatched": SplitFile(f"{_MNLI}/dev_mismatched.tsv", *_MNLI_PAIR, "gold_label",
                                    "index"),
        "test_matched": SplitFile(f"{_MNLI}/test_matched.tsv", *_MNLI_PAIR, None, "index"),
        "test_mismatched": SplitFile(f"{_MNLI}/test_mismatched.tsv", *_MNLI_PAIR, None, "index"),
        # GLUE's diagnostic set (AX) is scored with the MNLI model.
        "diagnostic": SplitFile("diagnostic/diagnostic.tsv", *_MNLI_PAIR, None, "index")},
        ("premise", "hypothesis"),
        submission={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv",
                    "diagnostic": "AX.tsv"},
        eval_splits=("dev_matched", "dev_mismatched")),
    _spec("qnli", "QNLI", _NLI2, _standard("QNLI", "question", "sentence", "label", "index"),
          ("question", "sentence")),
    _spec("rte", "RTE", _NLI2, _standard("RTE", *_MNLI_PAIR, "label", "index"),
          ("sentence1", "sentence2")),
    _spec("wnli", "WNLI", ("0", "1"), _standard("WNLI", *_MNLI_PAIR, "label", "index"),
          ("sentence1", "sentence2")),
]}

# Tasks whose official files are known to hold malformed rows (see module doc).
_SKIP_MALFORMED = frozenset({"qqp"})
STSB_RANGE = (0.0, 5.0)


def task_spec(task: str) -> TaskSpec:
    """The spec of a task named as TFDS does ('sst2') or as GLUE's folder ('SST-2')."""
    key = task.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"task={task!r}: not a GLUE task (one of {', '.join(TASKS)})")
    return TASKS[key]


# ------------------------------------------------------------------ reading


@dataclasses.dataclass(frozen=True)
class GlueExample:
    index: str                     # the file's index/id column, else the data-row number
    text_a: str
    text_b: str | None
    label: str | float | None      # GLUE label string, STS-B score, None when unlabeled
    line: int                      # 1-based line in the source file; 0 from TFDS


@dataclasses.dataclass(frozen=True)
class SplitData:
    source: str                    # file path or TFDS name/split
    examples: list[GlueExample]
    skipped: int = 0               # malformed rows skipped (QQP only)


def _tsv_rows(path: pathlib.Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, tab-split fields) for every line; strips a UTF-8
    BOM (MRPC) and CR/LF line ends. Binary iteration splits on '\\n' only, so
    stray form feeds or U+2028 inside text do not break rows."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not UTF-8 ({e.reason})") from None
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            yield line_no, line.rstrip("\r\n").split("\t")


def read_split(task: str, split: str, data_dir: str | os.PathLike) -> SplitData:
    """Every example of one split from a GLUE directory.

    Args:
      task: GLUE task ('sst2', 'MNLI', ...).
      split: 'train', 'dev', 'test' (MNLI: 'dev_matched', 'dev_mismatched',
        'test_matched', 'test_mismatched', 'diagnostic').
      data_dir: the GLUE root holding CoLA/, SST-2/, ... (a task folder such as
        glue/SST-2 also works).
    """
    spec = task_spec(task)
    if split not in spec.files:
        raise ValueError(f"split={split!r}: {spec.name} has splits {', '.join(spec.files)}")
    if paths.is_url(data_dir):  # read through the local cache
        root = data_dir.rstrip("/")
        if paths.name(root) == spec.dir_name:
            root = paths.parent(root)
        url = paths.join(root, spec.files[split].path)
        if not paths.isfile(url):
            raise FileNotFoundError(f"{url}: missing GLUE {spec.dir_name} {split} file")
        return _read_file(paths.local_copy(url), spec, spec.files[split])
    root = pathlib.Path(data_dir)
    if root.name == spec.dir_name:
        root = root.parent
    path = root / spec.files[split].path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing GLUE {spec.dir_name} {split} file")
    return _read_file(path, spec, spec.files[split])


def _read_file(path: pathlib.Path, spec: TaskSpec, sf: SplitFile) -> SplitData:
    rows = _tsv_rows(path)
    columns = sf.columns
    if columns is None:
        _, header = next(rows, (1, None))
        if header is None:
            raise ValueError(f"{path}:1: empty file, expected a header row")
        columns = tuple(header)
    col = {name: i for i, name in enumerate(columns)}
    wanted = [c for c in (sf.text_a, sf.text_b, sf.label, sf.index) if c is not None]
    missing = [c for c in wanted if c not in col]
    if missing:
        raise ValueError(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                         f"(found {' | '.join(columns)})")
    skip = spec.name in _SKIP_MALFORMED
    examples, skipped = [], 0
    for line_no, fields in rows:
        try:
            examples.append(_parse_row(path, line_no, fields, columns, col, sf, spec,
                                       len(examples) + skipped))
        except _MalformedRow as e:
            if not skip:
                raise ValueError(str(e)) from None
            skipped += 1
    if skipped:
        logging.warning("%s: skipped %d malformed rows (known defects of GLUE's %s files)",
                        path, skipped, spec.dir_name)
    return SplitData(str(path), examples, skipped)


class _MalformedRow(ValueError):
    """A row with the wrong column count or an empty text field."""


def _parse_row(path, line_no, fields, columns, col, sf: SplitFile, spec: TaskSpec,
               row_number: int) -> GlueExample:
    where = f"{path}:{line_no}"
    if len(fields) != len(columns):
        raise _MalformedRow(f"{where}: expected {len(columns)} tab-separated columns "
                            f"({' | '.join(columns)}), found {len(fields)}")
    texts = []
    for name in (sf.text_a, sf.text_b):
        if name is not None and not fields[col[name]].strip():
            raise _MalformedRow(f"{where}: empty {name!r}")
        texts.append(None if name is None else fields[col[name]])
    label = None if sf.label is None else _parse_label(where, fields[col[sf.label]], spec)
    index = fields[col[sf.index]] if sf.index is not None else str(row_number)
    return GlueExample(index, texts[0], texts[1], label, line_no)


def _parse_label(where: str, raw: str, spec: TaskSpec) -> str | float:
    if spec.is_regression:
        try:
            score = float(raw)
        except ValueError:
            raise ValueError(f"{where}: score {raw!r} is not a number") from None
        if not STSB_RANGE[0] <= score <= STSB_RANGE[1]:
            raise ValueError(f"{where}: score {score} outside GLUE's range {STSB_RANGE}")
        return score
    if raw not in spec.label_names:
        raise ValueError(f"{where}: unknown label {raw!r} for {spec.name} "
                         f"(expected one of {', '.join(spec.label_names)})")
    return raw


# ------------------------------------------------------------------ TFDS

_TFDS_SPLITS = {"dev": "validation", "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched"}


def tfds_dataset_name(tfds_option: bool | str | None, task: str) -> str | None:
    """The TFDS name config.tfds asks for: None (read TSVs) for False/''/'false',
    `glue/<task>` for True/'true'/'glue', else the string itself."""
    if tfds_option is None or tfds_option is False:
        return None
    text = str(tfds_option).strip()
    if text.lower() in ("", "false", "0", "none"):
        return None
    if text.lower() in ("true", "1", "glue"):
        return f"glue/{task_spec(task).name}"
    return text


def read_tfds_split(task: str, split: str, name: str | None = None,
                    data_dir: str | None = None) -> SplitData:
    """One split from TFDS `glue/<task>` (or `name`), with the GLUE TSV split
    names ('dev' is TFDS 'validation'; MNLI's 'diagnostic' is `glue/ax`)."""
    spec = task_spec(task)
    if split not in spec.files:
        raise ValueError(f"split={split!r}: {spec.name} has splits {', '.join(spec.files)}")
    tfds = _import_tfds()
    name = name or f"glue/{spec.name}"
    if split == "diagnostic":
        name, tfds_split = name.rsplit("/", 1)[0] + "/ax", "test"
    else:
        tfds_split = _TFDS_SPLITS.get(split, split)
    ds, info = tfds.load(name, split=tfds_split, data_dir=data_dir, with_info=True)
    labeled = spec.files[split].label is not None
    a_key, b_key = spec.tfds_text
    examples = []
    for ex in tfds.as_numpy(ds):
        label = _tfds_label(spec, info, ex["label"], f"{name}[{tfds_split}]") if labeled else None
        examples.append(GlueExample(
            str(int(ex["idx"])), ex[a_key].decode("utf-8"),
            None if b_key is None else ex[b_key].decode("utf-8"), label, 0))
    return SplitData(f"{name}[{tfds_split}]", examples)


def _tfds_label(spec: TaskSpec, info, value, where: str) -> str | float:
    if spec.is_regression:
        return float(value)
    # TFDS names 0/1 classes in words ('negative'/'positive'); GLUE's files use
    # the class id, and for MNLI/QNLI/RTE the same words TFDS uses.
    name = str(int(value)) if spec.label_names == ("0", "1") else \
        info.features["label"].int2str(int(value))
    if name not in spec.label_names:
        raise ValueError(f"{where}: label {name!r} not in {spec.label_names}")
    return name


def _import_tfds():
    """tensorflow_datasets with TensorFlow imported (its GLUE builder is
    registered only then) and kept off any GPU, which JAX owns."""
    # optional (the `tf` extra): only TFDS / TF1 paths need TensorFlow
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    # optional (the `tf` extra): only TFDS / TF1 paths need TensorFlow
    import tensorflow_datasets as tfds

    return tfds
