# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create or reuse the virtual environment in $(VENV) and install what is missing.
# torch is installed first: the CPU wheel by default; a GPU user installs their CUDA build
# of torch into $(VENV) first (or sets TORCH=...), and it is kept.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.glfa-installed

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glfa demo

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
