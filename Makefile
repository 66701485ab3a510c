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

.PHONY: demo test setup clean app

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
ifneq ($(TORCH_CPU_WHEEL),)
	$(PY) -m pip install --quiet "$(TORCH_CPU_WHEEL)"
endif
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job, offline: train a small ADM and its classifier on the bundled digits, sample with guidance, judge.
demo: $(STAMP)
	$(PY) scripts/quickstart.py $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest

# The web demo on http://127.0.0.1:$(APP_PORT) (loopback only): the digits pipeline of `make demo` by default.
APP_PIPELINE ?= demo_output/pipeline
APP_PORT ?= 7860

app: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False $(PY) scripts/app.py --pipeline $(APP_PIPELINE) --host 127.0.0.1 --port $(APP_PORT)

clean:
	rm -rf $(VENV)
