# Sluicegate: the README's commands. Every target installs what it needs from scratch.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
PY := $(VENV)/bin/python
CONFIG ?= examples/config.yaml
HOST ?= 127.0.0.1
PORT ?= 4000
PYTEST_ARGS ?=
# Two test processes (one per core here): much of the suite waits on servers and subprocesses. A test file stays
# in one process (--dist loadfile), so its module fixtures (Phoenix, Azurite, browsers) start once.
PYTEST_WORKERS ?= 2
# Servers the sink tests start: Microsoft's storage emulator (npm) and Arize Phoenix (PyPI). Phoenix gets a venv of
# its own: it requires anthropic<2, which the gateway's dev group (anthropic>=2.16) cannot share.
TOOLS := .tools
AZURITE_VERSION := 3.35.0
PHOENIX_VERSION := 20.26.1
AZURITE := $(TOOLS)/azurite/node_modules/.bin/azurite-blob
PHOENIX := $(TOOLS)/phoenix/bin/phoenix

.PHONY: install tools chromium run test bench clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv

# Bytecode is compiled at install time: this machine (and CI) sets PYTHONDONTWRITEBYTECODE, so without it every
# process start recompiles every module it imports (`sluicegate serve` spent ~2 s of CPU there; Phoenix far more).
install: $(UV)
	$(UV) sync --all-packages --inexact --locked --compile-bytecode
	$(PY) -m compileall -q -j 0 core plugins > /dev/null

$(AZURITE):
	npm install --prefix $(TOOLS)/azurite --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)

$(PHOENIX): | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PY) $(TOOLS)/phoenix
	$(UV) pip install --quiet --compile-bytecode --python $(TOOLS)/phoenix/bin/python arize-phoenix==$(PHOENIX_VERSION)

# The console's browser tests drive Debian's chromium (installing it needs root: .ci/run does, as CI runs as root).
chromium:
	@test -x /usr/bin/chromium || echo "note: /usr/bin/chromium is missing, so the console's browser tests skip" \
		"(apt-get install chromium)"

tools: $(AZURITE) $(PHOENIX) chromium

run: install
	$(VENV)/bin/sluicegate serve --config $(CONFIG) --host $(HOST) --port $(PORT)

test: install tools
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) $(TOOLS) sluicegate.db logs
