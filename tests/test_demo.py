"""`make demo` pieces that run in seconds: its config and its unigram reference
(the full demo is minutes; README "What the demo shows" has a measured run)."""

import collections
import math

import pytest
from conftest import data_path


@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_demo_config_is_valid_and_masks_fit(arch):
    from bert_jax import pretrain
    from configs.pretrain import demo
    c = demo.get_config(f"steps=40,arch={arch}")
    assert c.model.get("architecture", "bert") == arch
    c.data.prepared_dir = "/nonexistent"   # validate_config needs a value, reads nothing
    pretrain.validate_config(c)
    # A smaller cap than the masking rate's share would silently drop predictions.
    assert c.data.max_predictions_per_seq >= math.ceil(
        c.data.masked_lm_prob * c.data.max_seq_length)
    assert (c.num_train_steps, c.eval_every, c.checkpoint.every) == (40, 10, 20)
    assert c.num_train_steps % c.eval_every == 0   # the last evaluation is at the end
    with pytest.raises(ValueError, match="known keys are steps"):
        demo.get_config("step=40")
    with pytest.raises(ValueError, match="arch=gpt: expected modernbert or bert"):
        demo.get_config("arch=gpt")


def test_unigram_reference_matches_token_counts(tiny_pretraining_data):
    """The most frequent token of the training text, counted with the tokenizer
    on the raw novels (not the prepared cache), and its share of the held-out
    novels' tokens: the masked positions are a sample of those tokens, so the
    reference accuracy must be that share up to sampling error."""
    from bert_jax import demo as demo_cli
    from bert_jax.data import corpora
    from bert_jax.data.tokenizer import load_tokenizer
    from configs.pretrain import demo

    tok = load_tokenizer(tiny_pretraining_data["vocab"])
    novels = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))  # as the fixture splits them

    def counts(paths):
        c = collections.Counter()
        for p in paths:
            for doc in corpora.iter_documents(f"raw:{p}"):
                for ids in tok.ids_batch(doc.sentences):
                    c.update(ids)
        return c

    train, heldout = counts(novels[:3]), counts(novels[3:5])
    top_id = train.most_common(1)[0][0]
    share = heldout[top_id] / sum(heldout.values())

    c = demo.get_config()
    c.data.prepared_dir = str(tiny_pretraining_data["train"])
    c.eval_data.prepared_dir = str(tiny_pretraining_data["heldout"])
    token, acc, _ = demo_cli.context_free_accuracy(c)
    assert token == tok.id_to_token(top_id)
    # ~4,600 predictions (some rows hold fewer than the cap): 4 standard errors.
    n = c.eval_batches * c.global_batch_size * c.data.max_predictions_per_seq * 0.9
    assert abs(acc - share) < 4 * math.sqrt(share * (1 - share) / n), (acc, share)


def test_heldout_table_without_nsp():
    """An MLM-only demo (data.nsp=False) logs no NSP accuracy: its table has no
    such column, and a run with NSP keeps it."""
    from bert_jax.demo import heldout_table
    mlm = heldout_table([{"step": 5, "eval_mlm_loss": 6.5, "eval_mlm_accuracy": 0.25},
                         {"step": 5, "mlm_accuracy": 0.3}])
    assert mlm.splitlines() == ["| step | held-out MLM loss | held-out MLM accuracy |",
                                "| --- | --- | --- |", "| 5 | 6.50 | 0.250 |"]
    both = heldout_table([{"step": 5, "eval_mlm_loss": 6.5, "eval_mlm_accuracy": 0.25,
                           "eval_nsp_accuracy": 0.5}])
    assert both.splitlines()[-1] == "| 5 | 6.50 | 0.250 | 0.50 |"


def test_workdir_of_an_earlier_demo_recipe_is_one_line_with_what_to_do(tiny_pretraining_data,
                                                                      tmp_path):
    """A checkout updated since its last `make demo` (BERT-tiny then, ModernBERT-tiny
    now) finds runs/demo/pretrain made with the other recipe: the rerun refuses it
    before training and says how to start over; the old run is left as it was."""
    from bert_jax import demo as demo_cli
    from bert_jax.train import run_identity
    from configs.pretrain import demo

    def cfg(arch):
        c = demo.get_config(f"arch={arch},steps=2")
        c.data.prepared_dir = str(tiny_pretraining_data["train"])
        c.eval_data.prepared_dir = str(tiny_pretraining_data["heldout"])
        return c

    run = tmp_path / "demo" / "pretrain"
    demo_cli.pretrain_demo(cfg("bert"), run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(run_identity.RerunMismatch) as e:
        demo_cli.pretrain_demo(cfg("modernbert"), run)
    msg = str(e.value)
    assert "\n" not in msg and "model.architecture bert -> modernbert" in msg
    assert msg.endswith(f"(for `make demo`: delete {run}, or pass WORKDIR=another/dir to make, "
                        "--workdir to python -m bert_jax.demo)")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
