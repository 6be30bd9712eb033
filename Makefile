# Sluicegate: the README's commands. Every target installs what it needs from scratch.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
PY := $(VENV)/bin/python
CONFIG ?= examples/config.yaml
PYTEST_ARGS ?=

.PHONY: install run test bench clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv

install: $(UV)
	$(UV) sync --all-packages --inexact --locked

run: install
	$(VENV)/bin/sluicegate serve --config $(CONFIG)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) sluicegate.db logs
