# Two commands do all set-up: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "flux-gateway needs Python 3.11+")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install  ## gateway + fal/Replicate simulators + embedded Redis, on http://127.0.0.1:8080
	$(BIN)/flux-gateway serve --simulate

test: install  ## lint, then every test (unit, simulator conformance, end-to-end)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install  ## overhead of the gateway vs calling the simulators directly
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache *.egg-info
