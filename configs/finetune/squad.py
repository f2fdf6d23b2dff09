r"""SQuAD v1.1 / v2.0 fine-tuning with Google run_squad's recipe.

  python -m bert_jax.finetune --config=configs/finetune/squad.py:version=1.1 \
      --workdir=runs/squad/v1.1 --config.init_checkpoint=CKPT

version: 1.1 or 2.0. source (what is trained and evaluated):
  dev_split (default, the only SQuAD data available offline): the first 38
    articles of `dev_file` (dev-v1.1.json) train, its last 10 evaluate; for
    version=2.0 each side gets unanswerable questions paired from its own other
    articles (`synthesize_v2`), so no question or paragraph crosses the split.
  json: the official files `train_file` and `dev_file`
    (--config.train_file=train-v1.1.json --config.dev_file=dev-v1.1.json).
  tfds: TFDS squad/v1.1 or squad/v2.0 (`tfds_data_dir` is TFDS's data_dir).
Add `runlocal` (`:version=1.1,runlocal`) for a tiny laptop run.

Recipe (Google run_squad.py README): max_seq_length 384, doc_stride 128,
max_query_length 64, lr 3e-5, 2 epochs, warmup 10% then linear decay, weight
decay 0.01 (the README uses batch 12-24 for memory; we keep the paper's 32; the
paper itself used lr 5e-5, 3 epochs for v1.1 and 2 epochs, batch 48 for v2.0).
Decoding: n_best 20, max_answer_length 30; v2.0 predicts "" when null score -
best span score > null_score_diff_threshold (tune it with the best_f1_thresh
that evaluation reports; the README suggests -1.0 to -5.0 for BERT-large).

Expected dev results on the official data (BERT paper, Tables 2 and 3):
BERT-base v1.1 EM 80.8 / F1 88.5; BERT-large v1.1 EM 84.1 / F1 90.9; BERT-large
v2.0 EM 78.7 / F1 81.9. The dev_split setting trains on 8,582 questions (v2.0: 13,475)
instead of 87,599 and evaluates 1,988 (v2.0: 3,135), so expect several points less.
"""

from ml_collections import config_dict

from bert_jax.cli.config_args import parse_arg
from bert_jax.storage.shared_data import shared_data_dir
from bert_jax.train import train_config

SOURCES = ("dev_split", "json", "tfds")


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    args = parse_arg(arg, version="1.1", source="dev_split", runlocal=False)
    version = {"1": "1.1", "1.1": "1.1", "2": "2.0", "2.0": "2.0"}.get(args["version"])
    if version is None:
        raise ValueError(f"config arg version={args['version']!r}: 1.1 or 2.0")
    if args["source"] not in SOURCES:
        raise ValueError(f"config arg source={args['source']!r}: one of {', '.join(SOURCES)}")
    c = config_dict.ConfigDict()
    c.task = "squad"
    c.version = version

    # Data.
    c.train_file = ""
    c.dev_file = str(shared_data_dir() / "squad" / "dev-v1.1.json")
    c.test_file = ""  # a SQuAD JSON evaluated and predicted like dev (eval/<label>/test/)
    # False: JSON files; True: TFDS squad/v<version>; a string: that TFDS name.
    c.tfds = config_dict.FieldReference(args["source"] == "tfds", field_type=object)
    c.tfds_data_dir = ""
    c.article_split = "38/10" if args["source"] == "dev_split" else ""
    c.synthesize_v2 = version == "2.0" and args["source"] == "dev_split"
    c.unanswerable_fraction = 0.5
    c.max_train_examples = 0  # > 0: a fixed random subset of the training questions
    c.max_eval_examples = 0   # > 0: the same for the evaluated questions

    # Features and decoding.
    c.max_seq_length = 384
    c.doc_stride = 128
    c.max_query_length = 64
    c.length_buckets = (128, 192, 256, 320, 384)
    c.n_best_size = 20
    c.max_answer_length = 30
    c.null_score_diff_threshold = 0.0

    # Optimization.
    train_config.finetune_fields(c, lr=3e-5, num_epochs=2)

    if args["runlocal"]:
        c.max_seq_length = 128
        c.doc_stride = 64
        c.max_query_length = 32
        c.length_buckets = (64, 128)
        c.max_train_examples = 64
        c.max_eval_examples = 32
        c.global_batch_size = 8
        c.eval_batch_size = 16
        c.num_epochs = 1
    return c
