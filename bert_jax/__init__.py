"""bert_jax: BERT pretraining and fine-tuning in JAX / Flax NNX."""

__version__ = "0.1.0"
