r"""BERT pretraining (MLM + NSP) with the paper's recipe.

  python -m bert_jax.pretrain --config=configs/pretrain/bert.py:size=base,phase=1 \
      --workdir=gs://bucket/bert_base --config.data.prepared_dir=PREPARED_128
  python -m bert_jax.pretrain --config=configs/pretrain/bert.py:size=base,phase=2 \
      --workdir=gs://bucket/bert_base_p2 --config.data.prepared_dir=PREPARED \
      --config.init_from=gs://bucket/bert_base

Recipe (Devlin et al. 2019; Google's README): 1M steps at batch 256, 90% at
sequence length 128 with 20 predictions per sequence (phase 1), then 10% at 512
with 80 (phase 2, starting from phase 1's weights with a fresh optimizer and
warmup); AdamW lr 1e-4, 10k warmup steps, linear decay, weight decay 0.01,
dropout 0.1. Phase 1 of BERT-base ends near MLM accuracy ~0.65-0.70 on
Wikipedia+Books. Sizes: tiny, mini, small, medium (Turc et al. 2019), base, large.

`runlocal` shrinks any config to run on a laptop CPU in minutes (batch 16,
50 steps, tiny evaluation), keeping the model size.
"""

from ml_collections import config_dict

from bert_jax.cli.config_args import parse_arg
from bert_jax.data.pipeline import default_data_config
from bert_jax.train import train_config

TOTAL_STEPS = 1_000_000


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    args = parse_arg(arg, size="base", phase=1, runlocal=False)
    if args["phase"] not in (1, 2):
        raise ValueError(f"config arg phase={args['phase']}: expected 1 or 2")
    c = config_dict.ConfigDict()

    c.model = config_dict.ConfigDict()
    c.model.size = args["size"]
    c.model.dtype = "bfloat16"           # compute; params and optimizer stay fp32
    c.model.attention_impl = "reference"  # xla | cudnn on GPU (needs attention dropout 0)
    c.model.scan_layers = False
    c.model.remat_policy = "none"
    c.model.hidden_dropout_prob = 0.1
    c.model.attention_probs_dropout_prob = 0.1
    c.model.max_position_embeddings = 512
    c.model.mlm_head = "gathered"         # gathered: only at masked positions; dense: all
    # Explicit architecture overrides of `size` (0 = the size's value): tests and
    # experiments with shapes outside the named sizes.
    c.model.hidden_size = 0
    c.model.num_layers = 0
    c.model.num_heads = 0
    c.model.intermediate_size = 0

    c.data = default_data_config()
    phase2 = args["phase"] == 2
    c.data.max_seq_length = 512 if phase2 else 128
    c.data.max_predictions_per_seq = 80 if phase2 else 20
    c.eval_data = config_dict.ConfigDict()
    c.eval_data.prepared_dir = ""         # held-out documents; '' = no evaluation
    c.eval_every = 10_000
    c.eval_batches = 50

    c.optim = train_config.optim(1e-4, warmup_steps=10_000)  # lamb for very large batches

    c.global_batch_size = 256
    c.grad_accum_steps = 1
    c.num_train_steps = int(TOTAL_STEPS * (0.1 if phase2 else 0.9))
    c.init_from = ""                      # phase 2: phase-1 workdir (params only)
    # init_from trained with another vocabulary (same size or not) is an error
    # unless this is set: its embeddings would mean other tokens.
    c.allow_vocab_mismatch = False
    c.seed = 0
    # Dropout RNG. threefry2x32: partitioned over the mesh, the same bits on every
    # backend. rbg: XLA's RngBitGenerator, a 3x cheaper TPU compile for bert_tiny
    # (149 vs 437 CPU s), but under a sharded mesh every device materializes the
    # whole random tensor (docs/tpu.md): only for one device or small batches.
    # Resume stays bitwise on the same mesh with either.
    c.rng_impl = "threefry2x32"

    c.mesh = train_config.mesh()
    c.checkpoint = train_config.checkpoint(every=5_000, keep=3)
    c.log_every = 100

    c.distributed = config_dict.ConfigDict()
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1

    if args["runlocal"]:
        shrink(c)
    return c


def shrink(c: config_dict.ConfigDict) -> None:
    """Laptop-sized run of the same config."""
    c.model.dtype = "float32"
    c.global_batch_size = 16
    c.num_train_steps = 50
    c.optim.warmup_steps = 5
    c.checkpoint.every = 25
    c.log_every = 5
    c.eval_every = 25
    c.eval_batches = 2
