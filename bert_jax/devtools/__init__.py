"""Tools for tests and trying things out, not part of the product's commands:
`python -m bert_jax.devtools.gcs_emulator` (a local gs:// bucket server)."""
