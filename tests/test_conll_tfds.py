"""CoNLL-2003 from TFDS. `tfds.testing.mock_data` stands in for the download:
the real `conll2003` builder's features, filled with the first sentences of the
shared eng.testa, so the TFDS path must give back exactly what the file reader
reads (minus the documents, which TFDS drops)."""

import numpy as np
import pytest
from conftest import data_path

tf = pytest.importorskip("tensorflow")
import tensorflow_datasets as tfds  # noqa: E402

from bert_jax.data.tokenizer import load_tokenizer  # noqa: E402
from bert_jax.finetune import conll  # noqa: E402
from configs.finetune.conll2003 import get_config  # noqa: E402

N = 40


@pytest.fixture(scope="module")
def sentences():
    return conll.read_conll_file(data_path("conll2003", "eng.testa"))[:N]


def _mock(sentences, extra=()):
    """mock_data whose examples are `sentences` (+ `extra` raw examples)."""

    def as_dataset(self, *args, **kwargs):
        ner = self.info.features["ner"].feature

        def gen():
            for s in sentences:
                n = len(s.words)
                yield {"tokens": list(s.words), "pos": np.zeros(n, np.int64),
                       "chunks": np.zeros(n, np.int64),
                       "ner": np.asarray([ner.str2int(t) for t in s.tags], np.int64)}
            yield from extra

        return tf.data.Dataset.from_generator(gen, output_signature=self.info.features
                                              .get_tensor_spec())

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def test_read_tfds_equals_file_reader(sentences):
    with _mock(sentences):
        got = conll.read_tfds("dev")
    assert [(s.words, s.tags) for s in got] == [(s.words, s.tags) for s in sentences]
    assert all(s.doc == -1 and s.source.startswith("tfds:conll2003/dev#") for s in got)


def test_read_tfds_rejects_misaligned_example(sentences):
    bad = {"tokens": ["EU", "rejects"], "pos": np.zeros(2, np.int64),
           "chunks": np.zeros(2, np.int64), "ner": np.zeros(1, np.int64)}
    with _mock(sentences[:3], [bad]), pytest.raises(
            ValueError, match=r"^tfds:conll2003/train#3: 2 tokens but 1 ner tags"):
        conll.read_tfds("train")


def test_build_task_from_tfds(sentences):
    tok = load_tokenizer(data_path("vocab", "bert-base-cased", "vocab.txt"))
    cfg = get_config()
    cfg.tfds = True
    with _mock(sentences):
        task = conll.build_task(cfg, tok)
        assert task.label_names == conll.label_names_from(sentences)
        assert task.num_train_examples() == N
        batches = list(task.eval_batches("dev", 16))
        assert sum(int((b["label_ids"] >= 0).sum()) for b in batches) == sum(
            len(s.words) for s in sentences)
        cfg.doc_context = True
        with pytest.raises(ValueError, match="doc_context=True needs document boundaries"):
            conll.build_task(cfg, tok)
