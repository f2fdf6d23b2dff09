"""bench/bench_defaults.py's pure parts: both arms train on the examples our
configs keep, the command is the README's with only data/subset/epochs/seed
set, and the report's arithmetic. No training."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))
import bench_defaults as bd  # noqa: E402


def test_glue_train_ids_are_what_max_train_examples_keeps(shared_data_dir,
                                                          tiny_pretraining_data):
    """The HF arm's SST-2 subset is the one GlueTask keeps for
    config.max_train_examples (same examples, same order)."""
    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune.glue import GlueTask, task_spec
    from bert_jax.finetune.glue_data import read_split

    root = shared_data_dir / "glue"
    full = read_split("sst2", "train", root).examples
    tok = load_tokenizer(tiny_pretraining_data["vocab"])
    task = GlueTask(task_spec("sst2"), lambda split: read_split("sst2", split, root), tok,
                    128, (32, 64, 96, 128), max_train_examples=300)
    kept = task.split_data("train").examples
    ids = bd.train_ids("sst2", len(full), 300)
    assert len(set(ids)) == 300 and [full[i] for i in ids] == kept
    hf_train, _, hf_ids = bd._glue_data("sst2", 300)
    assert hf_ids == ids and hf_train == kept


def test_conll_train_ids_are_the_prefix_max_train_sentences_keeps(shared_data_dir,
                                                                 tiny_pretraining_data):
    from ml_collections import ConfigDict

    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune import conll

    cfg = ConfigDict(dict(train_file=str(shared_data_dir / "conll2003" / "eng.train"),
                          dev_file=str(shared_data_dir / "conll2003" / "eng.testa"),
                          max_train_sentences=50, max_seq_length=128, window_stride=64,
                          doc_context=False, length_buckets=(32, 64, 128), tfds=False))
    tok = load_tokenizer(tiny_pretraining_data["vocab"])
    kept = conll.build_task(cfg, tok, label_names=["O"]).sentences("train")
    hf_train, _, ids = bd._conll_data(50)
    assert ids == list(range(50))
    assert [words for words, _ in hf_train] == [list(s.words) for s in kept]
    # IOB2 for the HF arm: no I- tag follows O or another type.
    for _, tags in hf_train:
        for prev, t in zip(["O", *tags], tags):
            assert not t.startswith("I-") or prev[2:] == t[2:], tags


def test_ours_command_sets_only_data_subset_epochs_seed(shared_data_dir):
    cmd = bd.ours_command("sst2", pathlib.Path("/tmp/w"), 4096, 1, 3)
    flags = [a.split("=")[0] for a in cmd[3:]]
    assert cmd[1:3] == ["-m", "bert_jax.finetune"]
    assert sorted(flags) == sorted(["--config", "--workdir", "--config.init_checkpoint",
                                    "--config.num_epochs", "--config.seed",
                                    "--config.data_dir", "--config.max_train_examples"])
    assert "--config=configs/finetune/glue.py:task=sst2" in cmd
    conll = bd.ours_command("conll", pathlib.Path("/tmp/w"), 2000, 1, 0)
    assert "--config=configs/finetune/conll2003.py" in conll
    assert "--config.max_train_sentences=2000" in conll


def test_arms_alternate_and_report_means():
    assert bd.arm_order(0) == ("ours", "hf") and bd.arm_order(1) == ("hf", "ours")
    recs = [dict(task="sst2", arm=a, seed=s, n=10, train_s=t, value=v, process_s=p,
                 batching="packing: 4 rows (x)")
            for a, s, t, v, p in [("ours", 0, 10.0, 80.0, 20.0), ("ours", 1, 20.0, 82.0, 30.0),
                                  ("hf", 0, 30.0, 81.0, 40.0), ("hf", 1, 30.0, 80.0, 40.0),
                                  ("hf", 2, 99.0, 10.0, 99.0)]]   # seed 2: HF only, left out
    row = bd.report(recs).splitlines()[2].split(" | ")
    assert row[2] == "0,1"
    assert row[3].startswith("15.0 ") and row[4].startswith("30.0 ")
    assert row[5] == "**2.00x**"                     # 30 / 15
    assert row[6].startswith("81.00") and row[7].startswith("80.50") and row[8] == "+0.50"
