r"""Fill-mask predictions from any checkpoint with an MLM head.

    python -m bert_jax.fill_mask --checkpoint=DIR "The cat sat on the [MASK]." \
        "More text with [MASK] in it." [--top_k=5]

DIR is a pretraining workdir (newest readable checkpoint), a bert_jax model dir,
a HF dir with BertForPreTraining / BertForMaskedLM / ModernBertForMaskedLM
weights or a Google TF1 dir. The model's MLM head (BERT: transform + tied
decoder + bias; ModernBERT: dense, activation, norm + tied decoder with its
optional bias) runs at every position, as HF's
`pipeline('fill-mask')` does, and each [MASK] gets a softmax over the whole
vocabulary in fp32. Prints, per text and per [MASK], the top-k tokens with
their probabilities.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from bert_jax.convert import formats, model_dir
from bert_jax.model.heads import restore_model
from bert_jax.storage import paths

# Parameters of the MLM head (canonical names); a checkpoint without them has
# nothing to predict with.
MLM_HEAD = ("transform/kernel", "transform/bias", "transform_LayerNorm/scale",
            "transform_LayerNorm/bias", "output_bias")


def mlm_head_params(cfg) -> tuple[str, ...]:
    """The canonical names of `cfg`'s MLM head (ModernBERT's has no biases
    unless its config asks for them)."""
    if not cfg.modern:
        return MLM_HEAD
    names = ["head/dense/kernel", "head/norm/scale"]
    names += ["head/dense/bias"] if cfg.classifier_bias else []
    names += ["head/norm/bias"] if cfg.norm_bias else []
    return tuple(names + (["output_bias"] if cfg.decoder_bias else []))


def load(checkpoint: str | os.PathLike):
    """(BertForPreTraining with the checkpoint's weights, tokenizer).

    Raises ValueError when the checkpoint has no trained MLM head (a fine-tuned
    classifier, a bare encoder)."""

    report: list[str] = []
    # Missing parameters are not filled yet: a checkpoint without an MLM head
    # stops here, before a random head is built (and compiled).
    cfg, meta, flat = formats.read_any(checkpoint, head="pretraining", report=report,
                                       fill_missing=False)
    lacking = [k for k in mlm_head_params(cfg) if k not in flat]
    if lacking:
        raise ValueError(f"{checkpoint}: no MLM head to fill masks with (missing {lacking[0]})")
    fresh = [r.removeprefix("initialized fresh: ") for r in report
             if r.startswith("initialized fresh: ")]
    flat.update(formats.fresh_values(cfg, "pretraining", 0, 0, fresh))  # e.g. NSP of an MLM
    tokenizer = model_dir.tokenizer_of(checkpoint, meta)
    graphdef, state = restore_model(cfg, "pretraining", 0, flat, str(checkpoint))
    return nnx.merge(graphdef, state), tokenizer


def mask_probabilities(model, tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Per text, float32 [num_masks, vocab_size]: the MLM softmax at each [MASK].

    Raises ValueError naming the text that has no [MASK] (or loses it to
    truncation at max_position_embeddings)."""
    max_len = model.cfg.max_position_embeddings
    encs = [tokenizer.encode(t, max_length=max_len) for t in texts]
    for i, e in enumerate(encs):
        if tokenizer.mask_id not in e.ids:
            full = tokenizer.encode(texts[i]).ids
            if tokenizer.mask_id in full:
                raise ValueError(
                    f"text {i + 1} ({texts[i][:40]!r}): its [MASK] is token "
                    f"{full.index(tokenizer.mask_id) + 1} of {len(full)}, beyond the {max_len} "
                    "the model reads (max_position_embeddings); shorten the text")
            raise ValueError(f"text {i + 1} ({texts[i][:40]!r}) has no [MASK] token")
    T = max(len(e.ids) for e in encs)
    ids = np.full((len(encs), T), tokenizer.pad_id, np.int32)
    types = np.zeros((len(encs), T), np.int32)
    mask = np.zeros((len(encs), T), np.int32)
    for i, e in enumerate(encs):
        ids[i, :len(e.ids)], types[i, :len(e.ids)], mask[i, :len(e.ids)] = e.ids, e.type_ids, 1
    graphdef, params = nnx.split(model)
    probs = np.asarray(_softmax_at_every_position(graphdef, params, ids, types, mask))
    return [probs[i, ids[i] == tokenizer.mask_id] for i in range(len(encs))]


@functools.partial(jax.jit, static_argnums=0)
def _softmax_at_every_position(graphdef, params, ids, types, mask):
    # One compiled program (op-by-op eager dispatch would compile every op).
    logits = nnx.merge(graphdef, params)(ids, types, mask)["mlm_logits"]
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _shown(tokenizer, i: int) -> str:
    """A token as printed: byte-level BPE tokens decoded ('\u0120cat' -> ' cat',
    as HF's fill-mask pipeline shows token_str), others as in the vocabulary."""
    if tokenizer.kind == "bpe":
        return repr(tokenizer.decode([i], skip_special_tokens=False))
    return tokenizer.id_to_token(i)


def top_k(probs: np.ndarray, tokenizer, k: int) -> list[list[tuple[str, float]]]:
    """[num_masks, V] -> per mask the k most likely (token, probability), best first."""
    out = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:k]
        out.append([(_shown(tokenizer, int(i)), float(row[i])) for i in best])
    return out


def fill_mask(checkpoint: str | os.PathLike, texts: list[str],
              k: int = 5) -> list[list[list[tuple[str, float]]]]:
    """Per text, per [MASK], the top-k (token, probability)."""
    model, tokenizer = load(checkpoint)
    return [top_k(p, tokenizer, k) for p in mask_probabilities(model, tokenizer, texts)]


def render(text: str, predictions: list[list[tuple[str, float]]]) -> str:
    lines = [text]
    for j, cands in enumerate(predictions):
        lines.append(f"  [MASK] {j + 1}: " + "  ".join(f"{tok} {p:.4f}" for tok, p in cands))
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """CLI flags, defined only when run as a program: embed, predict and
    fill_mask share flag names and may be imported into one process."""
    flags.DEFINE_string("checkpoint", None, "Workdir, bert_jax model dir, HF dir or TF1 dir.")
    flags.DEFINE_integer("top_k", 5, "Predictions shown per [MASK].", lower_bound=1)


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    texts = argv[1:]
    if not FLAGS.checkpoint or not texts:
        raise app.UsageError('usage: python -m bert_jax.fill_mask --checkpoint=DIR '
                             '"text with [MASK]" ["more text" ...] [--top_k=5]')
    try:
        results = fill_mask(FLAGS.checkpoint, texts, FLAGS.top_k)
    except (ValueError, FileNotFoundError, paths.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for text, preds in zip(texts, results):
        print(render(text, preds))
    return 0


if __name__ == "__main__":
    define_flags()
    from bert_jax import cli
    cli.run(main)
