"""Compiling for a TPU slice with no TPU attached (`python -m bert_jax.aot`):
the chips and slice names (`topology`), what a compiled program's HLO says
about its collectives (`hlo`), and the report as text (`report_text`)."""
