"""Everything a fine-tuning run can check before it compiles anything.

`check_config` (values in range, TFDS available), `check_model_fit` (the
sequence lengths fit the checkpoint's position table, the batch splits over
the mesh) and `read_all_splits` (every train / dev / test file read, parsed
and featurized up front, so a bad dev line stops the run before training, not
after an epoch) raise one-line ValueErrors naming the config field, the file
and line, and the allowed values. `read_all_splits` also returns what was
skipped, by split and reason; the trainer prints it and writes it into
summary.json.
"""

from __future__ import annotations

from bert_jax.cli import optional
from bert_jax.finetune import task as tasks
from bert_jax.storage import paths, workdir_lock
from bert_jax.train import train_config

# Fine-tuning workdir entries (workdir itself and a sweep's lr*_seed*/ runs).
WORKDIR_ENTRIES = ("metrics.jsonl", "metrics.jsonl.tmp", "tb", "eval", "model", "best",
                   "checkpoints", "checkpoints_unreadable",
                   "summary.json", "summary.json.tmp", "test_predictions", "sweep_results.json",
                   "sweep_results.json.tmp", "curves.png", "run_identity.json")


def is_finetune_workdir(path) -> bool:
    for e in paths.listdir(path):
        if e in WORKDIR_ENTRIES or e == workdir_lock.LOCK_NAME:
            continue
        if e.startswith("lr") and "_seed" in e and paths.isdir(paths.join(path, e)):
            continue  # a sweep run
        if e.startswith((".model.", ".best.", ".summary.json")):
            continue  # temp siblings of an interrupted write
        return False
    return True


def _need(ok: bool, field: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config.{field}={value!r}: expected {allowed}")


def _tfds_on(config) -> bool:
    return config.get("tfds") not in (None, False, "", "false", "False", "0")


def check_files(config) -> None:
    """Every file a config names is read, or the config is refused: a path
    that does not exist, or a field the chosen source never reads (TFDS has
    its own splits; SQuAD's article_split trains on dev_file's articles) is
    one line naming the field. (GLUE's data_dir and init_checkpoint are
    checked where they are opened, before any compile, too.)"""
    tfds = _tfds_on(config)
    if config.get("tfds_data_dir") and not tfds:
        raise ValueError(f"config.tfds_data_dir={config.tfds_data_dir!r} is read only with "
                         "config.tfds=True; set config.tfds=True or unset it")
    unread = {"test_file": "with config.tfds (TFDS brings its own splits)"} if tfds else {}
    unread.update(tasks.get(config.get("task")).unread_files(config, tfds))
    for field in ("train_file", "dev_file", "test_file"):
        value = config.get(field)
        if not value:
            continue
        if field in unread:
            raise ValueError(f"config.{field}={value!r} is not read {unread[field]}")
        if tfds:
            continue  # conll's default train/dev files: TFDS is read instead
        if not paths.exists(value):
            raise FileNotFoundError(f"config.{field}={value}: no such file")
        if paths.isdir(value):
            raise ValueError(f"config.{field}={value}: a directory, not a file")


def check_config(config) -> None:
    """The task is registered; ranges of the fields every task has, the files
    it names, and TFDS where asked for."""
    tasks.get(config.get("task"))
    check_files(config)
    train_config.check_renamed(config)
    train_config.check_optim(config.optim)
    _need(isinstance(config.num_epochs, int) and config.num_epochs >= 1, "num_epochs",
          config.num_epochs, "an integer >= 1")

    def count(field, v, least):
        _need(isinstance(v, int) and not isinstance(v, bool) and v >= least, field, v,
              f"an integer >= {least}")
    for field in ("global_batch_size", "eval_batch_size", "max_seq_length", "log_every"):
        count(field, config.get(field), 1)
    count("eval_every", config.eval_every, 0)
    if config.get("packed_rows_per_step") is not None:
        count("packed_rows_per_step", config.packed_rows_per_step, 0)
    count("checkpoint.every", config.checkpoint.every, 1)
    count("checkpoint.keep", config.checkpoint.keep, 1)
    _need(config.export in ("best", "last"), "export", config.export, "best or last")
    buckets = tuple(config.get("length_buckets") or ())
    if buckets:
        _need(all(isinstance(b, int) and b >= 1 for b in buckets), "length_buckets", buckets,
              "positive lengths")
        _need(max(buckets) >= config.max_seq_length, "length_buckets", buckets,
              f"a largest bucket >= max_seq_length={config.max_seq_length}")
    tfds = config.get("tfds")
    if tfds not in (None, False, "", "false", "False", "0"):
        missing = [m for m in ("tensorflow", "tensorflow_datasets") if not optional.installed(m)]
        if missing:
            raise ValueError(f"config.tfds={tfds!r} reads TFDS, which needs "
                             f"{' and '.join(missing)} (not installed; pip install "
                             "'bert_jax[tf]'); or set config.tfds=False and read the files")


def check_model_fit(config, cfg) -> None:
    """The longest sequence the task makes must have a position embedding."""
    longest = max([config.max_seq_length, *tuple(config.get("length_buckets") or ())])
    if longest > cfg.max_position_embeddings:
        field = ("max_seq_length" if config.max_seq_length >= longest else "length_buckets")
        raise ValueError(f"config.{field}: sequences of {longest} tokens, but "
                         f"{config.init_checkpoint} has max_position_embeddings="
                         f"{cfg.max_position_embeddings}; expected <= "
                         f"{cfg.max_position_embeddings}")


def check_batch_split(config, mesh) -> None:
    """The batches must split evenly over the mesh's batch axes."""
    # Flax: the checks before a mesh exists (config, files) run before JAX loads
    from bert_jax.model import sharding
    shards = sharding.batch_shards(mesh)
    for field in ("global_batch_size", "eval_batch_size"):
        if config[field] % shards:
            raise ValueError(f"config.{field}={config[field]}: expected a multiple of "
                             f"{shards} (the batch is split over {shards} devices)")


def check_rows_split(rows: int, mesh) -> None:
    """Packed training rows per step (derived from global_batch_size) must split
    evenly over the mesh's batch axes too."""
    from bert_jax.model import sharding
    shards = sharding.batch_shards(mesh)
    if rows % shards:
        raise ValueError(f"config.packing: {rows} packed rows a step carry about "
                         f"global_batch_size examples, but the batch is split over {shards} "
                         f"devices; set config.packed_rows_per_step to a multiple of {shards}")


def read_all_splits(task) -> dict[str, dict]:
    """Read and featurize every split now; {split: {'examples', 'skipped',
    'reasons': {reason: count}}} of what the task left out or flagged."""
    test_splits = tuple(task.test_splits)
    splits = ["train", *task.eval_splits, *test_splits]
    report: dict[str, dict] = {}
    for split in dict.fromkeys(splits):
        try:
            task.features(split)
        except FileNotFoundError:
            if split in test_splits:
                continue  # test files are optional (no predictions then)
            raise
        rep = task.input_report(split)
        if rep is not None:
            report[split] = rep
    if task.num_train_examples() == 0:
        read = (" (" + format_report({"train": report["train"]}).removeprefix("input: ") + ")"
                if "train" in report else "")
        raise ValueError(f"{task.name}: no training examples{read}; check the train file and "
                         "config.max_train_examples")
    return report


def format_report(report: dict[str, dict]) -> str:
    lines = []
    for split, r in report.items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.get("reasons", {}).items()))
        lines.append(f"{split}: {r['examples']} examples, {r['skipped']} skipped"
                     + (f" ({reasons})" if reasons else ""))
    return "input: " + "; ".join(lines)
