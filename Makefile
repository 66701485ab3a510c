# The README's commands. Each sets itself up: a virtual environment in .venv,
# the local CPU build of torch first where it is on disk (so no CUDA wheels are
# pulled), then the project with its dev extra. A stamp file makes reruns fast.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
# The CPU wheel this machine kind keeps on disk; empty elsewhere.
TORCH_CPU_WHEEL := $(firstword $(wildcard /opt/wheels/torch-$(TORCH_VERSION)*.whl))

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: test setup clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
ifneq ($(TORCH_CPU_WHEEL),)
	$(PY) -m pip install --quiet "$(TORCH_CPU_WHEEL)"
endif
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV)
