"""GLUE readers (real files and synthetic files in the official layouts), bad
input, features against transformers' BertTokenizerFast, evaluation files and
GLUE submission files."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from conftest import data_path
from scipy import stats
from sklearn import metrics as skm

from bert_jax.finetune import glue

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _load_config(arg):
    spec = importlib.util.spec_from_file_location("glue_config",
                                                  _REPO / "configs" / "finetune" / "glue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def glue_dir():
    return data_path("glue")


@pytest.fixture(scope="module")
def tokenizer():
    from bert_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(data_path("vocab", "bert-base-uncased", "vocab.txt"))


def _task(tokenizer, task, data_dir, **kw):
    config = _load_config(f"task={task}")
    config.data_dir = str(data_dir)
    config.update(kw)
    return glue.build_task(config, tokenizer)


# ------------------------------------------------------------ real files

# Rows and label counts as listed in shared/data/README.md.
REAL_COUNTS = [
    ("cola", "train", 8551, {"1": 6023, "0": 2528}),
    ("cola", "dev", 1043, {"1": 721, "0": 322}),
    ("cola", "test", 1063, None),
    ("sst2", "train", 67349, {"1": 37569, "0": 29780}),
    ("sst2", "dev", 872, {"1": 444, "0": 428}),
    ("sst2", "test", 1821, None),
    ("mrpc", "train", 3668, {"1": 2474, "0": 1194}),
    ("mrpc", "dev", 408, {"1": 279, "0": 129}),
    ("mrpc", "test", 1725, None),
    ("stsb", "train", 5749, None),
    ("stsb", "dev", 1500, None),
    ("stsb", "test", 1379, None),
    ("qnli", "dev", 5463, {"entailment": 2702, "not_entailment": 2761}),
    ("qnli", "test", 5463, None),
    ("rte", "train", 2490, {"entailment": 1249, "not_entailment": 1241}),
    ("rte", "dev", 277, {"entailment": 146, "not_entailment": 131}),
    ("rte", "test", 3000, None),
    ("wnli", "train", 635, {"1": 312, "0": 323}),
    ("wnli", "dev", 71, {"1": 31, "0": 40}),
    ("wnli", "test", 146, None),
    ("mnli", "diagnostic", 1104, None),
]


@pytest.mark.parametrize("task,split,rows,label_counts", REAL_COUNTS)
def test_real_row_and_label_counts(glue_dir, task, split, rows, label_counts):
    data = glue.read_split(task, split, glue_dir)
    assert len(data.examples) == rows and data.skipped == 0
    labels = [e.label for e in data.examples]
    if label_counts is not None:
        assert {k: labels.count(k) for k in set(labels)} == label_counts
    elif split in ("test", "diagnostic"):
        assert set(labels) == {None}
        assert [e.index for e in data.examples] == [str(i) for i in range(rows)]
    else:  # STS-B scores: the last column, parsed here independently
        with open(glue_dir / "STS-B" / f"{split}.tsv", encoding="utf-8") as f:
            assert labels == [float(line.rstrip("\n").split("\t")[-1]) for line in list(f)[1:]]


def test_real_text_keeps_quote_characters(glue_dir):
    """MRPC text has unbalanced quotes; CSV quoting would merge rows."""
    data = glue.read_split("mrpc", "dev", glue_dir)
    assert data.examples[0].text_b.startswith('" The foodservice pie business')
    assert sum('"' in e.text_a + e.text_b for e in data.examples) > 10
    # The task folder itself is accepted as data_dir too.
    again = glue.read_split("MRPC", "dev", glue_dir / "MRPC")
    assert again.examples == data.examples


def test_qnli_train_missing_names_file(glue_dir):
    with pytest.raises(FileNotFoundError, match=r"QNLI/train\.tsv: missing GLUE QNLI train file"):
        glue.read_split("qnli", "train", glue_dir)


# ------------------------------------------------------- synthetic layouts

MNLI_PARSES = ["( a )", "( b )", "(ROOT a)", "(ROOT b)"]


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fake_glue(tmp_path_factory):
    """MNLI, QQP and QNLI-train files in the official column layouts."""
    root = tmp_path_factory.mktemp("glue")
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
            "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
            "sentence1", "sentence2"]
    golds = ["entailment", "neutral", "contradiction", "neutral", "entailment"]
    _write(root / "MNLI" / "train.tsv", ["\t".join(base + ["label1", "gold_label"])] + [
        "\t".join([str(i), "31193", f"{i}n", "government", *MNLI_PARSES,
                   f'premise {i} with a " quote', f"hypothesis {i}", g, g])
        for i, g in enumerate(golds)])
    for split in ("dev_matched", "dev_mismatched"):
        _write(root / "MNLI" / f"{split}.tsv",
               ["\t".join(base + [f"label{k}" for k in range(1, 6)] + ["gold_label"])] + [
                   "\t".join([str(i), "63735", f"{i}e", "fiction", *MNLI_PARSES,
                              f"{split} premise {i}", f"hyp {i}", *[g] * 5, g])
                   for i, g in enumerate(golds[:4])])
    for split in ("test_matched", "test_mismatched"):
        _write(root / "MNLI" / f"{split}.tsv", ["\t".join(base)] + [
            "\t".join([str(i), "1", f"{i}c", "slate", *MNLI_PARSES, f"p {i}", f"h {i}"])
            for i in range(3)])
    _write(root / "diagnostic" / "diagnostic.tsv",
           ["index\tsentence1\tsentence2", "0\tThe cat sat.\tThe cat did not sit."])
    _write(root / "QQP" / "train.tsv", [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "0\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1",
        # A question broken by a newline: two malformed lines.
        "1\t3\t4\tWhat is", "the answer?\tWhy?\t0",
        "2\t5\t6\tIs the sky blue?\t\t0",                 # empty question2
        "3\t7\t8\tWhy is \"quoted text\" odd?\tIs it?\t0",
    ])
    _write(root / "QQP" / "test.tsv", ["id\tquestion1\tquestion2",
                                       "0\tA question?\tAnother one?", "1\tQ2?\tQ3?"])
    _write(root / "QNLI" / "train.tsv", ["index\tquestion\tsentence\tlabel",
                                         "0\tWho?\tHim.\tentailment",
                                         "1\tWhen?\tNever.\tnot_entailment"])
    return root


def test_mnli_layouts(fake_glue):
    train = glue.read_split("mnli", "train", fake_glue).examples
    assert [e.label for e in train] == ["entailment", "neutral", "contradiction", "neutral",
                                        "entailment"]
    assert train[0].text_a == 'premise 0 with a " quote' and train[0].text_b == "hypothesis 0"
    dev = glue.read_split("mnli", "dev_mismatched", fake_glue).examples
    assert [e.text_a for e in dev][:2] == ["dev_mismatched premise 0", "dev_mismatched premise 1"]
    test = glue.read_split("mnli", "test_matched", fake_glue).examples
    assert [(e.index, e.label) for e in test] == [("0", None), ("1", None), ("2", None)]


def test_qqp_skips_known_malformed_rows_with_count(fake_glue, caplog):
    data = glue.read_split("qqp", "train", fake_glue)
    assert data.skipped == 3
    assert [(e.index, e.label) for e in data.examples] == [("0", "1"), ("3", "0")]
    assert data.examples[1].text_a == 'Why is "quoted text" odd?'
    assert "skipped 3 malformed rows" in caplog.text
    test = glue.read_split("qqp", "test", fake_glue)
    assert [e.index for e in test.examples] == ["0", "1"] and test.skipped == 0


def test_qnli_train_layout(fake_glue):
    data = glue.read_split("qnli", "train", fake_glue)
    assert [(e.text_a, e.text_b, e.label) for e in data.examples] == [
        ("Who?", "Him.", "entailment"), ("When?", "Never.", "not_entailment")]


# ------------------------------------------------------------- bad input

RTE_HEAD = "index\tsentence1\tsentence2\tlabel"


@pytest.mark.parametrize("lines,match", [
    ([RTE_HEAD, "0\ta\tb\tentailment", "1\ta\tb"], r"dev\.tsv:3: expected 4 tab-separated"),
    ([RTE_HEAD, "0\ta\tb\tmaybe"], r"dev\.tsv:2: unknown label 'maybe' for rte"),
    ([RTE_HEAD, "0\t  \tb\tentailment"], r"dev\.tsv:2: empty 'sentence1'"),
    (["index\tsentence1\tlabel", "0\ta\tentailment"], r"dev\.tsv:1: header lacks column"),
])
def test_bad_rows_name_file_and_line(tmp_path, lines, match):
    _write(tmp_path / "RTE" / "dev.tsv", lines)
    with pytest.raises(ValueError, match=match) as err:
        glue.read_split("rte", "dev", tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_bad_cola_and_stsb_rows(tmp_path):
    _write(tmp_path / "CoLA" / "train.tsv", ["gj04\t1\t\tGood.", "gj04\t2\t*\tBad label."])
    with pytest.raises(ValueError, match=r"train\.tsv:2: unknown label '2'"):
        glue.read_split("cola", "train", tmp_path)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for score, match in (("high", "is not a number"), ("5.5", "outside GLUE's range")):
        _write(tmp_path / "STS-B" / "dev.tsv", [head, f"0\tg\tf\ty\t0\tn\tn\ta\tb\t{score}"])
        with pytest.raises(ValueError, match=rf"dev\.tsv:2: .*{match}"):
            glue.read_split("stsb", "dev", tmp_path)


def test_missing_split_and_unknown_task(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"WNLI/dev\.tsv: missing GLUE WNLI dev file"):
        glue.read_split("wnli", "dev", tmp_path)
    with pytest.raises(ValueError, match="not a GLUE task"):
        glue.read_split("squad", "dev", tmp_path)
    with pytest.raises(ValueError, match="split='dev': mnli has splits"):
        glue.read_split("mnli", "dev", tmp_path)


# ------------------------------------------------------------ features


def test_pair_features_match_transformers(glue_dir, tokenizer):
    """RTE dev (long premises, so truncation happens) encodes as
    BertTokenizerFast does with longest-first truncation to 128."""
    from transformers import BertTokenizerFast

    ref = BertTokenizerFast(str(data_path("vocab", "bert-base-uncased", "vocab.txt")),
                            do_lower_case=True)
    task = _task(tokenizer, "rte", glue_dir)
    examples = task.split_data("dev").examples
    feats = task.features("dev")
    enc = ref([e.text_a for e in examples], [e.text_b for e in examples], truncation=True,
              max_length=128)
    assert sum(len(ids) == 128 for ids in enc["input_ids"]) > 5
    for f, ids, types, ex in zip(feats, enc["input_ids"], enc["token_type_ids"], examples):
        assert f["input_ids"].tolist() == ids and f["token_type_ids"].tolist() == types
        assert f["labels"] == task.label_names.index(ex.label)


# ----------------------------------------------------- evaluation + files


def _fake_outputs(task, split, batch_size, preds_fn):
    """Per-batch logits whose argmax (or value) is preds_fn(labels); padding
    rows get noise that must be ignored."""
    rng = np.random.default_rng(0)
    outputs = []
    for batch in task.eval_batches(split, batch_size):
        real = batch["example_weights"] > 0
        logits = rng.normal(size=(len(real), task.num_labels))
        if "labels" in batch:
            wanted = preds_fn(batch["labels"])
            if task.head == "regression":
                logits[:, 0] = wanted
            else:
                logits[np.arange(len(real)), wanted] += 10.0
        outputs.append({"logits": logits})
    return outputs


def test_sst2_evaluate_and_submission(glue_dir, tokenizer, tmp_path):
    task = _task(tokenizer, "sst2", glue_dir)
    assert (task.head, task.num_labels, task.label_names) == ("classification", 2, ["0", "1"])
    flip = np.random.default_rng(3).random(10_000) < 0.2
    outputs = _fake_outputs(task, "dev", 64, lambda y: np.where(flip[:len(y)], 1 - y, y))
    batches = list(task.eval_batches("dev", 64))
    assert {b["input_ids"].shape[1] for b in batches} <= {32, 64}
    assert sum(b["example_weights"].sum() for b in batches) == 872
    gold = np.concatenate([b["labels"][b["example_weights"] > 0] for b in batches])
    expected = np.array([int(e.label) for e in task.split_data("dev").examples])
    np.testing.assert_array_equal(gold, expected)
    preds = task.predictions("dev", outputs)
    metrics = task.evaluate("dev", outputs, str(tmp_path))
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(expected, preds))
    assert 0.7 < metrics["accuracy"] < 0.9
    saved = json.loads((tmp_path / "dev" / "eval_results.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"] and saved["num_examples"] == 872
    rows = (tmp_path / "dev" / "predictions.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction\tlabel\tprob_0\tprob_1" and len(rows) == 873
    assert [r.split("\t")[1] for r in rows[1:]] == [str(p) for p in preds]

    test_out = _fake_outputs(task, "test", 64, None)
    path = task.write_test_predictions("test", test_out, tmp_path / "submit")
    lines = path.read_text().splitlines()
    assert path.name == "SST-2.tsv" and lines[0] == "index\tprediction" and len(lines) == 1822
    with open(glue_dir / "SST-2" / "test.tsv", encoding="utf-8") as f:
        file_index = [line.split("\t")[0] for line in f][1:]
    assert [r.split("\t")[0] for r in lines[1:]] == file_index
    assert {r.split("\t")[1] for r in lines[1:]} == {"0", "1"}
    with pytest.raises(ValueError, match="test splits have no labels"):
        task.evaluate("test", test_out)


def test_stsb_regression_evaluate_and_submission(glue_dir, tokenizer, tmp_path):
    task = _task(tokenizer, "stsb", glue_dir)
    assert (task.head, task.num_labels, task.label_names) == ("regression", 1, [])
    noise = np.random.default_rng(0).normal(size=10_000)
    outputs = _fake_outputs(task, "dev", 48, lambda y: y + noise[:len(y)])
    labels = np.array([e.label for e in task.split_data("dev").examples])
    preds = task.predictions("dev", outputs)
    metrics = task.evaluate("dev", outputs, str(tmp_path))
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(labels, preds)[0])
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(labels, preds)[0])
    path = task.write_test_predictions("test", _fake_outputs(task, "test", 48, None), tmp_path)
    lines = path.read_text().splitlines()
    assert path.name == "STS-B.tsv" and len(lines) == 1380
    float(lines[1].split("\t")[1])


def test_mnli_two_eval_splits_and_three_submissions(fake_glue, tokenizer, tmp_path):
    task = _task(tokenizer, "mnli", fake_glue, length_buckets=(16, 32, 128))
    assert task.eval_splits == ("dev_matched", "dev_mismatched")
    assert task.label_names == ["contradiction", "entailment", "neutral"]
    assert task.num_train_examples() == 5
    train = list(task.train_batches(4, seed=0, epoch=0))
    assert sum(b["example_weights"].sum() for b in train) == 5
    for split in task.eval_splits:
        out = _fake_outputs(task, split, 3, lambda y: y)
        assert task.evaluate(split, out, str(tmp_path)) == {"accuracy": 1.0, "score": 1.0}
        assert (tmp_path / split / "eval_results.json").exists()
    names = {}
    for split in task.test_splits:
        path = task.write_test_predictions(split, _fake_outputs(task, split, 2, None), tmp_path)
        names[split] = path.name
        rows = path.read_text().splitlines()
        assert rows[0] == "index\tprediction"
        assert {r.split("\t")[1] for r in rows[1:]} <= set(task.label_names)
    assert names == {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv",
                     "diagnostic": "AX.tsv"}


def test_outputs_must_match_examples(glue_dir, tokenizer):
    task = _task(tokenizer, "wnli", glue_dir)
    outputs = _fake_outputs(task, "dev", 16, lambda y: y)
    with pytest.raises(ValueError, match="outputs do not match the 71 examples"):
        task.evaluate("dev", outputs[:-1])
    weighted = [{"logits": o["logits"], "example_weights": b["example_weights"]}
                for o, b in zip(outputs, task.eval_batches("dev", 16))]
    assert task.evaluate("dev", weighted)["accuracy"] == 1.0


# ---------------------------------------------------------------- config


def test_config_and_build_task(glue_dir, tokenizer):
    c = _load_config("task=MNLI")
    assert (c.task, c.max_seq_length, c.global_batch_size, c.optim.lr, c.num_epochs) == (
        "mnli", 128, 32, 2e-5, 3)
    assert (c.optim.warmup_ratio, c.optim.warmup_steps, c.optim.weight_decay,
            c.eval_batch_size) == (0.1, 0, 0.01, 64)
    assert tuple(c.length_buckets) == (32, 64, 96, 128) and c.data_dir is None
    assert tuple(c.sweep.lrs) == (2e-5, 3e-5, 5e-5) and len(c.sweep.seeds) >= 3
    with pytest.raises(ValueError, match="config.data_dir"):
        glue.build_task(c, tokenizer)
    with pytest.raises(ValueError, match="task='squad'"):
        _load_config("task=squad")
    local = _load_config("task=rte,runlocal")
    task = _task(tokenizer, "rte", glue_dir, max_train_examples=local.max_train_examples)
    kept = task.split_data("train").examples
    assert len(kept) == local.max_train_examples == 256
    full = glue.read_split("rte", "train", glue_dir).examples
    assert kept == [full[i] for i in glue.subsample_indices(len(full), 256)]
    with pytest.raises(ValueError, match="max_seq_length=256 exceeds"):
        _task(tokenizer, "rte", glue_dir, max_seq_length=256)
