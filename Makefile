# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := data/sample/cmu-1-small-region.svs
DEMO_OUT := out/demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# escnn lists py3nj (needs Fortran, only used for SO(3)); its other
	# dependencies come from pyproject.toml.
	$(BIN)/pip install --quiet --no-deps escnn==1.0.11
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/histo-gedl infer $(SAMPLE) --out $(DEMO_OUT) --overwrite
	@echo "Demo outputs are in $(DEMO_OUT)/"

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf $(VENV) out
