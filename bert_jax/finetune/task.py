"""What a fine-tuning task hands to the shared training loop.

The loop (mesh, optimizer, orbax, metrics) is the same for GLUE, SQuAD and
CoNLL-2003; a task differs only in data, head, loss and metrics. Each task
module exposes `build_task(config, tokenizer) -> FinetuneTask`.

Batches are dicts of numpy arrays with a static batch size. Every batch carries
`example_weights` (float32 [B]): 0 marks padding rows added to fill the last
batch, so evaluation counts every real example exactly once. Sequence length is
the smallest entry of `config.length_buckets` that fits the longest example in
the batch, so short tasks (SST-2 averages ~13 tokens) are not padded to 128,
and the number of distinct shapes (= compilations) stays small.

Common keys: input_ids, token_type_ids, attention_mask (int32 [B, L]),
example_weights. Per head:
  classification / regression: labels (int32 [B] / float32 [B])
  span:    start_positions, end_positions (int32 [B]); eval batches also
           `feature_index` (int32 [B]) to map logits back to windows
  tagging: label_ids (int32 [B, L], -100 where no loss: special tokens, non-first
           word pieces, context-only tokens); eval batches also `feature_index`

Packed training batches (GLUE and CoNLL `config.packing`) hold several whole
examples per row: segment_ids / position_ids (int32 [B, L]) keep them apart,
example_weights becomes [B, K] (one slot per example, 0 when empty),
classification labels [B, K] with cls_positions (each example's [CLS] offset);
tagging label_ids stay per token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np

Batch = dict[str, np.ndarray]

HEAD_TYPES = ("classification", "regression", "span", "tagging")


class FinetuneTask(Protocol):
    name: str
    head: str                # one of HEAD_TYPES
    num_labels: int          # 1 for regression, 2 for span (start/end)
    label_names: list[str]   # stored with the checkpoint; [] for regression / span
    main_metric: str         # the dev metric (higher is better) that picks the best model

    def num_train_examples(self) -> int:
        """Rows the trainer counts for epochs and the LR schedule."""
        ...

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        """One shuffled epoch; a pure function of (seed, epoch)."""
        ...

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Every example of `split` once, in a fixed order."""
        ...

    def evaluate(self, split: str, outputs: list[Mapping[str, np.ndarray]],
                 out_dir: str | None = None) -> dict[str, float]:
        """Metrics from the model outputs of `eval_batches(split)` (one dict per
        batch with the head's logits: `logits`, or `start_logits`/`end_logits`),
        writing predictions files under out_dir when given."""
        ...


PredictFn = Callable[[Batch], Mapping[str, Any]]
