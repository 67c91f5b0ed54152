# The two set-up commands of README.md: `make demo` (install + web demo) and `make test`
# (install + the CPU test suite). Both use the current Python environment.
PYTHON ?= python3
# The CPU build of torch (a plain `pip install torch` pulls a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0

.PHONY: install install-test demo test lint

install:
	$(PYTHON) -m pip install -e ".[demo]"

install-test:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_CPU)
	$(PYTHON) -m pip install -e ".[test]"

demo: install
	$(PYTHON) app.py

test: install-test
	$(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check .
