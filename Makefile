# `make quickstart` and `make test` install into .venv when needed, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test clean-logs readme-keys

install: $(STAMP)

# The installed packages are byte-compiled on purpose: this environment sets PYTHONDONTWRITEBYTECODE=1, so
# without it every process (xdist workers, subprocess runs, Dask workers) recompiled torch on import (+22 s each;
# the suite ran past 17 minutes in session 13). pip compiles on one core (49 s here); compileall uses every core
# (27 s on two). Like pip, it leaves out files this Python cannot compile (torch ships Python 3.12 syntax).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e '.[dev,distributed]'
	$(PY) -c "import compileall as c, sysconfig as s; p = s.get_paths(); \
	    [c.compile_dir(d, quiet=2, workers=0) for d in sorted({p['purelib'], p['platlib']})]"
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
