# The two commands of the README: `make demo` and `make test`. Both create (or reuse) .venv and
# install everything into it; nothing is installed outside the repository.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# torch==2.13.0 is the CPU build that pip finds on the project's machines; a GPU machine's pip may pick
# its CUDA build of the same version.
TORCH := torch==2.13.0
# The pydicom that 3D Slicer 5.10 pins, in a folder of its own: a test runs the command line with it first on
# PYTHONPATH (the library works with pydicom 2.4 and 3.x)
SLICER_PYDICOM := pydicom==2.4.4
SLICER_PYDICOM_DIR := $(VENV)/pydicom-2.4.4

.PHONY: demo test install clean

install: $(INSTALLED)

$(INSTALLED): Makefile XAIExplainLib/pyproject.toml Training/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e "XAIExplainLib[test]" -e Training
	rm -rf $(SLICER_PYDICOM_DIR)
	$(PY) -m pip install --quiet --no-deps --target $(SLICER_PYDICOM_DIR) "$(SLICER_PYDICOM)"
	touch $@

demo: $(INSTALLED)
	$(VENV)/bin/xaiexplain demo --out out/demo

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file in one of them, each process's
# PyTorch on one thread (Testing/conftest.py): most tests are single-threaded, so two workers use both cores.
TEST_WORKERS ?= 2

test: $(INSTALLED)
	$(PY) -m pytest Testing -q -ra -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) out .pytest_cache .xaiexplain-test-cache
