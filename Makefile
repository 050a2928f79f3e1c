# Set-up is two commands: `make install` then `make test`. The main job is `make train`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WHEELS ?= $(shell $(PY) -m pip config list 2>/dev/null | sed -n "s/^global.find-links='\(.*\)'/\1/p")
UV_FLAGS := --python $(BIN)/python --compile-bytecode $(if $(WHEELS),--find-links $(WHEELS))

.PHONY: install test train lint bench reproduce clean

install:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install $(UV_FLAGS) torch==2.13.0
	$(BIN)/uv pip install $(UV_FLAGS) -e ".[dev]"

test:
	$(BIN)/python -m pytest -q

train:
	$(BIN)/python -m warp_lightning train

lint:
	$(BIN)/ruff check warp_lightning tests benchmarks

clean:
	rm -rf outputs multirun .pytest_cache
