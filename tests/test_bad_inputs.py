"""Bad input to every CLI, as a user types it: one line, the right exit code,
nothing destroyed, nothing half-written, nothing compiled.

Each case runs `python -m bert_jax.<module> ...` in a fresh process (forked
from a server that has imported JAX, tests/forked_cli.py; a real subprocess
where the case's environment needs one) and checks
  - the exit code (README "Exit codes": 1 bad input, 2 bad command line),
  - that stderr has no traceback and its last line is `error: ...` naming the
    culprit (a file and line, a config field, a flag),
  - what is left on disk (outputs absent, foreign files intact, no empty
    directories left behind).
Every case fails before anything compiles: that is the point, and it keeps
the matrix fast (the cost was Python's and JAX's imports, paid once now).

The inputs are real files: Google's uncased vocabulary, SST-2 / SQuAD /
CoNLL-2003 rows from the shared data with one defect each, a prepared corpus of
two ELTeC novels' opening lines, and tiny random models in our format.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import subprocess
import sys

import forked_cli
import pytest
from conftest import data_path
from test_finetune_common import save_tiny_model

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Paths of the good and bad inputs the cases use (built once)."""
    from bert_jax.convert import formats, hf_format, model_dir
    from bert_jax.data.prepare import prepare_corpus

    root = tmp_path_factory.mktemp("bad_inputs")
    vocab = data_path("vocab", "bert-base-uncased", "vocab.txt")
    w = {"root": root, "vocab": vocab,
         "cased_vocab": data_path("vocab", "bert-base-cased", "vocab.txt")}

    # Vocabularies: one lacking [MASK]; one of the same size in another order.
    lines = vocab.read_text(encoding="utf-8").splitlines()
    (root / "no_mask_vocab.txt").write_text("\n".join(t for t in lines if t != "[MASK]") + "\n")
    body = lines[104:]
    random.Random(0).shuffle(body)
    (root / "shuffled_vocab.txt").write_text("\n".join(lines[:104] + body) + "\n")

    # Models: pretraining (with MLM head), another vocabulary, a HF encoder only,
    # a classifier, and a model dir whose bert_jax.json is not JSON.
    w["tiny"] = save_tiny_model(root / "tiny")
    w["tiny_shuffled"] = root / "tiny_shuffled"
    shutil.copytree(w["tiny"], w["tiny_shuffled"])
    shutil.copyfile(root / "shuffled_vocab.txt", w["tiny_shuffled"] / "vocab.txt")
    cfg, _, flat = formats.load_flat(w["tiny"])
    enc = root / "encoder_hf"
    enc.mkdir()
    hf_format.write_hf_dir(enc, cfg, {k: v for k, v in flat.items() if k.startswith("bert/")},
                           "encoder")
    model_dir.copy_vocab(vocab, enc)
    w["encoder_hf"] = enc
    w["broken_meta"] = root / "broken_meta"
    shutil.copytree(w["tiny"], w["broken_meta"])
    (w["broken_meta"] / "bert_jax.json").write_text('{"format": "bert_jax",\n  "config": }\n')

    # Pretraining data: the opening lines of two novels.
    novels = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))[:2]
    raws = []
    for i, novel in enumerate(novels):
        raws.append(root / f"novel{i}.txt")
        raws[-1].write_text("\n".join(novel.read_text().splitlines()[:300]))
    prepare_corpus(",".join(f"raw:{p}" for p in raws), vocab, root / "prepared", num_workers=1,
                   progress=False)
    w["prepared"] = root / "prepared"
    (root / "bad_utf8.txt").write_bytes(b"A fine first line.\nSecond \xff\xfe line.\n")

    # GLUE SST-2: 40 real training rows; a dev file whose line 4 has label 7.
    sst = data_path("glue", "SST-2", "train.tsv").read_text().splitlines()
    dev = data_path("glue", "SST-2", "dev.tsv").read_text().splitlines()
    for name, dev_rows in (("glue", dev[:21]), ("glue_bad_dev", dev[:3] + [
            dev[3].rsplit("\t", 1)[0] + "\t7"] + dev[4:21])):
        (root / name / "SST-2").mkdir(parents=True)
        (root / name / "SST-2" / "train.tsv").write_text("\n".join(sst[:41]) + "\n")
        (root / name / "SST-2" / "dev.tsv").write_text("\n".join(dev_rows) + "\n")

    # SQuAD: the first article of dev-v1.1, and a copy whose answers all point
    # one character off; a file cut mid-way; a question without its text.
    squad = json.loads(data_path("squad", "dev-v1.1.json").read_text())
    article = squad["data"][0]
    article["paragraphs"] = article["paragraphs"][:3]
    (root / "squad_good.json").write_text(json.dumps({"version": "1.1", "data": [article]}))
    off = json.loads(json.dumps(article))
    for p in off["paragraphs"]:
        for qa in p["qas"]:
            for a in qa["answers"]:
                a["answer_start"] += 1
    (root / "squad_off.json").write_text(json.dumps({"version": "1.1", "data": [off]}))
    text = (root / "squad_good.json").read_text()
    (root / "squad_cut.json").write_text(text[: len(text) // 2])
    noq = json.loads(json.dumps(article))
    del noq["paragraphs"][1]["qas"][2]["question"]
    (root / "squad_noq.json").write_text(json.dumps({"version": "1.1", "data": [noq]}))

    # CoNLL: 60 real sentences; a train file with a misspelled type on line 9;
    # a dev file with a line of two columns.
    conll = data_path("conll2003", "eng.train").read_text().split("\n")[:600]
    (root / "conll_train.txt").write_text("\n".join(conll) + "\n")
    typo = list(conll)
    i = next(k for k, line in enumerate(typo) if line.endswith(" I-PER"))  # IOB1 file
    typo[i] = typo[i][: -len("I-PER")] + "I-PRE"
    w["typo_line"] = i + 1
    (root / "conll_typo.txt").write_text("\n".join(typo) + "\n")
    short = list(conll)
    j = next(k for k, line in enumerate(short) if k > 10 and line.count(" ") == 3)
    short[j] = " ".join(short[j].split(" ")[::3])
    w["short_line"] = j + 1
    (root / "conll_short.txt").write_text("\n".join(short) + "\n")

    # Files for predict / embed / fill_mask / plot.
    (root / "lines.txt").write_text("A first sentence.\n\nA third one.\n")
    (root / "good_lines.txt").write_text("A first sentence.\nA second one.\n")
    (root / "precious.npz").write_bytes(b"not ours")
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{oops\n'
                                                '{"step": 3, "loss": 1.0}\n')
    (root / "good_run").mkdir()
    (root / "good_run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\nsomeone's photo")
    (root / "a_file").write_text("a file, not a directory\n")
    _outputs_of_other_commands(w)
    return w


def _snapshot(path: pathlib.Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `path` (what must stay)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _outputs_of_other_commands(w) -> None:
    """Directories other commands wrote (through the same code paths), a
    project folder, untrusted HF dirs and files; their contents are
    snapshotted so the cases can check that nothing changed."""
    import numpy as np
    from safetensors.numpy import save_file

    from bert_jax.convert import formats as convert
    from bert_jax.convert import model_dir
    root = w["root"]
    # A fine-tuned classifier (the trainer's save path: save_model_dir with a task).
    save_tiny_model(root / "ft_model", head="classification", num_labels=2,
                    label_names=["0", "1"], task={"kind": "glue", "step": 3})
    # A pretraining workdir: bert_jax.json as train/pretrain_job.py writes it.
    pt = root / "pt_workdir"
    (pt / "checkpoints" / "5").mkdir(parents=True)
    cfg, _, _ = convert.load_flat(w["tiny"])
    model_dir.write_meta(pt, cfg, "pretraining", task={"kind": "pretraining"},
                         do_lower_case=True)
    (pt / "metrics.jsonl").write_text('{"step": 5, "loss": 9.0}\n')
    (pt / "checkpoints" / "5" / "state").write_bytes(b"weeks of TPU time")
    convert.convert(w["tiny"], root / "conv", "hf")  # a conversion
    proj = root / "proj"  # someone's project folder (`--out=.` run from it)
    (proj / "src").mkdir(parents=True)
    (proj / "README.md").write_text("my project\n")
    (proj / "src" / "main.py").write_text("print('hi')\n")
    # Untrusted HF dirs: sizes out of range; BERT-large sizes over a
    # checkpoint of one number; a config.json nested 100000 deep.
    for name in ("huge_hf", "big_hf", "deep_hf"):
        shutil.copytree(w["encoder_hf"], root / name)
    hf_cfg = json.loads((w["encoder_hf"] / "config.json").read_text())
    (root / "huge_hf" / "config.json").write_text(json.dumps(dict(hf_cfg, hidden_size=10**7)))
    (root / "big_hf" / "config.json").write_text(json.dumps(dict(
        hf_cfg, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096)))
    save_file({"x": np.zeros(1, np.float32)}, str(root / "big_hf" / "model.safetensors"))
    (root / "deep_hf" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "squad_deep.json").write_text('{"data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    # A GCS emulator --root whose data/ holds a file the emulator did not write.
    (root / "gcsroot" / "data" / "bkt").mkdir(parents=True)
    (root / "gcsroot" / "data" / "bkt" / "my.txt").write_text("mine\n")
    w["snap"] = {name: _snapshot(root / name) for name in (
        "ft_model", "pt_workdir", "conv", "proj", "gcsroot")}


PRETRAIN = ["--config=configs/pretrain/bert_tiny.py:runlocal",
            "--config.data.prepared_dir={prepared}", "--config.data.max_seq_length=32",
            "--config.data.max_predictions_per_seq=5", "--config.model.hidden_size=32",
            "--config.model.num_layers=1", "--config.model.num_heads=2",
            "--config.model.intermediate_size=64", "--config.global_batch_size=16"]
GLUE = ["--config=configs/finetune/glue.py:task=sst2,runlocal",
        "--config.init_checkpoint={tiny}", "--config.data_dir={root}/glue"]
SQUAD = ["--config=configs/finetune/squad.py:source=json,runlocal",
         "--config.init_checkpoint={tiny}", "--config.train_file={root}/squad_good.json",
         "--config.dev_file={root}/squad_good.json"]
CONLL = ["--config=configs/finetune/conll2003.py:runlocal", "--config.init_checkpoint={tiny}",
         "--config.train_file={root}/conll_train.txt",
         "--config.dev_file={root}/conll_train.txt"]


def case(name, module, args, rc, culprit, left=None, env=None, out=None, before=None):
    """`left`: check(ws) of what is on disk after; `out`: text stdout must hold;
    `before`: setup(ws) run first (files the case needs)."""
    return pytest.param(dict(name=name, module=module, args=args, rc=rc, culprit=culprit,
                             left=left, env=env or {}, out=out, before=before), id=name)


def absent(rel):
    return lambda w: not (w["root"] / rel).exists()


def intact(rel, content):
    return lambda w: (w["root"] / rel).read_bytes() == content


def holds_only(rel, names):
    return lambda w: sorted(p.name for p in (w["root"] / rel).iterdir()) == sorted(names)


def foreign_dir(rel):
    def make(w):
        (w["root"] / rel).mkdir(exist_ok=True)
        (w["root"] / rel / "notes.txt").write_text("mine\n")
    return make


def unchanged(rel):
    """Every file under `rel` as it was when the workspace was built."""
    return lambda w: _snapshot(w["root"] / rel) == w["snap"][rel]


def file_at(rel, content=b"mine\n"):
    return lambda w: (w["root"] / rel).write_bytes(content)


def no_tf(w):
    """A site dir whose sitecustomize makes `import tensorflow` fail, as on a
    machine without the `tf` extra."""
    site = w["root"] / "no_tf"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tensorflow'] = None\n"
        "sys.modules['tensorflow_datasets'] = None\n")


NOT_EMPTY = "is not empty and is not this command's earlier output"

CASES = [
    # ---- vocabulary training
    case("vocab_missing_corpus", "bert_jax.data.vocab",
         ["--corpus=raw:{root}/nope.txt", "--out={root}/v1.txt"], 1, "nope.txt: no such file",
         absent("v1.txt")),
    case("vocab_size_too_small", "bert_jax.data.vocab",
         ["--corpus=raw:{root}/novel0.txt", "--vocab_size=3", "--out={root}/v2.txt"], 1,
         "vocab_size=3", absent("v2.txt")),
    case("vocab_out_exists", "bert_jax.data.vocab",
         ["--corpus=raw:{root}/novel0.txt", "--out={root}/v3.txt"], 1,
         "v3.txt: the --out file exists", intact("v3.txt", b"mine\n"), before=file_at("v3.txt")),
    case("vocab_out_is_dir", "bert_jax.data.vocab",
         ["--corpus=raw:{root}/novel0.txt", "--out={root}/good_run"], 1,
         "good_run: the --out file is a directory"),
    case("vocab_empty_corpus", "bert_jax.data.vocab",
         ["--corpus=raw:{root}/blank.txt", "--out={root}/v5.txt"], 1,
         "--corpus=raw:{root}/blank.txt: yields no text", absent("v5.txt"),
         before=file_at("blank.txt", b"\n \n\n")),
    case("vocab_unknown_flag", "bert_jax.data.vocab",
         ["--corpus=raw:{root}/novel0.txt", "--out={root}/v4.txt", "--vocab_sise=100"], 2,
         "vocab_sise", absent("v4.txt")),
    # ---- prepare
    case("prepare_missing_vocab", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/novel0.txt", "--vocab={root}/nope_vocab.txt", "--out={root}/p1"],
         1, "nope_vocab.txt", absent("p1")),
    case("prepare_vocab_without_mask", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/novel0.txt", "--vocab={root}/no_mask_vocab.txt",
          "--out={root}/p2"], 1, "no_mask_vocab.txt: vocabulary lacks special token(s) [MASK]",
         absent("p2")),
    case("prepare_bad_utf8", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/bad_utf8.txt", "--vocab={vocab}", "--out={root}/p3",
          "--num_workers=1"], 1, "bad_utf8.txt:2", absent("p3")),
    case("prepare_out_foreign", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/novel0.txt", "--vocab={vocab}", "--out={root}/p4"], 1,
         NOT_EMPTY, holds_only("p4", ["notes.txt"]), before=foreign_dir("p4")),
    case("prepare_out_is_file", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/novel0.txt", "--vocab={vocab}", "--out={root}/a_file"], 1,
         "a_file: the --out directory is a file", intact("a_file", b"a file, not a directory\n")),
    case("prepare_out_holds_corpus", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/novel0.txt", "--vocab={vocab}", "--out={root}"], 1,
         "contains the source"),
    case("prepare_empty_corpus", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/empty.txt", "--vocab={vocab}", "--out={root}/p6"], 1,
         "--corpus=raw:{root}/empty.txt: yields no documents", absent("p6"),
         before=file_at("empty.txt", b"")),
    case("prepare_blank_bert_corpus", "bert_jax.data.prepare",
         ["--corpus=bert:{root}/blank2.txt", "--vocab={vocab}", "--out={root}/p7"], 1,
         "--corpus=bert:{root}/blank2.txt: yields no documents", absent("p7"),
         before=file_at("blank2.txt", b"\n\n   \n")),
    case("prepare_bad_policy", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/novel0.txt", "--vocab={vocab}", "--out={root}/p5",
          "--encoding_errors=ignore"], 2, "encoding_errors", absent("p5")),
    # ---- pretraining
    case("pretrain_unknown_field", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w1", "--config.train.num_steps=3"], 2,
         "--config.train.num_steps: unknown config field: config has no field 'train'",
         absent("w1")),
    case("pretrain_unknown_nested_field", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w2", "--config.optim.lrr=3"], 2,
         "config.optim has no field 'lrr' (fields: b1, b2,", absent("w2")),
    case("pretrain_bad_value", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w3", "--config.num_train_steps=many"], 2,
         "--config.num_train_steps=many", absent("w3")),
    case("pretrain_missing_config", "bert_jax.pretrain",
         ["--config=configs/pretrain/bert_tinyy.py", "--workdir={root}/w4"], 2,
         "--config=configs/pretrain/bert_tinyy.py: no such file", absent("w4")),
    # with an override, absl fails inside the override's parse, not at the file
    case("pretrain_missing_config_with_override", "bert_jax.pretrain",
         ["--config=configs/pretrain/bert_tinyy.py", "--config.num_train_steps=3",
          "--workdir={root}/w4b"], 2,
         "--config=configs/pretrain/bert_tinyy.py: no such file", absent("w4b")),
    case("pretrain_negative_lr", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w5", "--config.optim.lr=-0.001"], 1,
         "config.optim.lr=-0.001: expected a learning rate > 0", absent("w5")),
    case("pretrain_zero_steps", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w6", "--config.num_train_steps=0"], 1,
         "config.num_train_steps=0: expected >= 1", absent("w6")),
    case("pretrain_seq_beyond_positions", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w7", "--config.data.max_seq_length=1024"], 1,
         "config.data.max_seq_length=1024 exceeds config.model.max_position_embeddings=512",
         absent("w7")),
    case("pretrain_missing_data", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w8", "--config.data.prepared_dir={root}/nope_data"], 1,
         "nope_data", absent("w8")),
    case("pretrain_workdir_is_file", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/a_file"], 1, "a_file: the workdir is a file",
         intact("a_file", b"a file, not a directory\n")),
    case("pretrain_workdir_under_file", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/a_file/w"], 1, "a_file is a file, not a directory"),
    case("pretrain_workdir_foreign", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w9"], 1, NOT_EMPTY, holds_only("w9", ["notes.txt"]),
         before=foreign_dir("w9")),
    case("pretrain_workdir_is_finetune_model", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={tiny}"], 1, NOT_EMPTY,
         holds_only("tiny", ["bert_jax.json", "params", "vocab.txt"])),
    case("pretrain_init_from_shapes", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w10", "--config.init_from={tiny}"], 1,
         "parameter bert/embeddings/position_embeddings/embedding has shape (128, 32), this "
         "model's is (512, 32)", absent("w10")),
    case("pretrain_init_from_other_vocab", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w11", "--config.init_from={tiny_shuffled}",
          "--config.model.max_position_embeddings=128"], 1,
         "tiny_shuffled: trained with the vocabulary", absent("w11")),
    case("pretrain_accum_not_dividing", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w12", "--config.grad_accum_steps=3"], 1,
         "global_batch_size=16 is not a multiple of grad_accum_steps=3", absent("w12")),
    case("pretrain_batch_not_dividing_devices", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w14", "--config.global_batch_size=6"], 1,
         "config.global_batch_size=6: expected a multiple of 4, the batch shards of mesh "
         "(data 4 x fsdp 1) on 4 devices", absent("w14"),
         env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}),
    case("pretrain_bad_mlm_head", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w13", "--config.model.mlm_head=sparse"], 1,
         "config.model.mlm_head='sparse': expected gathered or dense", absent("w13")),
    # ---- fine-tuning: GLUE
    case("glue_missing_data", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g1", "--config.data_dir={root}/nope_glue"], 1,
         "nope_glue/SST-2/train.tsv: missing GLUE SST-2 train file", absent("g1")),
    case("glue_bad_dev_label_before_training", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g2", "--config.data_dir={root}/glue_bad_dev"], 1,
         "glue_bad_dev/SST-2/dev.tsv:4: unknown label '7' for sst2 (expected one of 0, 1)",
         absent("g2")),
    case("glue_zero_epochs", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g3", "--config.num_epochs=0"], 1,
         "config.num_epochs=0: expected an integer >= 1", absent("g3")),
    case("glue_negative_lr", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g4", "--config.optim.lr=-2e-05"], 1,
         "config.optim.lr=-2e-05: expected a learning rate > 0", absent("g4")),
    # Fine-tuning fields renamed to pretraining's names: the old name says the new.
    case("glue_old_learning_rate", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g4r", "--config.learning_rate=2e-05"], 2,
         "--config.learning_rate: renamed to --config.optim.lr", absent("g4r")),
    case("glue_old_batch_size", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g4b", "--config.batch_size=8"], 2,
         "--config.batch_size: renamed to --config.global_batch_size", absent("g4b")),
    case("glue_tfds_without_tensorflow", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g5", "--config.tfds=True"], 1,
         "config.tfds=True reads TFDS, which needs tensorflow and tensorflow_datasets",
         absent("g5"), env={"PYTHONPATH": "{root}/no_tf:" + str(REPO)}, before=no_tf),
    case("glue_batch_not_dividing_devices", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g6", "--config.global_batch_size=6"], 1,
         "config.global_batch_size=6: expected a multiple of 4", absent("g6"),
         env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}),
    case("glue_seq_beyond_positions", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g7", "--config.max_seq_length=256",
          "--config.length_buckets=(64,256)"], 1,
         "config.max_seq_length: sequences of 256 tokens, but", absent("g7")),
    case("glue_missing_init_checkpoint", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g8", "--config.init_checkpoint={root}/nope_ckpt"], 1,
         "config.init_checkpoint=", absent("g8")),
    case("glue_init_checkpoint_broken_meta", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g9", "--config.init_checkpoint={broken_meta}"], 1,
         "broken_meta/bert_jax.json: invalid JSON at line 2", absent("g9")),
    case("glue_workdir_is_pretraining_source", "bert_jax.finetune",
         [*GLUE, "--workdir={tiny}"], 1, "the workdir is the source",
         holds_only("tiny", ["bert_jax.json", "params", "vocab.txt"])),
    case("glue_workdir_foreign", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/g10"], 1, NOT_EMPTY, holds_only("g10", ["notes.txt"]),
         before=foreign_dir("g10")),
    # ---- fine-tuning: SQuAD
    case("squad_cut_json", "bert_jax.finetune",
         [*SQUAD, "--workdir={root}/s1", "--config.dev_file={root}/squad_cut.json"], 1,
         "squad_cut.json: malformed JSON at line 1", absent("s1")),
    case("squad_question_missing", "bert_jax.finetune",
         [*SQUAD, "--workdir={root}/s2", "--config.dev_file={root}/squad_noq.json"], 1,
         "squad_noq.json: data[0].paragraphs[1].qas[2]: missing 'question'", absent("s2")),
    case("squad_no_answer_matches", "bert_jax.finetune",
         [*SQUAD, "--workdir={root}/s3", "--config.train_file={root}/squad_off.json"], 1,
         "squad_v1.1: no training examples (train: 64 examples, 64 skipped "
         "(answer_start_mismatch 64", absent("s3")),
    # ---- fine-tuning: CoNLL-2003
    case("conll_unknown_entity_type", "bert_jax.finetune",
         [*CONLL, "--workdir={root}/c1", "--config.train_file={root}/conll_typo.txt"], 1,
         "conll_typo.txt:{typo_line}: tag 'I-PRE' has entity type 'PRE', not one of "
         "config.entity_types (LOC, MISC, ORG, PER)", absent("c1")),
    case("conll_bad_dev_line_before_training", "bert_jax.finetune",
         [*CONLL, "--workdir={root}/c2", "--config.dev_file={root}/conll_short.txt"], 1,
         "conll_short.txt:{short_line}: 2 columns where line", absent("c2")),
    case("conll_missing_train_file", "bert_jax.finetune",
         [*CONLL, "--workdir={root}/c3", "--config.train_file={root}/nope.conll"], 1,
         "nope.conll", absent("c3")),
    # ---- convert
    case("convert_dst_not_empty", "bert_jax.convert", ["{tiny}", "{root}/x1", "--to=hf"], 1,
         "x1: the destination " + NOT_EMPTY, holds_only("x1", ["notes.txt"]),
         before=foreign_dir("x1")),
    case("convert_dst_inside_src", "bert_jax.convert", ["{tiny}", "{tiny}/hf", "--to=hf"], 1,
         "the destination lies inside the source",
         holds_only("tiny", ["bert_jax.json", "params", "vocab.txt"])),
    case("convert_dst_is_src", "bert_jax.convert", ["{tiny}", "{tiny}", "--to=bert_jax"], 1,
         "the destination is the source",
         holds_only("tiny", ["bert_jax.json", "params", "vocab.txt"])),
    case("convert_src_missing", "bert_jax.convert", ["{root}/nope_src", "{root}/x2"], 1,
         "nope_src: no such checkpoint", absent("x2")),
    case("convert_src_not_a_checkpoint", "bert_jax.convert", ["{root}/run", "{root}/x3"], 1,
         "run: not a HF dir", absent("x3")),
    case("convert_broken_meta_json", "bert_jax.convert", ["{broken_meta}", "{root}/x4"], 1,
         "broken_meta/bert_jax.json: invalid JSON at line 2", absent("x4")),
    case("convert_bad_format", "bert_jax.convert", ["{tiny}", "{root}/x5", "--to=onnx"], 2,
         "--to", absent("x5")),
    # ---- predict
    case("predict_pretraining_checkpoint", "bert_jax.predict",
         ["--checkpoint={tiny}", "--input={root}/good_lines.txt"], 1,
         "a pretraining checkpoint has no task head"),
    case("predict_missing_input", "bert_jax.predict",
         ["--checkpoint={tiny}", "--input={root}/nope_input.txt"], 1,
         "nope_input.txt: no such input file"),
    case("predict_question_without_context", "bert_jax.predict",
         ["--checkpoint={tiny}", "--question=Who?"], 1, "--question needs a non-empty --context"),
    # ---- embed
    case("embed_output_foreign", "bert_jax.embed",
         ["--checkpoint={tiny}", "--input={root}/good_lines.txt", "--output={root}/precious.npz"],
         1, "precious.npz: the --output file exists", intact("precious.npz", b"not ours")),
    case("embed_other_vocab", "bert_jax.embed",
         ["--checkpoint={tiny}", "--input={root}/good_lines.txt", "--output={root}/e1.npz",
          "--vocab={root}/shuffled_vocab.txt"], 1,
         "--vocab={root}/shuffled_vocab.txt: not the vocabulary the checkpoint was trained with",
         absent("e1.npz")),
    case("embed_empty_line", "bert_jax.embed",
         ["--checkpoint={tiny}", "--input={root}/lines.txt", "--output={root}/e2.npz"], 1,
         "lines.txt:2: empty line", absent("e2.npz")),
    case("embed_zero_batch", "bert_jax.embed",
         ["--checkpoint={tiny}", "--input={root}/good_lines.txt", "--output={root}/e3.npz",
          "--batch_size=0"], 1, "--batch_size=0: expected >= 1", absent("e3.npz")),
    case("embed_not_a_checkpoint", "bert_jax.embed",
         ["--checkpoint={root}/good_run", "--vocab={vocab}", "--input={root}/good_lines.txt",
          "--output={root}/e4.npz"], 1, "good_run: not a HF dir", absent("e4.npz")),
    # ---- fill-mask
    case("fill_mask_no_mask", "bert_jax.fill_mask",
         ["--checkpoint={tiny}", "The cat sat on the mat."], 1,
         "text 1 ('The cat sat on the mat.') has no [MASK] token"),
    case("fill_mask_mask_beyond_truncation", "bert_jax.fill_mask",
         ["--checkpoint={tiny}", "word " * 200 + "[MASK]"], 1,
         "its [MASK] is token 202 of 203, beyond the 128 the model reads"),
    case("fill_mask_encoder_only", "bert_jax.fill_mask",
         ["--checkpoint={encoder_hf}", "a [MASK] b"], 1,
         "no MLM head to fill masks with (missing transform/kernel)"),
    # ---- plot
    case("plot_missing_metrics", "bert_jax.plot", ["{root}/nope_run"], 1,
         "nope_run/metrics.jsonl: no such file"),
    case("plot_bad_json_line", "bert_jax.plot", ["{root}/run", "--out={root}/r1.png"], 1,
         "run/metrics.jsonl:2: not a JSON object", absent("r1.png")),
    case("plot_out_foreign", "bert_jax.plot", ["{root}/good_run", "--out={root}/photo.png"], 1,
         "photo.png: the --out file exists",
         intact("photo.png", b"\x89PNG\r\n\x1a\nsomeone's photo")),
    # ---- outputs of other commands (issue 29): never replaced, --overwrite or not
    *[case(f"convert_into_finetuned_model{tag}", "bert_jax.convert",
           ["{tiny}", "{root}/ft_model", "--to=bert_jax", *extra], 1,
           "ft_model: the destination holds a fine-tuned model written by `finetune`",
           unchanged("ft_model")) for tag, extra in (("", []), ("_overwrite", ["--overwrite"]))],
    *[case(f"convert_into_pretraining_workdir{tag}", "bert_jax.convert",
           ["{tiny}", "{root}/pt_workdir", "--to=hf", *extra], 1,
           "pt_workdir: the destination holds a pretraining workdir written by `pretrain`",
           unchanged("pt_workdir")) for tag, extra in (("", []), ("_overwrite", ["--overwrite"]))],
    case("convert_overwrite_foreign_dir", "bert_jax.convert",
         ["{tiny}", "{root}/x6", "--to=hf", "--overwrite"], 1,
         "x6: the destination is not empty and holds files this command did not write "
         "(notes.txt); --overwrite replaces only an earlier output of this command",
         holds_only("x6", ["notes.txt"]), before=foreign_dir("x6")),
    case("prepare_overwrite_project_dir", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/novel0.txt", "--vocab={vocab}", "--out={root}/proj",
          "--overwrite"], 1,
         "proj: the --out directory is not empty and holds files this command did not write",
         unchanged("proj")),
    case("prepare_into_conversion", "bert_jax.data.prepare",
         ["--corpus=raw:{root}/novel0.txt", "--vocab={vocab}", "--out={root}/conv",
          "--overwrite"], 1, "conv: the --out directory holds a conversion written by `convert`",
         unchanged("conv")),
    case("pretrain_into_conversion", "bert_jax.pretrain", [*PRETRAIN, "--workdir={root}/conv"],
         1, "conv: the workdir holds a conversion written by `convert`", unchanged("conv")),
    case("pretrain_into_finetuned_model", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/ft_model"], 1,
         "ft_model: the workdir holds a fine-tuned model written by `finetune`",
         unchanged("ft_model")),
    case("finetune_into_pretraining_workdir", "bert_jax.finetune",
         [*CONLL, "--workdir={root}/pt_workdir"], 1,
         "pt_workdir: the workdir holds a pretraining workdir written by `pretrain`",
         unchanged("pt_workdir")),
    case("finetune_into_its_model_dir", "bert_jax.finetune",
         [*GLUE, "--workdir={root}/ft_model"], 1,
         "ft_model: the workdir holds a fine-tuned model written by `finetune`; `finetune` "
         "replaces only its own fine-tuning workdir", unchanged("ft_model")),
    case("aot_out_foreign", "bert_jax.aot",
         ["--config=configs/pretrain/bert_tiny.py", "--topology=v5e:2x2", "--out={root}/a_file"],
         2, "a_file: the --out file exists", intact("a_file", b"a file, not a directory\n")),
    case("gcs_emulator_root_foreign_file", "bert_jax.devtools.gcs_emulator",
         ["--root={root}/gcsroot", "--bucket=bkt"], 1,
         "gcsroot/data/bkt/my.txt: not an object this emulator wrote", unchanged("gcsroot")),
    # ---- untrusted sizes and JSON
    case("convert_config_out_of_range", "bert_jax.convert", ["{root}/huge_hf", "{root}/x7"], 1,
         "huge_hf/config.json: hidden_size=10000000 is out of range; expected 1..65536",
         absent("x7")),
    case("convert_config_beyond_weights", "bert_jax.convert", ["{root}/big_hf", "{root}/x8"],
         1, "big_hf: the config implies ", absent("x8"),
         out="parameters but the checkpoint holds 1; refusing to allocate"),
    case("convert_deep_json", "bert_jax.convert", ["{root}/deep_hf", "{root}/x9"], 1,
         "deep_hf/config.json: JSON nested too deeply", absent("x9")),
    case("squad_deep_json", "bert_jax.finetune",
         [*SQUAD, "--workdir={root}/s4", "--config.dev_file={root}/squad_deep.json"], 1,
         "squad_deep.json: JSON nested too deeply", absent("s4")),
    # ---- every file a config names is read or refused
    *[case(f"{task}_{field}_missing", "bert_jax.finetune",
           [*args, f"--workdir={{root}}/f_{task}_{field}",
            f"--config.{field}={{root}}/nope_{field}"], 1,
           f"config.{field}={{root}}/nope_{field}: no such file", absent(f"f_{task}_{field}"))
      for task, args in (("conll", CONLL), ("squad", SQUAD))
      for field in ("train_file", "dev_file", "test_file")],
    case("squad_train_file_unread_with_article_split", "bert_jax.finetune",
         ["--config=configs/finetune/squad.py:runlocal", "--config.init_checkpoint={tiny}",
          "--config.train_file={root}/squad_good.json", "--workdir={root}/s5"], 1,
         "config.train_file='{root}/squad_good.json' is not read with config.article_split",
         absent("s5")),
    case("conll_test_file_unread_with_tfds", "bert_jax.finetune",
         [*CONLL, "--workdir={root}/c5", "--config.tfds=True",
          "--config.test_file={root}/conll_train.txt"], 1,
         "config.test_file='{root}/conll_train.txt' is not read with config.tfds", absent("c5")),
    case("conll_tfds_data_dir_unread", "bert_jax.finetune",
         [*CONLL, "--workdir={root}/c6", "--config.tfds_data_dir={root}"], 1,
         "config.tfds_data_dir='{root}' is read only with config.tfds=True", absent("c6")),
    case("pretrain_missing_init_from", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w20", "--config.init_from={root}/nope_init"], 1,
         "config.init_from={root}/nope_init: no such checkpoint", absent("w20")),
    case("pretrain_missing_eval_data", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w21", "--config.eval_data.prepared_dir={root}/nope_eval"],
         1, "nope_eval", absent("w21")),
    case("pretrain_missing_vocab", "bert_jax.pretrain",
         [*PRETRAIN, "--workdir={root}/w22", "--config.data.vocab={root}/nope_vocab.txt"],
         1, "nope_vocab.txt", absent("w22")),
    case("plot_out_under_file", "bert_jax.plot",
         ["{root}/good_run", "--out={root}/a_file/c.png"], 1,
         "a_file is a file, not a directory"),
]


def _fmt(text: str, w: dict) -> str:
    # format_map looks up only the names in `text`: str() of every value would
    # render w["snap"] (34 MB of file snapshots) for each argument of each case.
    return text.format_map(w)


def _run(spec, w) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS="",
               TOKENIZERS_PARALLELISM="false", TF_CPP_MIN_LOG_LEVEL="3")
    env.update({k: _fmt(v, w) for k, v in spec["env"].items()})
    return forked_cli.run(spec["module"], [_fmt(a, w) for a in spec["args"]], env, str(REPO))


@pytest.fixture(scope="module")
def results(ws):
    """Every case's CompletedProcess, run concurrently (one per core): each
    case writes only its own paths, and import time dominates."""
    from concurrent.futures import ThreadPoolExecutor
    specs = [p.values[0] for p in CASES]
    for spec in specs:
        if spec["before"] is not None:
            spec["before"](ws)
    with ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 1)) as pool:
        procs = list(pool.map(lambda spec: _run(spec, ws), specs))
    return {spec["name"]: proc for spec, proc in zip(specs, procs)}


@pytest.mark.parametrize("spec", CASES)
def test_bad_input(ws, results, spec):
    proc = results[spec["name"]]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines, f"exit {proc.returncode}, no stderr"
    last = lines[-1]
    assert proc.returncode == spec["rc"], proc.stderr[-2000:]
    assert last.startswith("error: "), proc.stderr[-2000:]
    assert _fmt(spec["culprit"], ws) in last, last
    if spec["out"] is not None:
        assert spec["out"] in proc.stdout + proc.stderr, proc.stdout[-2000:]
    if spec["left"] is not None:
        assert spec["left"](ws), f"left on disk: {sorted(p.name for p in ws['root'].iterdir())}"


def test_matrix_size():
    assert len(CASES) >= 40


def test_convert_refuses_then_replaces_only_its_own(ws):
    """A directory holding someone's file as DST: refused with the file intact,
    with --overwrite too. A new DST gets a conversion (which reads back equal
    to the source and records that `convert` wrote it); a rerun into its own
    output needs no --overwrite, and a conversion into another format replaces
    it (a conversion replaces a conversion)."""
    import numpy as np

    from bert_jax.convert import formats as convert
    from bert_jax.storage import outputs
    dst = ws["root"] / "convert_target"
    dst.mkdir()
    (dst / "thesis.tex").write_text("years of work\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    run = lambda *extra, to="hf", out=dst: forked_cli.run(  # noqa: E731
        "bert_jax.convert", [str(ws["tiny"]), str(out), f"--to={to}", *extra], env, str(REPO))
    for extra in ((), ("--overwrite",)):
        proc = run(*extra)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(
            f"error: {dst}: the destination is not empty"), proc.stderr[-2000:]
        assert sorted(p.name for p in dst.iterdir()) == ["thesis.tex"]
        assert (dst / "thesis.tex").read_text() == "years of work\n"
    new = ws["root"] / "convert_new"
    proc = run(out=new)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in new.iterdir()) == [
        "bert_jax_output.json", "config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer_config.json", "vocab.txt"]
    assert outputs.written_by(new) == {"command": "convert", "kind": "conversion"}
    assert not [p for p in ws["root"].iterdir() if p.name.startswith(".convert_new")]
    _, _, ours = convert.read_any(ws["tiny"])
    _, _, back = convert.read_any(new)
    for k in ours:
        np.testing.assert_array_equal(back[k], ours[k], err_msg=k)
    assert run(out=new).returncode == 0  # its own earlier output
    proc = run(to="bert_jax", out=new)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in new.iterdir()) == ["bert_jax.json", "params", "vocab.txt"]
    assert json.loads((new / "bert_jax.json").read_text())["written_by"] == {
        "command": "convert", "kind": "conversion"}


def test_gz_corpus_is_streamed(tmp_path):
    """A .gz corpus is read one line at a time: documents come out before the
    reader meets a damaged end (read whole, nothing would; the damage is one
    line naming the file and line), and nothing asks to read the whole file."""
    import gzip

    from bert_jax.data import corpora
    docs = "".join(f"Sentence one of doc {i}.\nSentence two of doc {i}.\n\n"
                   for i in range(2000))
    data = gzip.compress(docs.encode())
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(data[: len(data) * 3 // 4])  # cut: the end cannot be decompressed
    sizes = []
    real_read = gzip.GzipFile.read

    def read(self, size=-1):
        sizes.append(size)
        return real_read(self, size)
    gen, _ = corpora.read_unit(corpora.Unit("bert", str(path)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gzip.GzipFile, "read", read)
        got = []
        with pytest.raises(corpora.CorpusError, match=f"{path}:[0-9]+: damaged gzip data"):
            for doc in gen:
                got.append(doc)
    assert len(got) > 1000
    assert got[0].sentences == ["Sentence one of doc 0.", "Sentence two of doc 0."]
    assert got[1000].source == f"{path}:{1000 * 3 + 1}"
    assert -1 not in sizes and None not in sizes  # never "read everything"


def test_bucket_root_is_never_a_destination(gcs, ws):
    """convert / prepare into gs://BUCKET or gs://BUCKET/ (no prefix): one line,
    with --overwrite too, and the bucket's objects stay."""
    from bert_jax.storage import paths
    keep = paths.join(gcs.bucket, "someones", "object.txt")
    paths.write_text(keep, "keep me")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    for args in (["bert_jax.convert", str(ws["tiny"]), gcs.bucket, "--to=hf", "--overwrite"],
                 ["bert_jax.convert", str(ws["tiny"]), gcs.bucket + "/"],
                 ["bert_jax.data.prepare", f"--corpus=raw:{ws['root']}/novel0.txt",
                  f"--vocab={ws['vocab']}", f"--out={gcs.bucket}", "--overwrite"]):
        proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and "is a bucket root, which is never replaced" in last, \
            proc.stderr[-2000:]
        assert paths.read_text(keep) == "keep me"


# ---------------------------------------------------------------- reruns

def snapshot(root) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes): a refused rerun must
    leave it equal."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _sha16(path) -> str:
    import hashlib
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]


# Runs that train: LLVM at -O0 and a compilation cache shared by them (the
# resumed run compiles what the first one did).
TRAIN_ENV = {"XLA_FLAGS": "--xla_backend_optimization_level=0",
             "JAX_COMPILATION_CACHE_DIR": "{root}/jax_cache",
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="module")
def reruns(ws):
    """A 2-step pretraining run (checkpoints 1 and 2) and a one-epoch SST-2
    fine-tuning run whose export is undone (as by a crash after its last
    checkpoint), plus what the reruns change: a corpus prepared with the cased
    vocabulary, one of other text, a wider model, SST-2 with other training rows."""
    from bert_jax.data.prepare import prepare_corpus
    root = ws["root"]
    novels = [f"raw:{root}/novel{i}.txt" for i in range(2)]
    prepare_corpus(",".join(novels), ws["cased_vocab"], root / "prepared_cased",
                   num_workers=1, progress=False)
    halves = []
    for i in range(2):  # other text: the first half of each novel's lines
        halves.append(root / f"half{i}.txt")
        halves[-1].write_text("\n".join(ws_lines(root / f"novel{i}.txt")[:150]))
    prepare_corpus(",".join(f"raw:{p}" for p in halves), ws["vocab"], root / "prepared_other",
                   num_workers=1, progress=False)
    save_tiny_model(root / "tiny_wide", hidden_size=64)
    sst = data_path("glue", "SST-2", "train.tsv").read_text().splitlines()
    (root / "glue_other" / "SST-2").mkdir(parents=True)
    (root / "glue_other" / "SST-2" / "train.tsv").write_text("\n".join(sst[:1] + sst[41:81])
                                                            + "\n")
    shutil.copyfile(root / "glue" / "SST-2" / "dev.tsv", root / "glue_other" / "SST-2" / "dev.tsv")
    for module, args in (
            ("bert_jax.pretrain", [*PRETRAIN, "--workdir={root}/pre_run",
                                   "--config.num_train_steps=2", "--config.checkpoint.every=1",
                                   "--config.log_every=1"]),
            ("bert_jax.finetune", [*GLUE, "--workdir={root}/ft_run", "--config.num_epochs=1",
                                   "--config.checkpoint.every=1"])):
        proc = _run(dict(module=module, args=args, env=TRAIN_ENV), ws)
        assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(root / "ft_run" / "model")
    (root / "ft_run" / "summary.json").unlink()
    return ws


RERUNS = [
    # (name, module, args, workdir, culprits): every culprit is in the error line.
    ("pretrain_size_mini", "bert_jax.pretrain",
     ["--config=configs/pretrain/bert.py:size=mini,runlocal", *PRETRAIN[1:4],
      "--config.global_batch_size=16"], "pre_run",
     ["model.hidden_size 32 -> 256", "model.num_hidden_layers 1 -> 4",
      "model.intermediate_size 64 -> 1024", "new --workdir"]),
    ("pretrain_more_layers", "bert_jax.pretrain", [*PRETRAIN, "--config.model.num_layers=2"],
     "pre_run", ["model.num_hidden_layers 1 -> 2"]),
    ("pretrain_other_vocab", "bert_jax.pretrain",
     [*PRETRAIN, "--config.data.prepared_dir={root}/prepared_cased"], "pre_run",
     ["model.vocab_size {vocab_size} -> {cased_vocab_size}", "vocab ", "({root}/prepared/vocab.txt) -> ",
      "({root}/prepared_cased/vocab.txt)"]),
    ("pretrain_other_data", "bert_jax.pretrain",
     [*PRETRAIN, "--config.data.prepared_dir={root}/prepared_other"], "pre_run",
     ["data ", "({root}/prepared) -> ", "({root}/prepared_other)"]),
    ("pretrain_task_finetune", "bert_jax.finetune", GLUE, "pre_run",
     ["the workdir holds a pretraining workdir written by `pretrain`"]),
    ("finetune_wider_model", "bert_jax.finetune",
     [*GLUE, "--config.init_checkpoint={root}/tiny_wide"], "ft_run",
     ["model.hidden_size 32 -> 64"]),
    ("finetune_other_vocab", "bert_jax.finetune",
     [*GLUE, "--config.init_checkpoint={tiny_shuffled}"], "ft_run",
     ["vocab ", "({tiny}/vocab.txt) -> ", "({tiny_shuffled}/vocab.txt)"]),
    ("finetune_other_data", "bert_jax.finetune", [*GLUE, "--config.data_dir={root}/glue_other"],
     "ft_run", ["data.train_file sha256 {glue_sha}, {glue_size} bytes "
                "({root}/glue/SST-2/train.tsv) -> sha256 {other_sha}, {other_size} bytes "
                "({root}/glue_other/SST-2/train.tsv)"]),
    ("finetune_other_task", "bert_jax.finetune", CONLL, "ft_run",
     ["task glue:sst2 -> conll:conll2003", "model.head classification -> tagging"]),
]


@pytest.fixture(scope="module")
def rerun_results(reruns):
    """{name: (CompletedProcess, snapshot before, snapshot after)} of every
    rerun, each on its own copy of the run's workdir (so that they can run
    concurrently without meeting each other's lock)."""
    from concurrent.futures import ThreadPoolExecutor
    w, root = reruns, reruns["root"]
    specs, before = [], {}
    for name, module, args, workdir, _ in RERUNS:
        shutil.copytree(root / workdir, root / f"rerun_{name}", symlinks=True)
        before[name] = snapshot(root / f"rerun_{name}")
        specs.append(dict(module=module, args=[*args, f"--workdir={{root}}/rerun_{name}"],
                          env={}))
    with ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 1)) as pool:
        procs = list(pool.map(lambda spec: _run(spec, w), specs))
    return {name: (proc, before[name], snapshot(root / f"rerun_{name}"))
            for (name, *_), proc in zip(RERUNS, procs)}


@pytest.mark.parametrize("name,module,args,workdir,culprits", RERUNS,
                         ids=[r[0] for r in RERUNS])
def test_rerun_with_changed_config_is_refused(reruns, rerun_results, name, module, args,
                                              workdir, culprits):
    """One line naming what changed (old -> new) and the way out, exit 1, and
    every file of the workdir as it was (names and bytes)."""
    proc, before, after = rerun_results[name]
    root = reruns["root"]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    sizes = {"vocab_size": len(ws_lines(reruns["vocab"])),
             "cased_vocab_size": len(ws_lines(reruns["cased_vocab"])),
             "glue_sha": _sha16(root / "glue" / "SST-2" / "train.tsv"),
             "glue_size": (root / "glue" / "SST-2" / "train.tsv").stat().st_size,
             "other_sha": _sha16(root / "glue_other" / "SST-2" / "train.tsv"),
             "other_size": (root / "glue_other" / "SST-2" / "train.tsv").stat().st_size}
    for culprit in culprits:
        assert _fmt(culprit, {**reruns, **sizes}) in last, last
    assert "resumed" not in proc.stdout
    assert after.keys() == before.keys()
    assert after == before
    assert not (root / f"rerun_{name}" / "checkpoints_unreadable").exists()


def ws_lines(path) -> list[str]:
    return pathlib.Path(path).read_text(encoding="utf-8").splitlines()


def test_older_workdir_resumes_and_checkpoint_not_fitting_is_refused(reruns):
    """A workdir from before the identity record (no run_identity.json): with
    its config it resumes (and records it). With the bert_jax.json gone too
    (nothing recorded at all), a deeper model meets the checkpoint at restore:
    one line naming the parameter and both shapes, exit 1, nothing moved."""
    root = reruns["root"]
    old = root / "pre_old"
    shutil.copytree(root / "pre_run", old)
    (old / "run_identity.json").unlink()
    (old / "bert_jax.json").unlink()
    before = snapshot(old)
    proc = _run(dict(module="bert_jax.pretrain", env={}, args=[
        *PRETRAIN, "--config.model.num_layers=2", "--config.num_train_steps=3",
        "--workdir={root}/pre_old"]), reruns)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {old}: checkpoint step 2 does not fit this model: it has "
                           "no params/bert/encoder/layers/1/"), last
    assert "new --workdir" in last
    assert snapshot(old) == before
    assert not (old / "checkpoints_unreadable").exists()

    # Its own config: resumes at step 2, runs step 3, records what it is.
    proc = _run(dict(module="bert_jax.pretrain", env=TRAIN_ENV, args=[
        *PRETRAIN, "--config.num_train_steps=3", "--workdir={root}/pre_old"]), reruns)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {old} at step 2" in proc.stdout
    assert sorted(int(p.name) for p in (old / "checkpoints").iterdir()) == [1, 2, 3]
    assert (json.loads((old / "run_identity.json").read_text())
            == json.loads((root / "pre_run" / "run_identity.json").read_text()))
    steps = [json.loads(x)["step"] for x in (old / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


# ---------------------------------------------------------------- disk full

DISK_FULL = r"""
set -u
kib() { du -sk "$1" | cut -f1; }
mount -t tmpfs -o size=$(( $(kib "$ROOT/pre_run") + $(kib "$ROOT/ft_run") + 1024 ))k tmpfs \
    "$MNT" || exit 99
cp -a "$ROOT/pre_run" "$MNT/pre" && cp -a "$ROOT/ft_run" "$MNT/ft" || exit 97
# About 1 MiB free: a checkpoint (11 MiB), the model (4 MiB), four whole novels
# prepared (several MiB) do not fit.
run() { name=$1; shift; "$PY" -m "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"; echo $? > "$OUT/$name.rc"; }
run ckpt bert_jax.pretrain $PRETRAIN_ARGS --workdir="$MNT/pre"
run export bert_jax.finetune $GLUE_ARGS --workdir="$MNT/ft"
run prepare bert_jax.data.prepare --corpus="$CORPUS" \
    --vocab="$VOCAB" --out="$MNT/corpus" --num_workers=1
cp -a "$MNT" "$OUT/full"
mount -o remount,size=256m "$MNT" || exit 98
run ckpt_again bert_jax.pretrain $PRETRAIN_ARGS --workdir="$MNT/pre"
run export_again bert_jax.finetune $GLUE_ARGS --workdir="$MNT/ft"
cp -a "$MNT" "$OUT/space"
"""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full(reruns, tmp_path):
    """A tmpfs with 1 MiB free, in a private mount namespace: a checkpoint save,
    a model export and `data.prepare` each stop with one line naming the path
    and "no space left on device"; the earlier checkpoints are intact, nothing
    half-written is left; with space, the same commands continue from the last
    checkpoint (step 2 -> 3) and write the model."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    root = reruns["root"]
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    fmt = lambda args: " ".join(_fmt(a, reruns) for a in args)  # noqa: E731
    # Four novels in one file: one shard of several MiB, which cannot fit in
    # the ~1 MiB left however much the failed saves before it freed (two
    # novels made two shards, and one sometimes fit: a corpus kept to resume).
    four = tmp_path / "four_novels.txt"
    four.write_text("\n".join(p.read_text(encoding="utf-8") for p in sorted(
        data_path("corpus", "eltec-eng").glob("*.txt"))[:4]), encoding="utf-8")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               TOKENIZERS_PARALLELISM="false", TF_CPP_MIN_LOG_LEVEL="3",
               **{k: _fmt(v, reruns) for k, v in TRAIN_ENV.items()},
               CORPUS=f"raw:{four}", MNT=str(mnt), OUT=str(out), ROOT=str(root),
               PY=sys.executable, VOCAB=str(reruns["vocab"]),
               PRETRAIN_ARGS=fmt([*PRETRAIN, "--config.num_train_steps=3",
                                  "--config.checkpoint.every=1", "--config.log_every=1"]),
               GLUE_ARGS=fmt([*GLUE, "--config.num_epochs=1", "--config.checkpoint.every=1",
                              "--config.export=last"]))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", DISK_FULL],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode == 99 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: "
                    f"{proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = {n: ((out / f"{n}.rc").read_text().strip(), (out / f"{n}.out").read_text(),
               (out / f"{n}.err").read_text())
           for n in ("ckpt", "export", "prepare", "ckpt_again", "export_again")}

    def last_line(name):
        rc, _, err = res[name]
        assert rc == "1", err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        return err.strip().splitlines()[-1]

    full, space = out / "full", out / "space"
    # The checkpoint of step 3: one line; steps 1 and 2 as they were.
    assert last_line("ckpt") == (
        f"error: {mnt}/pre/checkpoints: saving checkpoint step 3 failed: no space left on "
        "device; checkpoints kept: [1, 2]; free space and rerun the same command to continue "
        "from step 2")
    ckpts = lambda d: sorted(p.name for p in (d / "pre" / "checkpoints").iterdir()  # noqa: E731
                             if p.name.isdigit())
    assert ckpts(full) == ["1", "2"]
    assert snapshot(full / "pre" / "checkpoints" / "2") == snapshot(
        root / "pre_run" / "checkpoints" / "2")
    # The model: one line; no model/ and no temp dir beside it; checkpoints kept.
    assert last_line("export").startswith(
        f"error: {mnt}/ft/model: writing the model of step ")
    assert "failed: no space left on device; the run's checkpoints are kept" in \
        last_line("export")
    assert not [p for p in (full / "ft").iterdir() if "model" in p.name]
    assert snapshot(full / "ft" / "checkpoints") == snapshot(root / "ft_run" / "checkpoints")
    # The corpus: one line, nothing left.
    assert last_line("prepare") == (f"error: {mnt}/corpus: writing the prepared corpus failed: "
                                    "no space left on device; free space and rerun")
    assert not (full / "corpus").exists()
    # With space: the same commands continue.
    rc, stdout, err = res["ckpt_again"]
    assert rc == "0", err[-3000:]
    assert f"resumed from {mnt}/pre at step 2" in stdout
    assert ckpts(space)[-1] == "3"
    steps = [json.loads(x)["step"] for x in (space / "pre" / "metrics.jsonl").read_text()
             .splitlines()]
    assert steps == [1, 2, 3]
    rc, stdout, err = res["export_again"]
    assert rc == "0", err[-3000:]
    assert (space / "ft" / "model" / "bert_jax.json").is_file()
