"""Where the real datasets live: `../shared/data` beside the repo, or $BERT_JAX_DATA.

Tests and benchmarks go through `shared_data_path` so that one env var moves
them all, and a machine without the data skips with a reason instead of failing.
"""

from __future__ import annotations

import os
import pathlib

ENV_VAR = "BERT_JAX_DATA"
_REPO = pathlib.Path(__file__).resolve().parents[2]


def shared_data_dir() -> pathlib.Path:
    """The data root: $BERT_JAX_DATA if set, else `<repo>/../shared/data`."""
    env = os.environ.get(ENV_VAR)
    return pathlib.Path(env) if env else _REPO.parent / "shared" / "data"


def shared_data_path(*parts: str) -> pathlib.Path:
    """Path under the data root; raises FileNotFoundError with the override hint."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
                f"{path} not found: put the shared datasets at {shared_data_dir()} "
                f"or point ${ENV_VAR} at them")
    return path
