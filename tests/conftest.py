"""Test setup: 8 fake CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers 4.x would import TensorFlow for TF classes we never use in tests.
os.environ.setdefault("USE_TF", "0")

import pytest  # noqa: E402

from bert_jax import shared_data  # noqa: E402


def data_path(*parts: str):
    """A path under the shared data dir, or skip the test saying what is missing."""
    try:
        return shared_data.shared_data_path(*parts)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def shared_data_dir():
    return data_path()
