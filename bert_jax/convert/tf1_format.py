"""Google's TF1 BERT checkpoints (google-research/bert) <-> canonical names.

A TF1 model dir holds `bert_config.json`, `bert_model.ckpt.{index,data-*}` and
`vocab.txt`. Variable names are the ones google-research/bert creates:
`modeling.py` (`bert/embeddings/...`, `bert/encoder/layer_N/...`,
`bert/pooler/dense`), `run_pretraining.py` (`cls/predictions/...`,
`cls/seq_relationship/...`), `run_classifier.py` (root `output_weights`,
`output_bias`) and `run_squad.py` (`cls/squad/...`).

TF dense kernels are [in, out] like ours, so most tensors only reshape
(attention heads get their own axes here); the `output_weights` of the NSP,
classifier and SQuAD heads are [out, in] (`matmul(x, w, transpose_b=True)`)
and are transposed.

TensorFlow is an optional extra (`pip install bert_jax[tf]`); it is imported
only when a TF1 checkpoint is read or written.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
from flax import nnx

from bert_jax.cli import optional
from bert_jax.convert import bounds
from bert_jax.model.config import BertConfig
from bert_jax.model.heads import build_model

CKPT_NAME = "bert_model.ckpt"
CONFIG_NAME = "bert_config.json"

# Canonical regex -> TF1 variable name template.
_LN = {"scale": "gamma", "bias": "beta"}
_TABLE = [
    (r"bert/embeddings/(word|position|token_type)_embeddings/embedding",
     r"bert/embeddings/\1_embeddings"),
    (r"bert/embeddings/LayerNorm/(scale|bias)", r"bert/embeddings/LayerNorm/{ln}"),
    (r"bert/encoder/layers/(\d+)/(query|key|value)/(kernel|bias)",
     r"bert/encoder/layer_\1/attention/self/\2/\3"),
    (r"bert/encoder/layers/(\d+)/attention_output/(kernel|bias)",
     r"bert/encoder/layer_\1/attention/output/dense/\2"),
    (r"bert/encoder/layers/(\d+)/attention_LayerNorm/(scale|bias)",
     r"bert/encoder/layer_\1/attention/output/LayerNorm/{ln}"),
    (r"bert/encoder/layers/(\d+)/intermediate/(kernel|bias)",
     r"bert/encoder/layer_\1/intermediate/dense/\2"),
    (r"bert/encoder/layers/(\d+)/output/(kernel|bias)", r"bert/encoder/layer_\1/output/dense/\2"),
    (r"bert/encoder/layers/(\d+)/output_LayerNorm/(scale|bias)",
     r"bert/encoder/layer_\1/output/LayerNorm/{ln}"),
    (r"bert/pooler/dense/(kernel|bias)", r"bert/pooler/dense/\1"),
    (r"transform/(kernel|bias)", r"cls/predictions/transform/dense/\1"),
    (r"transform_LayerNorm/(scale|bias)", r"cls/predictions/transform/LayerNorm/{ln}"),
    (r"output_bias", "cls/predictions/output_bias"),
    (r"seq_relationship/kernel", "cls/seq_relationship/output_weights"),
    (r"seq_relationship/bias", "cls/seq_relationship/output_bias"),
    (r"classifier/kernel", "output_weights"),
    (r"classifier/bias", "output_bias"),
    (r"qa_outputs/kernel", "cls/squad/output_weights"),
    (r"qa_outputs/bias", "cls/squad/output_bias"),
]
_COMPILED = [(re.compile(f"^{pat}$"), tmpl) for pat, tmpl in _TABLE]

# Stored [out, in]: Google multiplies with transpose_b=True.
_TRANSPOSED = ("seq_relationship/kernel", "classifier/kernel", "qa_outputs/kernel")

# Optimizer state and step counters in checkpoints written during training
# (optimization.py's AdamWeightDecayOptimizer slots and global_step).
_OPTIMIZER = re.compile(r"(^|/)(adam_m|adam_v|global_step)$")


def _tf():
    """TensorFlow, or a one-line exit saying how to get it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    optional.require("tensorflow", "reading or writing a TF1 checkpoint")
    # optional (the `tf` extra): only TFDS / TF1 paths need TensorFlow
    import tensorflow as tf
    return tf


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def tf1_name(name: str) -> str:
    """Canonical parameter name -> Google's TF1 variable name."""
    for pat, tmpl in _COMPILED:
        m = pat.match(name)
        if m:
            return m.expand(tmpl.replace("{ln}", _LN.get(name.rsplit("/", 1)[-1], "")))
    raise KeyError(f"parameter {name} has no Google TF1 variable name")


def _tf1_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of canonical parameter `name` in Google's layout: 2-D kernels
    ([out, in] for the output_weights heads), flat biases."""
    shape = tuple(int(x) for x in shape)
    if name.endswith(_TRANSPOSED):
        return shape[::-1]
    if name.endswith("/kernel"):
        # attention_output is [heads, head_dim, hidden]: two input axes.
        n_in = 2 if name.endswith("attention_output/kernel") else 1
        return (int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:])))
    if name.endswith("/bias") or name == "output_bias":
        return (int(np.prod(shape)),)
    return shape


def to_tf1(name: str, value: np.ndarray) -> np.ndarray:
    """A canonical tensor in Google's layout, fp32."""
    value = np.asarray(value)
    value = value.T if name.endswith(_TRANSPOSED) else value.reshape(_tf1_shape(name, value.shape))
    return np.ascontiguousarray(value, dtype=np.float32)


def from_tf1(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A TF1 tensor (already checked to have `_tf1_shape(name, shape)`) in the
    canonical layout `shape`."""
    if name.endswith(_TRANSPOSED):
        return np.ascontiguousarray(value.T)
    return value.reshape(shape)


def _tf_head(tf_shapes: dict) -> tuple[str, int]:
    """(head, num_labels) a TF1 checkpoint's variables imply: run_squad's
    `cls/squad`, run_classifier's root `output_weights` [num_labels, hidden],
    else pretraining (bare encoders get fresh MLM/NSP heads)."""
    if "cls/squad/output_weights" in tf_shapes:
        return "span", 0
    if "output_weights" in tf_shapes:
        n = int(tf_shapes["output_weights"][0])
        return ("regression" if n == 1 else "classification"), n
    return "pretraining", 0


def source_head(flat: dict[str, np.ndarray]) -> str:
    """The head of canonical params read by `read_tf1_dir`."""
    if "qa_outputs/kernel" in flat:
        return "span"
    if "classifier/kernel" in flat:
        return "regression" if flat["classifier/kernel"].shape[-1] == 1 else "classification"
    return "pretraining"


def model_shapes(cfg: BertConfig, head: str, num_labels: int) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of the model for `head`, without allocating it."""

    model = nnx.eval_shape(lambda: build_model(cfg.replace(scan_layers=False), head, num_labels))
    return {"/".join(str(p) for p in path): tuple(var.value.shape)
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def checkpoint_prefix(path: pathlib.Path) -> pathlib.Path:
    """The checkpoint in a TF1 dir: Google's `bert_model.ckpt`, else the one the
    `checkpoint` state file names, else the newest `*.ckpt*.index` by step."""
    if (path / f"{CKPT_NAME}.index").exists():
        return path / CKPT_NAME
    state = path / "checkpoint"
    if state.exists():
        m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(), re.M)
        if m and (path / f"{pathlib.Path(m.group(1)).name}.index").exists():
            return path / pathlib.Path(m.group(1)).name
    cands = sorted(path.glob("*.ckpt*.index"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)] or [-1])
    if not cands:
        raise FileNotFoundError(f"{path}: no TF1 checkpoint ({CKPT_NAME}.index)")
    return cands[-1].with_suffix("")


def read_tf1_dir(path: str | os.PathLike) -> tuple[BertConfig, dict[str, np.ndarray], list[str]]:
    """(config, canonical params, unexpected TF variable names) from a Google TF1
    dir. Optimizer slots (adam_m/adam_v) and global_step are skipped silently;
    every other variable the model has no place for is returned as unexpected.
    A tensor whose shape disagrees with bert_config.json is a one-line error
    naming the checkpoint and the variable."""
    path = pathlib.Path(path)
    cfg = BertConfig.from_json_file(path / CONFIG_NAME)
    bounds.check_fields(cfg, path / CONFIG_NAME)
    prefix = checkpoint_prefix(path)
    tf = _tf()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as e:  # TF raises its own error types for corrupt bundles
        raise ValueError(f"{prefix}: cannot read TF1 checkpoint: {_first_line(e)}") from None
    tf_shapes = reader.get_variable_to_shape_map()
    head, num_labels = _tf_head(tf_shapes)
    shapes = model_shapes(cfg, head, num_labels)
    by_tf = {tf1_name(name): name for name in shapes}
    flat: dict[str, np.ndarray] = {}
    unexpected = []
    for tf_key in sorted(tf_shapes):
        if tf_key not in by_tf:
            if not _OPTIMIZER.search(tf_key):
                unexpected.append(tf_key)
            continue
        name = by_tf[tf_key]
        want = _tf1_shape(name, shapes[name])
        got = tuple(tf_shapes[tf_key])
        if got != want:
            hint = " (vocabulary size differs)" if "word_embeddings" in tf_key else ""
            raise ValueError(f"{prefix}: variable {tf_key} has shape {got}, {path / CONFIG_NAME} "
                             f"implies {want}{hint}")
        try:
            value = np.asarray(reader.get_tensor(tf_key))
        except Exception as e:  # a truncated or corrupt .data shard
            raise ValueError(f"{prefix}: cannot read variable {tf_key}: {_first_line(e)}") from None
        flat[name] = from_tf1(name, value, shapes[name])
    missing = [tf1_name(n) for n in shapes if n.startswith("bert/") and n not in flat
               and not n.startswith("bert/pooler/")]
    if missing:
        raise ValueError(f"{prefix}: missing encoder variables {missing[:3]} "
                         f"({len(missing)} in all; does {CONFIG_NAME} match the checkpoint?)")
    return cfg, flat, unexpected


def write_tf1_dir(out_dir: str | os.PathLike, cfg: BertConfig,
                  flat: dict[str, np.ndarray]) -> list[str]:
    """Write `bert_config.json` and `bert_model.ckpt` (fp32, Google's variable
    names, V2 bundle as tf.compat.v1.train.Saver writes it) into `out_dir`.
    Callers make this atomic by writing into a temp dir (convert does).
    A token-classification head goes out under run_classifier.py's names, as
    Google's code has no tagging head. Returns the TF variable names written."""
    out_dir = pathlib.Path(out_dir)
    try:
        names = {tf1_name(name): name for name in flat}
    except KeyError as e:
        raise ValueError(f"{out_dir}: {e.args[0]}") from None
    tf = _tf()
    variables = {key: tf.Variable(to_tf1(name, flat[name]), name=key, trainable=False)
                 for key, name in sorted(names.items())}
    # tf.compat.v1 Saver keyed by name writes exactly these names (a V1-style
    # name-based checkpoint Google's init_from_checkpoint reads); quiet its
    # deprecation notice.
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")
    try:
        saver = tf.compat.v1.train.Saver(var_list=variables)
        saver.save(None, str(out_dir / CKPT_NAME), write_meta_graph=False, write_state=False)
    finally:
        tf.get_logger().setLevel(level)
    tmp = out_dir / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(cfg.to_google_dict(), indent=2) + "\n")
    os.replace(tmp, out_dir / CONFIG_NAME)
    return sorted(names)
