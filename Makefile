# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates or reuses .venv and installs exactly the versions in requirements.lock.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
# Let Python cache bytecode even where the shell says not to (PYTHONDONTWRITEBYTECODE=1 on this project's boxes):
# without it every Ray worker, job and CLI process recompiles aisys (~0.3-0.4 s each; __pycache__ is git-ignored).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: venv system-deps demo test test-unit test-fast lock bench-ingest clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "pip==26.3"
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[dev]"
	@touch $(STAMP)

## Debian packages the integration tests drive (postgresql, prometheus, chromium); needs root or sudo.
system-deps:
	bash scripts/install-system-deps.sh

## Run the whole pipeline end to end on the embedded defaults.
demo: $(STAMP)
	$(VENV)/bin/aisys demo

## Run the whole test suite in two pytest processes side by side. The first runs tests/ray, tests/e2e and
## tests/reliability; the second runs the pure tests/unit (no Ray) and TESTS_BESIDE. Its output is printed after the
## first's. On their own the Ray and end-to-end tests leave a third of the 2 cores idle (most wait on one
## single-threaded process at a time: a job driver, a Ray Train worker, a subprocess importing torch); the second
## process fills it. The tests marked `serial` (a rate or a tail a neighbour would skew) run last in the first
## process, alone: it waits for the second to end before them (AISYS_TESTS_SERIAL_LOCK, tests/conftest.py).
## TEST_WORKERS=2 runs the suite on pytest-xdist workers instead, then the `serial` tests alone: on the 2-core CI box
## that was slower (two private Rays and their Serve replicas on 2 cores the whole run: 1,130 s against 860 s in one
## process, same clone, 2026-12-06). MARK narrows the run (a marker expression: MARK="not multinode"). Exit code 5
## (nothing selected) is not a failure.
TEST_WORKERS ?= 1
MARK ?=
and_mark = $(if $(strip $(MARK)), and ($(MARK)),)
# TESTS_BESIDE: the job chain, `serve deploy` and the dashboard's token check (the shared token-auth head's users, which
# mostly wait on its job drivers and Serve), then the demo, `aisys serve`'s stop tests, Schemathesis and the notebooks,
# so that both processes end together. Same 2-core box, same day (2026-12-07): with only the head's users beside, the
# first process took 999 s and the second 399 s; as here, 927 s and 839 s, the serial tests alone at the end. With the
# replica-kill test beside the notebooks (before the serial lock) its driver failed: hence the lock.
TESTS_BESIDE = tests/e2e/test_jobs_more.py tests/e2e/test_serve_deploy.py tests/reliability/test_ray_auth.py \
  tests/e2e/test_demo.py tests/e2e/test_serve_stop.py tests/reliability/test_schemathesis.py tests/e2e/test_notebooks.py
test: $(STAMP)
ifeq ($(strip $(TEST_WORKERS)),1)
	@mkdir -p .aisys
	@echo "tests/unit and $(TESTS_BESIDE) run beside the rest (their output follows): .aisys/test-beside.log"
	@export AISYS_TESTS_SERIAL_LOCK=$(CURDIR)/.aisys/test-serial.lock; \
	 $(PY) -m pytest tests/unit $(TESTS_BESIDE) $(if $(strip $(MARK)),-m "$(MARK)") $(PYTEST_ARGS) \
	   > .aisys/test-beside.log 2>&1 & \
	 beside=$$!; \
	 $(PY) -m pytest tests/ray tests/e2e tests/reliability $(addprefix --ignore=,$(TESTS_BESIDE)) \
	   $(if $(strip $(MARK)),-m "$(MARK)") $(PYTEST_ARGS); rest=$$?; \
	 wait $$beside; beside_rc=$$?; \
	 echo "=============== tests/unit and the modules beside the rest ==============="; cat .aisys/test-beside.log; \
	 for rc in $$rest $$beside_rc; do [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; done
else
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not serial$(and_mark)" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -m "serial$(and_mark)" $(PYTEST_ARGS) || [ $$? -eq 5 ]
endif

## Only the pure tests (no Ray): seconds.
test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## Everything but the tests marked `slow` (each over ~20 s: their own Ray or server, job chains, Ray Train runs),
## for local iteration; CI (`make test`) runs them all.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## Re-pin every dependency from the current venv.
lock: $(STAMP)
	(echo "# Exact versions CI installs (pip freeze of a venv where the whole suite passed). Regenerate: make lock"; \
	 $(PY) -m pip freeze --exclude-editable | grep -v "^aisys") > requirements.lock

bench-ingest: $(STAMP)
	$(PY) benchmarks/ingest.py

clean:
	rm -rf .aisys .pytest_cache
