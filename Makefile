# llmserver: `make run` serves the demo model; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test check-long migrate browser screenshot soak vendor-js

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt requirements-bench.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

# GPU: the CUDA builds of onnxruntime-genai and onnxruntime in place of the CPU ones
# (requirements-cuda.txt; docs/models.md, "GPU"). Not tested on hardware here.
.PHONY: install-cuda
install-cuda: $(VENV)/.installed
	$(PY) -m pip uninstall -q -y onnxruntime-genai onnxruntime
	$(PY) -m pip install -q -r requirements-cuda.txt

migrate: $(VENV)/.installed
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py serve

# The suite on PYTEST_WORKERS processes (0: in this one), each taking a whole test module
# at a time, in a random order whose seed it prints; the long drills are left to
# check-long. PYTEST_ARGS: more for pytest, e.g. a subset (PYTEST_ARGS="tests/test_tools.py
# -k stream"), the file order ("-p no:randomly") or an order again ("--randomly-seed=N").
# docs/testing.md says more.
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed-test browser nginx model-zoo
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The drills too long for every run (pytest -m long: a shortened make bench, a 20 s
# soak); CI runs them after the suite.
check-long: $(VENV)/.installed-test
	$(PY) -m pytest -p no:randomly -m long $(PYTEST_ARGS)

# The chat page's tests drive Debian's Chromium through its ChromeDriver (never a browser
# download). Installed here when missing and apt-get can; else those tests skip, saying so.
browser:
	@if ! { test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium and chromium-driver for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: no /usr/bin/chromium or /usr/bin/chromedriver: the browser tests will skip (apt-get install chromium chromium-driver)"; \
	  fi; \
	fi

# 64 clients for 2 minutes against a server and database of its own, then a check that no
# usage record was lost and nothing leaked (drills/soak.py; SOAK_ARGS="--seconds 600").
soak: $(VENV)/.installed-test
	$(PY) -m drills.soak $(SOAK_ARGS)

# The chat page's pictures in docs/, from a real conversation with the demo model.
# The chat page's Markdown parser, sanitizer and highlighter, fetched again from npm at the
# versions chat/vendor.sh pins (they are committed: running llmserver needs no Node.js).
vendor-js:
	bash chat/vendor.sh

screenshot: $(VENV)/.installed-test browser
	$(PY) docs/screenshot.py

include Makefile.build
include Makefile.bench
include Makefile.cluster
