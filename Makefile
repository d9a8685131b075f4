# `make quickstart` and `make test` install into .venv when needed, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test clean-logs

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,distributed]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(PY) main.py --config configs/quickstart.json

test: $(STAMP)
	$(PY) -m pytest -q

clean-logs:
	rm -rf logs/*/
