"""GLUE from TFDS `glue/<task>` through tfds.testing.mock_data (no download)."""

import numpy as np
import pytest
from conftest import data_path
from ml_collections import config_dict

from bert_jax.finetune import glue, glue_data

N = 9  # mock examples per split


@pytest.fixture(scope="module")
def tfds():
    return glue_data._import_tfds()


@pytest.fixture(scope="module")
def tokenizer():
    from bert_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(data_path("vocab", "bert-base-uncased", "vocab.txt"))


def _config(task, tfds_option=True):
    return config_dict.ConfigDict({"task": task, "data_dir": None, "tfds": tfds_option,
                                   "max_seq_length": 128, "length_buckets": (32, 64, 128)})


def _direct(tfds, name, split):
    return list(tfds.as_numpy(tfds.load(name, split=split)))


def test_tfds_option_names():
    assert glue.tfds_dataset_name(False, "sst2") is None
    assert glue.tfds_dataset_name("", "sst2") is None
    assert glue.tfds_dataset_name(True, "SST-2") == "glue/sst2"
    assert glue.tfds_dataset_name("true", "mnli") == "glue/mnli"
    assert glue.tfds_dataset_name("glue/rte:2.0.0", "rte") == "glue/rte:2.0.0"


@pytest.mark.parametrize("task,a_key,b_key,tfds_names", [
    ("sst2", "sentence", None, None),
    ("qqp", "question1", "question2", None),
    ("rte", "sentence1", "sentence2", ["entailment", "not_entailment"]),
])
def test_tfds_classification(tfds, tokenizer, tmp_path, task, a_key, b_key, tfds_names):
    with tfds.testing.mock_data(num_examples=N):
        t = glue.build_task(_config(task), tokenizer)
        direct = _direct(tfds, f"glue/{task}", "validation")
        dev = t.split_data("dev").examples
        assert t.num_train_examples() == N and len(dev) == N
        for ex, ref in zip(dev, direct):
            assert ex.text_a == ref[a_key].decode() and ex.index == str(ref["idx"])
            assert ex.text_b == (None if b_key is None else ref[b_key].decode())
            # 0/1 tasks keep GLUE's class ids; named classes keep TFDS's names.
            want = str(ref["label"]) if tfds_names is None else tfds_names[ref["label"]]
            assert ex.label == want
        train = list(t.train_batches(4, seed=0, epoch=0))
        assert sum(b["example_weights"].sum() for b in train) == N
        assert all(b["labels"].dtype == np.int32 for b in train)
        outputs = [{"logits": np.eye(2)[b["labels"]]} for b in t.eval_batches("dev", 4)]
        assert t.evaluate("dev", outputs)["accuracy"] == 1.0
        test_out = [{"logits": np.zeros((4, 2))} for _ in t.eval_batches("test", 4)]
        lines = t.write_test_predictions("test", test_out, tmp_path).read_text().splitlines()
        idx = [str(r["idx"]) for r in _direct(tfds, f"glue/{task}", "test")]
        assert [line.split("\t")[0] for line in lines[1:]] == idx


def test_tfds_stsb_and_mnli(tfds, tokenizer, tmp_path):
    with tfds.testing.mock_data(num_examples=N):
        stsb = glue.build_task(_config("stsb", "glue"), tokenizer)
        ref = _direct(tfds, "glue/stsb", "validation")
        assert [e.label for e in stsb.split_data("dev").examples] == pytest.approx(
            [float(r["label"]) for r in ref])
        assert next(stsb.train_batches(4, 0, 0))["labels"].dtype == np.float32

        mnli = glue.build_task(_config("mnli"), tokenizer)
        names = ["entailment", "neutral", "contradiction"]  # TFDS's MNLI class order
        ref = _direct(tfds, "glue/mnli", "validation_mismatched")
        got = mnli.split_data("dev_mismatched").examples
        assert [e.label for e in got] == [names[r["label"]] for r in ref]
        assert [e.text_a for e in got] == [r["premise"].decode() for r in ref]
        ax = mnli.split_data("diagnostic")
        assert ax.source == "glue/ax[test]" and len(ax.examples) == N
        out = [{"logits": np.zeros((8, 3))} for _ in mnli.eval_batches("diagnostic", 8)]
        path = mnli.write_test_predictions("diagnostic", out, tmp_path)
        assert path.name == "AX.tsv"
        assert {line.split("\t")[1] for line in path.read_text().splitlines()[1:]} == {
            "contradiction"}
