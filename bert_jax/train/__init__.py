"""Training: the one loop (pretraining and fine-tuning), pretraining as its job
(MLM + NSP objective, the built step, held-out evaluation), the jitted step and
sharded state, optimizers, losses, orbax checkpointing and jax.distributed start-up.
"""
