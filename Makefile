# `make quickstart` and `make test` install into .venv when needed, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test clean-logs readme-keys

install: $(STAMP)

# pip byte-compiles at install on purpose: this environment sets PYTHONDONTWRITEBYTECODE=1, so with
# --no-compile every process (xdist workers, subprocess runs, Dask workers) recompiled torch on import
# (+22 s each; the suite ran past 17 minutes in session 13).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,distributed]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(PY) main.py --config configs/quickstart.json
	$(PY) probe_main.py --config configs/quickstart.json
	$(PY) -m phd_lab report logs --out logs/report.html --no-progress
	@echo "Results: the run folders listed above, and the report logs/report.html"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

clean-logs:
	rm -rf logs/*/

# Regenerate the README's config-key table from the schema (tests/test_readme.py checks it).
readme-keys: $(STAMP)
	$(PY) -c "import re,pathlib,subprocess,sys; p=pathlib.Path('README.md'); t=subprocess.run([sys.executable,'main.py','--list-keys','--markdown'],capture_output=True,text=True,check=True).stdout.strip(); s=p.read_text(); a='<!-- keys:start -->'; b='<!-- keys:end -->'; p.write_text(s[:s.index(a)+len(a)]+'\n'+t+'\n'+s[s.index(b):])"
