"""SQuAD from TFDS. `tfds.testing.mock_data` stands in for the download: the
real `squad/v1.1` / `squad/v2.0` builders' features, filled either with real
dev-v1.1 questions (then the TFDS reader must give back exactly what the JSON
reader reads) or with TFDS's random mock values (bad input: counted, no crash)."""

import pytest
from conftest import data_path

tf = pytest.importorskip("tensorflow")
import tensorflow_datasets as tfds  # noqa: E402

from bert_jax.data.tokenizer import load_tokenizer  # noqa: E402
from bert_jax.finetune import squad  # noqa: E402
from configs.finetune.squad import get_config  # noqa: E402


@pytest.fixture(scope="module")
def articles():
    """The last 3 dev-v1.1 articles, as v1.1 and as the v2.0-style set."""
    data = squad.load_squad_json(data_path("squad", "dev-v1.1.json"))["data"]
    return {"v1.1": data[-3:], "v2.0": squad.build_unanswerable_v2(data[-3:])["data"]}


def _mock(data):
    """mock_data whose examples are the questions of `data` (official JSON layout)."""

    def as_dataset(self, *args, **kwargs):
        v2 = "is_impossible" in self.info.features

        def answers(items):
            return {"text": [a["text"] for a in items],
                    "answer_start": [a["answer_start"] for a in items]}

        def gen():
            for article in data:
                for p in article["paragraphs"]:
                    for qa in p["qas"]:
                        row = {"id": qa["id"], "title": article["title"], "context": p["context"],
                               "question": qa["question"], "answers": answers(qa["answers"])}
                        if v2:
                            row["is_impossible"] = qa["is_impossible"]
                            row["plausible_answers"] = answers(qa.get("plausible_answers", []))
                        yield row

        return tf.data.Dataset.from_generator(
            gen, output_signature=self.info.features.get_tensor_spec())

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


@pytest.mark.parametrize("version", ["v1.1", "v2.0"])
def test_read_tfds_equals_json_reader(articles, version):
    with _mock(articles[version]):
        got = squad.read_squad_tfds(f"squad/{version}", "validation")
    assert got == squad.examples_from_data(articles[version])
    assert any(e.is_impossible for e in got) == (version == "v2.0")


def test_build_task_from_tfds(articles):
    tok = load_tokenizer(data_path("vocab", "bert-base-uncased", "vocab.txt"))
    cfg = get_config("version=2.0,source=tfds")
    with _mock(articles["v2.0"]):
        task = squad.build_task(cfg, tok)
    n = len(squad.examples_from_data(articles["v2.0"]))
    assert len(task.evals["dev"].examples) == n
    assert task.train.report.skipped == 0 and task.num_train_examples() >= n


def test_random_mock_values_are_counted_not_fatal():
    tok = load_tokenizer(data_path("vocab", "bert-base-uncased", "vocab.txt"))
    with tfds.testing.mock_data(num_examples=6):
        v1 = squad.read_squad_tfds("squad/v1.1", "train")
        v2 = squad.read_squad_tfds("squad/v2.0", "validation")
    assert len(v1) == len(v2) == 6
    # Random answers rarely sit where answer_start says: counted and skipped.
    feats = squad.build_features(v1 + v2, tok, max_seq_length=64, doc_stride=16,
                                 max_query_length=16, training=True)
    assert feats.report.examples == 12
    assert 0 < feats.report.skipped <= sum(feats.report.counts[k] for k in (
        "answer_start_mismatch", "empty_context", "question_too_long", "missing_answer",
        "answer_covers_no_token"))
