# The two commands of the README: `make demo` and `make test`. Both create (or reuse) .venv and
# install everything into it; nothing is installed outside the repository.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# torch==2.13.0 is the CPU build that pip finds on the project's machines; a GPU machine's pip may pick
# its CUDA build of the same version.
TORCH := torch==2.13.0

.PHONY: demo test install clean

install: $(INSTALLED)

$(INSTALLED): Makefile XAIExplainLib/pyproject.toml Training/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e "XAIExplainLib[test]" -e Training
	touch $@

demo: $(INSTALLED)
	$(VENV)/bin/xaiexplain demo --out out/demo

test: $(INSTALLED)
	$(PY) -m pytest Testing -q -ra

clean:
	rm -rf $(VENV) out .pytest_cache .xaiexplain-test-cache
