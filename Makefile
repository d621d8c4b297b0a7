# The two commands a newcomer needs: `make run` and `make test`. Everything else is for us.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP_VERSION := 26.3

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint lock bench soak kafka-jars system-deps clean

# The exact versions CI tested (decision 0040): every package from requirements.lock, checked against
# its hashes, then the project itself without resolving anything again. `make lock` rewrites the lock.
LOCK   := requirements.lock

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "The bank needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>/dev/null || echo 'not found')."; \
	  echo "Run with another one, e.g.: make $(MAKECMDGOALS) PYTHON=python3.12"; exit 1; }
	@test -x $(BIN)/python || { echo "creating $(VENV) with $$($(PYTHON) --version)"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "$(PYTHON) -m venv failed: on Debian/Ubuntu, apt-get install python3-venv"; exit 1; }; }
	@echo "installing the locked versions from $(LOCK) into $(VENV) (the first time takes a few minutes)"
	$(BIN)/python -m pip install -q --disable-pip-version-check 'pip==$(PIP_VERSION)'
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

## lock: resolve requirements.lock again after a change to pyproject.toml's dependencies (the pins
## already there are kept where they still fit; `make lock UPGRADE=--upgrade` takes the newest)
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
	  --custom-compile-command "make lock" --quiet $(UPGRADE) -o $(LOCK)

## run: start PostgreSQL (embedded unless DATABASE_URL is set), migrate, run every service
run: $(STAMP)
	$(BIN)/bank up

## test: the whole suite on its own PostgreSQL and its own Apache Kafka broker
test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## system-deps: Debian packages the tests and benchmarks drive (compose validation, the ops page in a
## real browser, promtool for the alert rules, wrk for `make bench`, curl and jq for the README's examples)
system-deps:
	@command -v docker-compose >/dev/null && test -x /usr/bin/chromium && command -v wrk >/dev/null \
	  && command -v promtool >/dev/null && command -v curl >/dev/null && command -v jq >/dev/null || \
	  { $(SUDO) apt-get update -q && \
	    $(SUDO) apt-get install -y -q docker-compose chromium chromium-driver wrk prometheus curl jq; }

## lint: ruff, mypy, and the import contracts (pyproject.toml [tool.importlinter])
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## bench: the card path through the gateway under wrk (a C load generator, bench/wrk/authorise.lua) with the
## bare baseline in the same run and their ratio, then the whole bank (pushes to every customer's device,
## webhooks on one account in ten: sustained rate until everything caught up, open-loop latency), the
## step test past capacity (bench/openloop.c, compiled with cc: goodput and approved p99 at 0.5x-10x,
## plotted), the card path and the whole bank over the ISO 8583 link (bank sim link-load), then the
## standard set (simulator, baseline); results under bench/results/
bench: $(STAMP)
	@command -v wrk >/dev/null || $(MAKE) system-deps
	$(BIN)/python -m bench.cards --via-gateway --wrk --seconds 20 --cards 10000 --rates '' --profile-seconds 0
	$(BIN)/python -m bench.whole_bank
	$(BIN)/python -m bench.overload
	$(BIN)/bank sim link-load --own-bank -n 500 --seconds 10 --windows 8,16,24 --rates 300 --rate-seconds 20
	$(BIN)/python -m bench.standard

## soak: the bank test for 30 minutes (kills, a PostgreSQL restart, slow accounts), then the checker
soak: $(STAMP)
	$(BIN)/python -m bank.faults --seconds 1800 --report bench/results/soak.json

kafka-jars: $(STAMP)
	$(BIN)/python -c "from bank.infra.kafka import ensure_jars; print(ensure_jars(quiet=False))"

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .import_linter_cache deploy/kafka/target deploy/s3proxy/target
