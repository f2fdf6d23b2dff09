"""Training: the one loop (pretraining and fine-tuning), the jitted step and sharded state,
optimizers, losses, orbax checkpointing and jax.distributed start-up.
"""
