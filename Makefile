# `make quickstart` and `make test` install into .venv when needed, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test clean-logs readme-keys

install: $(STAMP)

# --no-compile: byte-compiling every module of torch and its CUDA packages took longer than the install
# itself (162 s against 74 s); Python compiles what is imported, once, on first use.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e '.[dev,distributed]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(PY) main.py --config configs/quickstart.json
	$(PY) probe_main.py --config configs/quickstart.json --no-progress
	$(PY) -m phd_lab report logs --out logs/report.html --no-progress
	@echo "Results: the run folders listed above, and the report logs/report.html"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

clean-logs:
	rm -rf logs/*/

# Regenerate the README's config-key table from the schema (tests/test_readme.py checks it).
readme-keys: $(STAMP)
	$(PY) -c "import re,pathlib,subprocess,sys; p=pathlib.Path('README.md'); t=subprocess.run([sys.executable,'main.py','--list-keys','--markdown'],capture_output=True,text=True,check=True).stdout.strip(); s=p.read_text(); a='<!-- keys:start -->'; b='<!-- keys:end -->'; p.write_text(s[:s.index(a)+len(a)]+'\n'+t+'\n'+s[s.index(b):])"
