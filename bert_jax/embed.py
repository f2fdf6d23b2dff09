"""Feature extraction: token states and sentence vectors from any BERT checkpoint.

    python -m bert_jax.embed --checkpoint=DIR --input=sentences.txt --output=emb.npz \
        [--pooling=pooler|cls|mean] [--all_layers]

One example per input line; a tab separates sentence A and sentence B. The
.npz holds input_ids, attention_mask, last_hidden_state (N, T, H), pooled
(N, H) and, with --all_layers, hidden_states (L+1, N, T, H); T is the longest
example. pooling: `pooler` = BERT's dense+tanh on [CLS] (HF pooler_output),
`cls` = the raw [CLS] state, `mean` = mean over real tokens
(sentence-transformers style). A ModernBERT checkpoint has no pooler: `cls` or
`mean` of its final-normed states (HF ModernBertModel's last_hidden_state),
by default its config's classifier_pooling.

In Python:
    from bert_jax.embed import Embedder
    emb = Embedder("ckpt_dir")
    out = emb.encode(["A sentence.", "Another one."], pooling="mean")
    out["pooled"].shape  # (2, hidden_size)
"""

from __future__ import annotations

import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from tqdm import tqdm

from bert_jax.convert import formats
from bert_jax.convert.model_dir import checked_tokenizer
from bert_jax.storage import outputs, paths

POOLINGS = ("pooler", "cls", "mean")


def _bucket(n: int, multiple: int = 16) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _take(a: np.ndarray, idx: np.ndarray, rows: int, t: int) -> np.ndarray:
    """Rows `idx` of `a`, padded with zeros to [rows, t]."""
    x = np.zeros((rows, t), a.dtype)
    w = min(t, a.shape[1])
    x[:len(idx), :w] = a[idx, :w]
    return x


class Embedder:
    def __init__(self, checkpoint: str | os.PathLike, dtype: str = "float32",
                 vocab: str | os.PathLike | None = None, max_length: int = 512,
                 allow_vocab_mismatch: bool = False):
        self.tokenizer = checked_tokenizer(checkpoint, vocab, allow_vocab_mismatch)
        model, meta, _ = formats.load_model(checkpoint, head="encoder", dtype=dtype)
        if model.cfg.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"{self.tokenizer.vocab_file}: {self.tokenizer.vocab_size} tokens, "
                             f"the model {checkpoint} has {model.cfg.vocab_size}")
        self.model = model
        self.max_length = min(max_length, model.cfg.max_position_embeddings)
        graphdef, state = nnx.split(model)

        @jax.jit
        def forward(state, ids, types, mask):
            m = nnx.merge(graphdef, state)
            out = m(ids, types, mask, output_hidden_states=True)
            hs = jnp.stack(out["hidden_states"]).astype(jnp.float32)
            last = out["last_hidden_state"].astype(jnp.float32)
            # ModernBERT has no pooler; its pooled vector is made below (cls / mean).
            return last, out.get("pooled", last[:, 0]).astype(jnp.float32), hs

        self._state = state
        self._forward = forward

    @property
    def default_pooling(self) -> str:
        cfg = self.model.cfg
        return cfg.classifier_pooling if cfg.modern else "pooler"

    def encode(self, texts: list[str], pairs: list[str | None] | None = None,
               pooling: str | None = None, all_layers: bool = False, batch_size: int = 32,
               progress: bool = False) -> dict[str, np.ndarray]:
        """pooling: None = the checkpoint's default (BERT: pooler; ModernBERT:
        its classifier_pooling)."""
        pooling = pooling or self.default_pooling
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
        if pooling == "pooler" and self.model.cfg.modern:
            raise ValueError("--pooling=pooler: a ModernBERT checkpoint has no pooler; use "
                             "--pooling=cls or --pooling=mean")
        encs = self.tokenizer.encode_batch(texts, pairs, max_length=self.max_length)
        n = len(encs)
        t_max = max((len(e) for e in encs), default=1)
        ids = np.zeros((n, t_max), np.int32)
        types = np.zeros((n, t_max), np.int32)
        mask = np.zeros((n, t_max), np.int32)
        for i, e in enumerate(encs):
            ids[i, :len(e)] = e.ids
            types[i, :len(e)] = e.type_ids
            mask[i, :len(e)] = 1
        h = self.model.cfg.hidden_size
        last = np.zeros((n, t_max, h), np.float32)
        pooled = np.zeros((n, h), np.float32)
        layers = self.model.cfg.num_hidden_layers + 1
        hidden = np.zeros((layers, n, t_max, h), np.float32) if all_layers else None
        # Sort by length so each batch pads little; pad to a multiple of 16 to bound
        # the number of compiled shapes.
        order = np.argsort([-len(e) for e in encs], kind="stable")
        starts = range(0, n, batch_size)
        for s in tqdm(starts, desc="embed", disable=not progress, unit="batch"):
            idx = order[s:s + batch_size]
            t = min(_bucket(int(mask[idx].sum(1).max())), t_max if t_max % 16 == 0 else
                    _bucket(t_max))
            b = len(idx)
            pad_b = batch_size if n > batch_size else b

            lh, pl, hs = jax.device_get(self._forward(
                self._state, *(_take(a, idx, pad_b, t) for a in (ids, types, mask))))
            w = min(t, t_max)
            last[idx, :w] = lh[:b, :w]
            if pooling == "pooler":
                pooled[idx] = pl[:b]
            if all_layers:
                hidden[:, idx, :w] = hs[:, :b, :w]
        if pooling == "cls":
            pooled = last[:, 0].copy()
        elif pooling == "mean":
            m = mask[..., None].astype(np.float32)
            pooled = (last * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        out = {"input_ids": ids, "attention_mask": mask, "last_hidden_state": last,
               "pooled": pooled}
        if all_layers:
            out["hidden_states"] = hidden
        return out


def _is_embeddings_file(path) -> bool:
    """An .npz this command wrote (rewriting it loses nothing)."""
    try:
        with zipfile.ZipFile(paths.local_copy(path)) as z:
            return {"pooled.npy", "last_hidden_state.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_lines(path: str | os.PathLike) -> tuple[list[str], list[str | None] | None]:
    texts, pairs = [], []
    with open(paths.local_copy(path), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                raise ValueError(f"{path}:{lineno}: empty line")
            a, sep, b = line.partition("\t")
            texts.append(a)
            pairs.append(b if sep else None)
    if not texts:
        raise ValueError(f"{path}: no input lines")
    return texts, (None if all(p is None for p in pairs) else pairs)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """CLI flags, defined only when run as a program: embed, predict and
    fill_mask share flag names and may be imported into one process."""
    flags.DEFINE_string("checkpoint", None, "Model dir, training workdir, HF dir or TF1 dir.")
    flags.DEFINE_string("input", None, "Text file: one example per line, tab separates a pair.")
    flags.DEFINE_string("output", None, "Output .npz path.")
    flags.DEFINE_enum("pooling", None, list(POOLINGS), "Sentence vector (default: pooler "
                      "for BERT, the checkpoint's classifier_pooling for ModernBERT).")
    flags.DEFINE_bool("all_layers", False, "Also write hidden_states (L+1, N, T, H).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
    flags.DEFINE_integer("batch_size", 32, "Examples per forward pass.")
    flags.DEFINE_integer("max_length", 512, "Truncate examples to this many tokens.")
    flags.DEFINE_string("vocab", None, "Vocabulary, if the checkpoint has none.")
    flags.DEFINE_bool("allow_vocab_mismatch", False, "Use --vocab even though the checkpoint "
                      "was trained with another vocabulary.")
    flags.DEFINE_bool("overwrite", False, "Replace an --output that is not an earlier "
                      "embeddings file.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore at INFO
    for name in ("checkpoint", "input", "output"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    if FLAGS.batch_size < 1:
        raise ValueError(f"--batch_size={FLAGS.batch_size}: expected >= 1")
    if FLAGS.max_length < 2:
        raise ValueError(f"--max_length={FLAGS.max_length}: expected >= 2 ([CLS] and [SEP])")
    if not paths.exists(FLAGS.checkpoint):
        raise FileNotFoundError(f"--checkpoint={FLAGS.checkpoint}: no such checkpoint")
    outputs.check_destination(FLAGS.output, kind="file", overwrite=FLAGS.overwrite,
                              is_own=_is_embeddings_file, what="--output file",
                              sources=[FLAGS.checkpoint, FLAGS.input])
    texts, pairs = read_lines(FLAGS.input)
    emb = Embedder(FLAGS.checkpoint, FLAGS.dtype, FLAGS.vocab, FLAGS.max_length,
                   FLAGS.allow_vocab_mismatch)
    out = emb.encode(texts, pairs, FLAGS.pooling, FLAGS.all_layers, FLAGS.batch_size,
                     progress=True)
    dst = FLAGS.output
    # A temp file renamed into place locally; one upload of the final object to gs://.
    outputs.write_file_atomic(dst, lambda tmp: np.savez(tmp, **out), suffix=".npz")
    print(f"wrote {len(texts)} examples to {dst}: " + ", ".join(
        f"{k} {v.shape}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    define_flags()
    from bert_jax import cli
    cli.run(main)
