r"""ModernBERT pretraining (MLM only, 30% masking, packed rows) with the recipe of
Warner et al. 2024 ("Smarter, Better, Faster, Longer"), where optax has it.

  python -m bert_jax.data.vocab --kind=bpe --corpus=CORPUS --vocab_size=50368 \
      --out=/data/tok/tokenizer.json
  python -m bert_jax.data.prepare --corpus=CORPUS --vocab=/data/tok/tokenizer.json \
      --out=PREPARED
  python -m bert_jax.pretrain --config=configs/pretrain/modernbert.py:size=base,phase=1 \
      --workdir=gs://bucket/mbert_p1 --config.data.prepared_dir=PREPARED \
      --config.model.attention_impl=splash
  python -m bert_jax.pretrain --config=configs/pretrain/modernbert.py:size=base,phase=2 \
      --workdir=gs://bucket/mbert_p2 --config.data.prepared_dir=PREPARED \
      --config.init_from=gs://bucket/mbert_p1 --config.model.attention_impl=splash
  # a few steps on a CPU:
  python -m bert_jax.pretrain --config=configs/pretrain/modernbert.py:size=tiny,runlocal \
      --workdir=/tmp/mbert --config.data.prepared_dir=PREPARED

Architecture (`size`): base 22 layers, hidden 768, GeGLU intermediate 1,152,
12 heads; large 28, 1,024, 2,624, 16; tiny (3, 128, 192, 2) and mini
(6, 256, 384, 4) are ours, for CPUs and tests, with base's ratios. Every size:
global attention every 3rd layer (layer 0 global), 128-token sliding window
elsewhere, rotary theta 10,000 on local layers; pre-norm, no biases, no
dropout.

Recipe kept: MLM only at 30% masking (80/10/10 replacement), no NSP and no
token types; documents cut into whole-sentence chunks and packed up to
`data.packing` per row with segment ids (no attention across sequences,
rotary positions restart per sequence). Phase 1: 1,024 tokens, global rope
theta 10,000, 1.7T tokens at ~4.7M tokens per step (4,608 x 1,024), lr 8e-4
(large 5e-4), warmup over 3B tokens, then constant (the decay comes at the end
of phase 2). Phase 2 (context extension, `init_from` a phase-1 workdir):
8,192 tokens with the global layers' theta raised to 160,000, lr 3e-4 for
300B tokens, the last 50B decaying as 1-sqrt (warmup-stable-decay,
optim.schedule="wsd"). AdamW b1 0.9, b2 0.98, eps 1e-6, decoupled weight decay
1e-5 on kernels and embeddings only (not on norms).

Differs from ModernBERT's run, and why:
- StableAdamW (AdamW with Adafactor-style per-tensor update clipping) is not in
  optax: plain optax.adamw with global-norm gradient clipping at 1.0 instead.
- Batch-size warmup (ModernBERT grows the batch over its first tokens) needs
  a batch shape that changes during the run (a recompile per size, a data
  stream that is no longer a pure function of the step): the batch is fixed.
- init_from loads parameters only: phase 2 starts a fresh optimizer (with a
  short warmup) where ModernBERT continued its optimizer state.
- Packing is per row by best-fit over whole-sentence chunks of our prepared
  corpora (data/packing.py), not ModernBERT's greedy sequence packer over its
  pre-tokenized shards; token counts per step match, row contents differ.
- Data, tokenizer (ModernBERT's 50,368-token OLMo-derived BPE) and the
  1.7T-token mixture are not ours: train a byte-level BPE with
  `bert_jax.data.vocab --kind=bpe` or pass ModernBERT's tokenizer.json.

`runlocal` shrinks it to a CPU run (sequences of 128, batch 16, 50 steps with
the same schedule shape), keeping the model size.
"""

import math

from ml_collections import config_dict

from bert_jax.cli.config_args import parse_arg
from configs.pretrain import bert

SIZES = {  # layers, hidden, intermediate (GeGLU: the width of each half), heads
    "tiny": (3, 128, 192, 2),
    "mini": (6, 256, 384, 4),
    "base": (22, 768, 1152, 12),
    "large": (28, 1024, 2624, 16),
}
TOKENS_PER_STEP = 4608 * 1024   # ModernBERT-base's batch at 1,024 tokens
PHASE1_TOKENS, WARMUP_TOKENS = 1_700_000_000_000, 3_000_000_000
PHASE2_TOKENS, PHASE2_DECAY_TOKENS = 300_000_000_000, 50_000_000_000


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    args = parse_arg(arg, size="base", phase=1, runlocal=False)
    if args["size"] not in SIZES:
        raise ValueError(f"config arg size={args['size']}: expected one of {', '.join(SIZES)}")
    if args["phase"] not in (1, 2):
        raise ValueError(f"config arg phase={args['phase']}: expected 1 or 2")
    phase2 = args["phase"] == 2
    c = bert.get_config(f"size={args['size']},phase=1")
    layers, hidden, inter, heads = SIZES[args["size"]]

    m = c.model
    m.architecture = "modernbert"
    m.num_layers, m.hidden_size, m.intermediate_size, m.num_heads = layers, hidden, inter, heads
    m.max_position_embeddings = 8192     # recorded in config.json; rotary has no table
    m.hidden_dropout_prob = m.attention_probs_dropout_prob = 0.0  # BERT's, unused here
    m.attention_dropout = m.embedding_dropout = m.mlp_dropout = 0.0
    m.hidden_activation = "gelu"
    m.norm_eps = 1e-5
    m.local_attention = 128
    m.global_attn_every_n_layers = 3
    m.local_rope_theta = 10_000.0
    m.global_rope_theta = 160_000.0 if phase2 else 10_000.0
    m.classifier_pooling = "mean"

    d = c.data
    T = 8192 if phase2 else 1024
    d.max_seq_length = T
    d.nsp = False
    d.masked_lm_prob = 0.3
    d.short_seq_prob = 0.0               # packing fills rows: no deliberate short sequences
    d.packing = 8
    d.max_predictions_per_seq = math.ceil(0.3 * (T - 2)) + 1  # never clips a sequence's draw

    c.global_batch_size = TOKENS_PER_STEP // T
    large = args["size"] == "large"
    o = c.optim
    o.schedule = "wsd"
    o.decay_shape = "sqrt"
    o.b1, o.b2, o.eps = 0.9, 0.98, 1e-6
    o.weight_decay = 1e-5
    o.clip_norm = 1.0
    if phase2:
        c.num_train_steps = PHASE2_TOKENS // TOKENS_PER_STEP
        o.lr = 3e-4
        o.warmup_steps = 100
        o.decay_steps = PHASE2_DECAY_TOKENS // TOKENS_PER_STEP
    else:
        c.num_train_steps = PHASE1_TOKENS // TOKENS_PER_STEP
        o.lr = 5e-4 if large else 8e-4
        o.warmup_steps = WARMUP_TOKENS // TOKENS_PER_STEP
        o.decay_steps = 0
    if args["size"] in ("tiny", "mini"):
        o.lr = 1e-3                      # small models tolerate (and need) a larger lr
    c.checkpoint.every = 2_000
    c.eval_every = 2_000

    if args["runlocal"]:
        bert.shrink(c)
        d.max_seq_length = 128
        d.max_predictions_per_seq = math.ceil(0.3 * 126) + 1
        d.packing = 4
        o.decay_steps, o.decay_ratio = 0, 0.2  # follows --config.num_train_steps
    return c
