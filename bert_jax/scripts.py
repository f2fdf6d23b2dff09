"""Console scripts installed with the package (`bert-jax-pretrain`, `bert-jax-finetune`, ...).

Each one runs its module exactly as `python -m bert_jax.<name>` does (runpy with
`run_name="__main__"`), so the two ways of starting a command cannot drift apart:
same flags, same one-line errors, same exit codes.
"""

from __future__ import annotations

import runpy


def _as_main(module: str):
    def run() -> None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    run.__doc__ = f"python -m {module}"
    return run


# The entry points of pyproject.toml's [project.scripts] (bert-jax-<name>).
pretrain = _as_main("bert_jax.pretrain")
finetune = _as_main("bert_jax.finetune")
predict = _as_main("bert_jax.predict")
embed = _as_main("bert_jax.embed")
fill_mask = _as_main("bert_jax.fill_mask")
convert = _as_main("bert_jax.convert")
demo = _as_main("bert_jax.demo")
aot = _as_main("bert_jax.aot")
plot = _as_main("bert_jax.plot")
gcs_emulator = _as_main("bert_jax.devtools.gcs_emulator")
prepare = _as_main("bert_jax.data.prepare")
vocab = _as_main("bert_jax.data.vocab")
inspect = _as_main("bert_jax.data.inspect_batches")
