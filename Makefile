# The two set-up commands of README.md: `make demo` (install + web demo) and `make test`
# (install + the CPU test suite). Both use the current Python environment. More demo models:
#   make demo DEMO_ARGS="--model black-forest-labs/FLUX.1-dev --host 0.0.0.0"
PYTHON ?= python3
# torch, when none is installed yet: the CUDA build where an NVIDIA driver answers (nvidia-smi), else
# the CPU build (a plain `pip install torch` pulls a multi-GB CUDA build even on a machine without a GPU).
# Where the CPU build is not on your package index, add its index:
#   make demo TORCH_CPU="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_CPU ?= torch==2.13.0
TORCH_CUDA ?= torch
# Bytecode is written for the modules a run imports, not ahead for every installed file (saves ~300 MB).
PIP_INSTALL = $(PYTHON) -m pip install --no-compile

.PHONY: install-torch install install-test demo test lint

install-torch:
	@$(PYTHON) -c "import torch" 2>/dev/null \
	  || if nvidia-smi -L >/dev/null 2>&1; then $(PIP_INSTALL) $(TORCH_CUDA); \
	     else $(PIP_INSTALL) $(TORCH_CPU); fi

install: install-torch
	$(PIP_INSTALL) -e ".[demo]"

install-test: install-torch
	$(PIP_INSTALL) -e ".[test]"

demo: install
	$(PYTHON) -m dit_accel.cli demo $(DEMO_ARGS)

test: install-test
	$(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check .
