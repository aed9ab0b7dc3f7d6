# Set-up and checks. `make test` on a fresh machine creates .venv, installs and runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build: an unpinned torch would pull several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv test bench demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) bench/local_mean.py
	$(PY) bench/attention.py
	$(PY) bench/local_ops.py
	$(PY) bench/corpus.py
	$(PY) bench/buffer_reuse.py
	$(PY) bench/networks.py
	$(PY) bench/memory.py
	$(PY) bench/huge_pages.py
	$(PY) bench/page_faults.py
	$(PY) bench/half_precision.py

# The built-in demo: held-out photographs, noise and motion blur varying across the frame,
# tiny-nafnet and tiny-nafnet-deblur in full, tiles and tlc modes; tables printed, comparison
# strips in demo-output/.
demo: venv
	$(PY) -m tlc.demo

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
