# Every target installs what it needs into .venv (idempotent), so a fresh
# clone needs only `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# hear-eval-kit pins numpy 1.19 / numba 0.48; its real dependencies come
# from the `heareval` extra and constraints.txt instead.
HEAR_KIT := heareval==2021.1.3 hearvalidator==2021.0.2 hearbaseline==2021.1.1
# X-ARES requires torchaudio, which has no build for this torch; its other
# dependencies come from the `xares` extra and constraints.txt.
XARES := xares==0.1.3
DEMO_OUT ?= demo_out
# An EfficientAT checkout (git clone https://github.com/fschmid56/EfficientAT) makes
# `make bench` compare CED with its MN10 (make bench MN10_SRC=PATH); without one, CED alone
MN10_SRC ?=
# pytest-xdist: one test worker per CPU; a test module stays on one worker, so its
# fixtures (the shared hear-eval-kit runs among them) are built once; modules start in
# the order tests/conftest.py gives them (most slow tests first).
XDIST  ?= -n $(shell nproc) --dist loadscope --no-loadscope-reorder
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast lint format bench bench-gpu clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[torch,plot,config,train,eval,heareval,xares,hf,maeb,onnx,dev]"
	$(PY) -m pip install -q --no-deps $(HEAR_KIT) $(XARES)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ced-distill demo --out $(DEMO_OUT)
	$(VENV)/bin/ced-eval demo --model $(DEMO_OUT)/student.safetensors --out $(DEMO_OUT)/eval

test: $(STAMP)
	$(PY) -m pytest -q $(XDIST) tests

# The same suite without the end-to-end tier (tests marked slow), for iteration.
test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m bench.run --out bench/out $(if $(MN10_SRC),--mn10-src "$(MN10_SRC)")

# On a CUDA machine: GPU throughput (sized for at most 8 minutes); without CUDA: an error.
bench-gpu: $(STAMP)
	$(PY) -m bench.gpu --out bench/out

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
