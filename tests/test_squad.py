"""SQuAD task: reading, windowed features and decoding against references.

References: transformers' legacy SQuAD pipeline (a port of Google's run_squad:
`squad_convert_examples_to_features`, `compute_predictions_logits`), the
official scorer semantics (tests/test_squad_metrics.py), and the real
dev-v1.1 questions.
"""

import collections
import json
import os

import numpy as np
import pytest
from conftest import data_path

from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.finetune import squad, squad_decoding, squad_examples, squad_features
from bert_jax.finetune import squad_metrics as sm
from configs.finetune import squad as squad_config


@pytest.fixture(scope="module")
def vocab():
    return str(data_path("vocab", "bert-base-uncased", "vocab.txt"))


@pytest.fixture(scope="module")
def tok(vocab):
    return load_tokenizer(vocab)


@pytest.fixture(scope="module")
def dev_path():
    return data_path("squad", "dev-v1.1.json")


@pytest.fixture(scope="module")
def dev(dev_path):
    return squad.read_squad_json(dev_path)


@pytest.fixture(scope="module")
def dev_features(dev, tok):
    return squad.build_features(dev, tok, training=False)


def _config(**overrides):
    c = squad_config.get_config("version=1.1")
    c.update(overrides)
    return c


# --- Reading ------------------------------------------------------------------

def test_reads_official_v2_json(tmp_path):
    obj = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{
        "context": "Paris is the capital of France.",
        "qas": [{"id": "a", "question": "Capital?", "is_impossible": False,
                 "answers": [{"text": "Paris", "answer_start": 0}]},
                {"id": "b", "question": "Capital of Peru?", "is_impossible": True,
                 "answers": [], "plausible_answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(obj))
    a, b = squad.read_squad_json(path)
    paris = squad_examples.Answer("Paris", 0)
    assert (a.qas_id, a.answers, a.is_impossible, a.title) == ("a", (paris,), False, "T")
    assert b.is_impossible and b.answers == () and b.plausible_answers == (paris,)
    assert squad_examples.gold_answers([a, b]) == {"a": ["Paris"], "b": []}


def test_reads_dev_v1(dev):
    assert len(dev) == 10570
    assert len({e.context for e in dev}) == 2067
    assert sum(len(e.answers) for e in dev) == 34726


@pytest.mark.parametrize("text, match", [
    ('{"version": "1.1", "data": [', "malformed JSON at line 1"),
    ('[1, 2]', "not a SQuAD file"),
    ('{"data": [{"paragraphs": [{"qas": []}]}]}', r"data\[0\]\.paragraphs\[0\]: missing 'context'"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q", '
     '"answers": [{"text": "c"}]}]}]}]}', "answer_start"),
])
def test_malformed_file_is_one_line_error_naming_it(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        squad.read_squad_json(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# --- Features and decoding against transformers' run_squad port ---------------

def _hf_examples(examples):
    from transformers.data.processors import squad as hfsq

    return [hfsq.SquadExample(e.qas_id, e.question, e.context, e.answers[0].text,
                              e.answers[0].start, e.title,
                              answers=[{"text": a.text, "answer_start": a.start}
                                       for a in e.answers]) for e in examples]


@pytest.fixture(scope="module")
def hf_subset(dev):
    """Dev questions with the longest contexts (several windows) plus a spread."""
    longest = sorted(range(len(dev)), key=lambda i: -len(dev[i].context))[:20]
    idx = sorted(set(longest) | set(range(0, len(dev), 300)))
    return [dev[i] for i in idx]


@pytest.fixture(scope="module")
def hf_tok(vocab):
    from transformers import BertTokenizer

    return BertTokenizer(vocab, do_lower_case=True)


@pytest.fixture(scope="module")
def hf_features(hf_subset, hf_tok):
    """run_squad features of hf_subset per (max_seq_length, doc_stride,
    max_query_length), computed once (the slow tokenizer dominates)."""
    from transformers.data.processors import squad as hfsq

    cache = {}

    def get(seq, stride, query):
        if (seq, stride, query) not in cache:
            cache[seq, stride, query] = hfsq.squad_convert_examples_to_features(
                _hf_examples(hf_subset), hf_tok, seq, stride, query, is_training=True,
                return_dataset=False, threads=1, tqdm_enabled=False)
        return cache[seq, stride, query]

    return get


# (96, 32, 8): small windows, so many answers span several and questions get cut.
@pytest.mark.parametrize("seq, stride, query", [(384, 128, 64), (96, 32, 8)])
def test_features_match_transformers_run_squad(hf_subset, hf_features, tok, seq, stride, query):
    ref = hf_features(seq, stride, query)
    ours = squad.build_features(hf_subset, tok, seq, stride, query, training=False)
    assert len(ours.windows) == len(ref) > len(hf_subset)
    for r, w in zip(ref, ours.windows):
        n = len(w.input_ids)
        assert r.input_ids[:n] == w.input_ids.tolist() and not any(r.input_ids[n:])
        assert r.token_type_ids[:n] == w.token_type_ids.tolist()
        assert (r.start_position, r.end_position) == (w.start_position, w.end_position)
        want = [r.token_is_max_context[i]
                for i in range(w.context_offset, w.context_offset + w.doc_length)]
        assert want == w.max_context.tolist()


def _word_boundary_logits(features, hf_tok, seed):
    """Random logits whose spans start and end on whole words: there Google's
    get_final_text and our character slicing must agree (inside a word,
    transformers' port returns the whole original word instead of Google's cut)."""
    rng = np.random.default_rng(seed)
    start, end = [], []
    for w in features.windows:
        cont = np.array([t.startswith("##") for t in hf_tok.convert_ids_to_tokens(
            w.input_ids.tolist())])
        s = (rng.normal(size=len(cont)) * 3).astype(np.float32)
        e = (rng.normal(size=len(cont)) * 3).astype(np.float32)
        s[cont] = -30.0
        e[np.append(cont[1:], False)] = -30.0
        if rng.random() < 0.5:  # let the null answer win now and then (v2.0)
            s[0] += 8.0
            e[0] += 8.0
        start.append(s)
        end.append(e)
    return start, end


@pytest.mark.parametrize("version_2", [False, True])
def test_decoding_matches_transformers_run_squad(hf_subset, hf_features, tok, hf_tok, tmp_path,
                                                 version_2):
    from transformers.data.metrics import squad_metrics as hfm
    from transformers.data.processors import squad as hfsq

    seq, stride, query = 96, 32, 8
    ref_feats = hf_features(seq, stride, query)  # labels play no part in decoding
    ours = squad.build_features(hf_subset, tok, seq, stride, query)
    start, end = _word_boundary_logits(ours, hf_tok, seed=version_2)
    results = []
    for f, s, e in zip(ref_feats, start, end):
        pad = np.full(seq - len(s), -1e9)  # padding never makes the top 20
        results.append(hfsq.SquadResult(f.unique_id, np.concatenate([s, pad]).tolist(),
                                        np.concatenate([e, pad]).tolist()))
    files = [str(tmp_path / n) for n in ("p.json", "nbest.json", "null.json")]
    ref = hfm.compute_predictions_logits(
        _hf_examples(hf_subset), ref_feats, results, 20, 30, True, *files, False,
        version_2, 0.0, hf_tok)
    got = squad.postprocess(ours, start, end, 20, 30, version_2, 0.0)

    def ws(t):  # run_squad rebuilds text from whitespace tokens; we keep the original
        return " ".join(t.split())

    assert {q: ws(t) for q, t in got.predictions.items()} == {q: ws(t) for q, t in ref.items()}
    ref_nbest = json.loads(open(files[1]).read())
    for q, entries in got.nbest.items():
        assert [ws(x.text) for x in entries] == [ws(x["text"]) for x in ref_nbest[q]]
        np.testing.assert_allclose([x.probability for x in entries],
                                   [x["probability"] for x in ref_nbest[q]], rtol=1e-12)
        assert [x.start_logit for x in entries] == [x["start_logit"] for x in ref_nbest[q]]
    if version_2:
        assert got.null_odds == pytest.approx(json.loads(open(files[2]).read()), abs=1e-9)
        assert "" in got.predictions.values() and any(got.predictions.values())


# --- Offsets: gold spans survive encoding + decoding on all of dev-v1.1 --------

def _oracle_logits(features):
    start, end = [], []
    for w in features.windows:
        s = np.zeros(len(w.input_ids), np.float32)
        e = np.zeros(len(w.input_ids), np.float32)
        s[w.start_position] += 10.0
        e[w.end_position] += 10.0
        start.append(s)
        end.append(e)
    return start, end


def _failure_kind(ex, features, ei, max_answer_length):
    """Why the gold answer could not come back (every failure must have one)."""
    a = ex.answers[0]
    offsets = features.char_offsets[ei]
    first, last = squad_features._token_span(offsets, a.start, a.start + len(a.text))
    if offsets[first, 0] != a.start or offsets[last, 1] != a.start + len(a.text):
        return "answer boundary inside a word piece"
    if last - first + 1 > max_answer_length:
        return "answer longer than max_answer_length tokens"
    return "no window holds the whole answer where its start has max context"


def test_gold_spans_round_trip_on_dev(dev, dev_features):
    feats = dev_features
    assert feats.report.skipped == 0 and not (set(feats.report.counts) - {"non_ascii"})
    start, end = _oracle_logits(feats)
    preds = squad.postprocess(feats, start, end, n_best_size=20, max_answer_length=30)
    failures = collections.Counter()
    for ei, ex in enumerate(dev):
        if sm.normalize_answer(preds.predictions[ex.qas_id]) != sm.normalize_answer(
                ex.answers[0].text):
            failures[_failure_kind(ex, feats, ei, 30)] += 1
    rate = 1 - sum(failures.values()) / len(dev)
    print(f"\ngold span round trip: {rate:.4%} of {len(dev)} questions; failures: "
          f"{dict(failures)}")
    assert rate >= 0.99
    # Every cut is a slice of the original context at the stored offsets.
    for ex in dev[:500]:
        for x in preds.nbest[ex.qas_id]:
            assert ex.context[x.char_start:x.char_end] == x.text
    # Scored the official way, the oracle reaches the same rate (and more with
    # the other gold answers).
    gold = squad_examples.gold_answers(dev)
    assert sm.evaluate_v1(gold, preds.predictions)["exact_match"] >= 99.0


def test_windows_follow_google_stride():
    assert squad_features.doc_windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert squad_features.doc_windows(10, 4, 8) == [(0, 4), (4, 4), (8, 2)]  # step <= window
    assert squad_features.doc_windows(3, 4, 2) == [(0, 3)]
    # Token 4 sits in windows 1 and 2 with 1 / 2 tokens left and 2 / 1 right:
    # min 1 in both, and the first of equal scores wins.
    mask = squad_features.max_context_mask(np.array([0, 3, 6]), np.array([4, 4, 4]), 10)
    assert mask.sum(0).tolist() == [1] * 10
    assert mask[:, 4].tolist() == [False, True, False]


# --- Bad input ------------------------------------------------------------------

def test_bad_input_is_counted_skipped_in_training_kept_in_eval(tok):
    ctx = "The Eiffel Tower is in Paris."
    examples = [
        squad.SquadExample("good", "Where is it?", ctx, (squad_examples.Answer("Paris", 23),)),
        squad.SquadExample("moved", "Where?", ctx, (squad_examples.Answer("Paris", 3),)),
        squad.SquadExample("outside", "Where?", ctx, (squad_examples.Answer("Paris", 40),)),
        squad.SquadExample("empty_ctx", "Where?", "   ", (squad_examples.Answer("", 0),)),
        squad.SquadExample("long_q", "why " * 40, ctx, (squad_examples.Answer("Paris", 23),)),
        squad.SquadExample("blank_answer", "What?", ctx, (squad_examples.Answer(" ", 3),)),
        squad.SquadExample("no_answer", "What?", ctx, ()),
        squad.SquadExample("accents", "Où est la tour Eiffel?", "La tour est à Paris.",
                           (squad_examples.Answer("Paris", 14),)),
        squad.SquadExample("cjk", "东京在哪里?", "东京是日本的首都。", (squad_examples.Answer("日本", 3),)),
    ]
    train = squad.build_features(examples, tok, 64, 16, 16, training=True)
    assert dict(train.report.counts) == {
        "answer_start_mismatch": 2, "empty_context": 1, "question_too_long": 1,
        "answer_covers_no_token": 1, "missing_answer": 1, "non_ascii": 2}
    assert train.report.skipped == 6
    assert "6 skipped" in train.report.summary()
    assert {examples[w.example_index].qas_id for w in train.windows} == {"good", "accents", "cjk"}
    evals = squad.build_features(examples, tok, 64, 16, 16, training=False)
    assert evals.report.skipped == 1  # only the empty context has nothing to read
    assert all(len(w.input_ids) <= 64 for w in evals.windows)
    start, end = _oracle_logits(evals)
    preds = squad.postprocess(evals, start, end, version_2=True)
    assert preds.predictions["good"] == "Paris" and preds.predictions["accents"] == "Paris"
    assert preds.predictions["cjk"] == "日本"
    assert preds.predictions["empty_ctx"] == "" and preds.null_odds["empty_ctx"] > 0


# --- Offline data sets ----------------------------------------------------------

def test_article_split_and_unanswerable_v2_set(dev_path, tmp_path):
    data = squad.load_squad_json(dev_path)["data"]
    train, held = squad.split_articles(data, 38, 10)
    assert [a["title"] for a in train + held] == [a["title"] for a in data]
    v2 = squad.build_unanswerable_v2(held, fraction=0.5, seed=0)
    assert v2 == squad.build_unanswerable_v2(held, fraction=0.5, seed=0)  # deterministic
    path = tmp_path / "v2.json"
    squad_decoding.write_json(path, v2)
    examples = squad.read_squad_json(path)
    origin = {qa["id"]: a["title"] for a in held for p in a["paragraphs"] for qa in p["qas"]}
    impossible = [e for e in examples if e.is_impossible]
    answerable = [e for e in examples if not e.is_impossible]
    assert len(answerable) == len(origin)
    # round(0.5 * n) per paragraph of n questions: about a third, as in train-v2.0.
    assert 0.3 < len(impossible) / len(examples) < 0.4
    for e in impossible:
        source = e.qas_id.split("_unanswerable_")[0]
        assert e.answers == () and origin[source] != e.title  # from ANOTHER article
    # The held-out side never borrows a question of the training side.
    train_questions = {qa["question"] for a in train for p in a["paragraphs"] for qa in p["qas"]}
    assert not {e.question for e in impossible} & train_questions
    # Gold answers (and "" for the new questions) score 100 with the v2.0 scorer.
    gold = squad_examples.gold_answers(examples)
    perfect = {q: (a[0] if a else "") for q, a in gold.items()}
    result = sm.evaluate_v2(gold, perfect)
    assert result["exact"] == 100.0 and result["NoAns_total"] == len(impossible)
    with pytest.raises(ValueError, match="n_train"):
        squad.split_articles(data, 40, 10)


# --- Task, outputs, prediction --------------------------------------------------

@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_task_batches_and_evaluate_write_official_files(tok, tmp_path, version):
    c = squad_config.get_config(f"version={version},runlocal")
    c.dev_file = str(data_path("squad", "dev-v1.1.json"))
    c.max_train_examples = 40
    c.max_eval_examples = 60
    task = squad.build_task(c, tok)
    assert (task.head, task.num_labels) == ("span", 2)
    batches = list(task.train_batches(8, seed=0, epoch=0))
    assert sum(int(b["example_weights"].sum()) for b in batches) == task.num_train_examples()
    for b in batches:
        assert b["input_ids"].shape[0] == 8 and b["input_ids"].shape[1] in c.length_buckets
        assert set(b) >= {"input_ids", "token_type_ids", "attention_mask", "start_positions",
                          "end_positions", "example_weights"}
    eval_batches = list(task.eval_batches("dev", 16))
    outputs = []
    for b in eval_batches:  # an oracle model: logits peak at the labels
        rows = np.arange(len(b["input_ids"]))
        s = np.zeros(b["input_ids"].shape, np.float32)
        e = np.zeros(b["input_ids"].shape, np.float32)
        s[rows, b["start_positions"]] = 10.0
        e[rows, b["end_positions"]] = 10.0
        outputs.append({"start_logits": s, "end_logits": e})
    metrics = task.evaluate("dev", outputs, str(tmp_path))
    names = {"predictions.json", "nbest_predictions.json", "eval_results.json"}
    assert set(os.listdir(tmp_path / "dev")) == names | (
        {"null_odds.json"} if version == "2.0" else set())
    read = lambda n: json.loads((tmp_path / "dev" / n).read_text())
    assert read("eval_results.json") == pytest.approx(metrics)
    preds = read("predictions.json")
    gold = squad_examples.gold_answers(task.evals["dev"].examples)
    assert list(preds) == list(gold)
    assert all(set(x) == {"text", "probability", "start_logit", "end_logit"}
               for v in read("nbest_predictions.json").values() for x in v)
    if version == "1.1":
        assert metrics == sm.evaluate_v1(gold, preds) and metrics["exact_match"] > 95
    else:
        # The official script run on the written files gives the reported numbers.
        official = sm.evaluate_v2(gold, preds, read("null_odds.json"), c.null_score_diff_threshold)
        assert {k: metrics[k] for k in official} == official
        assert metrics["HasAns_exact"] > 90 and metrics["NoAns_exact"] == 100.0
        assert metrics["full_best_f1"] >= metrics["best_f1"] - 1e-9
    # Rows placed by feature_index give the same answers as the replayed plan.
    with_index = [{**o, "feature_index": b["feature_index"]} for o, b in zip(outputs, eval_batches)]
    assert task.evaluate("dev", with_index) == metrics


def test_answer_returns_a_span_of_the_context(tok):
    c = _config(max_seq_length=32, doc_stride=8, max_query_length=8, length_buckets=(16, 32))
    context = ("The tower was finished in 1889 for the World's Fair. It was designed by the "
               "engineering company of Gustave Eiffel and stands in Paris, on the Champ de Mars.")
    target = context.index("Gustave Eiffel")

    def predict_fn(batch):
        # A stand-in model that points at the tokens of "Gustave Eiffel".
        s = np.zeros(batch["input_ids"].shape, np.float32)
        e = np.zeros(batch["input_ids"].shape, np.float32)
        for i, row in enumerate(batch["input_ids"]):
            toks = [tok.id_to_token(t) for t in row]
            for j in range(len(toks) - 3):  # gustave e ##iff ##el
                if toks[j] == "gustave" and toks[j + 3] == "##el":
                    s[i, j], e[i, j + 3] = 5.0, 5.0
        return {"start_logits": s, "end_logits": e}

    text, score, cs, ce = squad.answer("Who designed it?", context, predict_fn, tok, c)
    assert (text, cs, ce, score) == ("Gustave Eiffel", target, target + 14, 10.0)
    c.version = "2.0"
    c.null_score_diff_threshold = 20.0  # prefer the span
    assert squad.answer("Who?", context, predict_fn, tok, c)[0] == "Gustave Eiffel"
    c.null_score_diff_threshold = -20.0  # prefer no answer
    assert squad.answer("Who?", context, predict_fn, tok, c)[2:] == (-1, -1)


def test_config_variants():
    assert squad_config.get_config("version=2.0").synthesize_v2
    assert squad_config.get_config("version=1.1,source=tfds").tfds is True
    assert squad_config.get_config("version=2.0,source=json").article_split == ""
    with pytest.raises(ValueError, match="version"):
        squad_config.get_config("version=3")
