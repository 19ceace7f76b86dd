# Two commands for a fresh machine with python3 (3.10+) and make:
#   make run   (ARGS="--demo" for the demo)    make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test bench screenshots clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "socktop needs Python 3.10 or newer ($(PYTHON) is older)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "could not create $(VENV): on Debian/Ubuntu install python3-venv (sudo apt install python3-venv)"; exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

run: $(STAMP)
	$(BIN)/socktop $(ARGS)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(BIN)/python tests/perf/bench.py $(ARGS)
	$(BIN)/python tests/perf/ui_bench.py $(ARGS)
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python tests/perf/netns_bench.py; \
		else echo "netns bench: skipped (creating namespaces needs root)"; fi
	$(BIN)/python tests/perf/fork_churn.py

screenshots: $(TEST_STAMP)
	$(BIN)/python tests/screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info tui/*.egg-info
