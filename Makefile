# Quick start: `make demo` (plans the example agent graphs) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench clean tools lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test,calibrate,runtime,vllm,server,deploy]'
	@# PyPI's CUDA torchvision/torchaudio break transformers beside the CPU torch (see docs/calibration.md)
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.demo

# Prometheus + promtool for the metrics tests (Debian package; installed when missing)
tools:
	@command -v promtool >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null

# ruff (rules and line length in pyproject.toml), the formatter's check, and mypy (strict for
# costmodels/, compiler/, planner/; see CONTRIBUTING.md "Lint and types")
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# lint and types run before the tests: a finding fails `make test`
test: $(STAMP) tools lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/planner_scale.py

clean:
	rm -rf $(VENV) .hetagent .pytest_cache .hypothesis .mypy_cache .ruff_cache
