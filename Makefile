VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint
setup: $(BIN)/stillroom

$(BIN)/stillroom: pyproject.toml scripts/setup.sh
	VENV=$(VENV) ./scripts/setup.sh
	@touch $@

demo: setup
	$(BIN)/stillroom demo

test: setup
	$(BIN)/ruff check stillroom tests scripts bench
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check stillroom tests scripts bench
