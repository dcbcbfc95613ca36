# EventOps — `make demo` runs it, `make test` tests it. Both provision everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RUNTIME := $(VENV)/.installed-runtime
UV      := $(BIN)/uv
# when this `make` started: `make demo` prints how long its first run took to a full dashboard
DEMO_T0 := $(shell date +%s.%N)
# the EVENTOPS_* settings that point at the services scripts/services.sh runs (ports may be set
# with EVENTOPS_PG_PORT / EVENTOPS_KAFKA_PORT); tests make their own MLflow stores
SVC_ENV := eval "$$(scripts/services.sh env)" && unset MLFLOW_TRACKING_URI
# the Python packages, bottom layer last (ARCHITECTURE.md); pyproject's pytest testpaths match
PACKAGES := cli serving training pipeline notify storage registry features models core

.PHONY: help setup apt apt-demo venv venv-runtime services-up services-down services-status migrate topics demo test test-unit test-integration bench eval backtest lint clean mlflow

help:
	@echo "make demo   - local PostgreSQL + embedded pipeline + simulator + API/UI"
	@echo "make test   - unit, model and integration tests against real Kafka + PostgreSQL, doctests"
	@echo "make lint   - ruff, import-linter layer contracts, mypy"
	@echo "make bench  - benchmarks (results in benchmarks/results/)"
	@echo "make eval   - leave-one-kind-out on nab-dev (DATA=<NAB-layout dir>), synthetic corpus, simulator"
	@echo "make backtest DATA=<NAB-layout dir> - NAB-style scores of the default detectors on DATA"
	@echo "make setup | services-up | services-down | test-unit"

setup: apt venv

# Debian packages the project needs; `apt-get update` only when one is missing.
apt:
	@missing=""; \
	command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-node-exporter >/dev/null || missing="$$missing prometheus-node-exporter"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing >/dev/null; \
	fi

# `make demo` needs only PostgreSQL from Debian (no Kafka, Java, Chromium, Alertmanager)
apt-demo:
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  echo "installing: postgresql"; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq postgresql >/dev/null; \
	fi

# The venv, installed by uv (the same requirements as pip, resolved and installed in parallel:
# ~10 s instead of ~70 s on a cold cache). `venv` adds the dev tools; the demo needs only the
# runtime ($(RUNTIME)).
define install_venv
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	test -x $(UV) || $(BIN)/pip install -q --disable-pip-version-check uv
	$(UV) pip install -q --python $(BIN)/python -e '$(1)'
endef

venv: $(STAMP)
$(STAMP): pyproject.toml core/__init__.py
	$(call install_venv,.[dev])
	touch $(STAMP) $(RUNTIME)

venv-runtime: $(RUNTIME)
$(RUNTIME): pyproject.toml core/__init__.py
	$(call install_venv,.)
	touch $(RUNTIME)

services-up: setup
	PYTHON=$(BIN)/python scripts/services.sh up
	$(SVC_ENV) && $(BIN)/eventops db migrate && $(BIN)/eventops topics create

services-down:
	scripts/services.sh down

services-status:
	scripts/services.sh status

migrate: venv
	$(BIN)/eventops db migrate

demo: apt-demo venv-runtime
	PYTHON=$(BIN)/python scripts/services.sh pg-up
	$(SVC_ENV) && $(BIN)/eventops db migrate && EVENTOPS_DEMO_T0=$(DEMO_T0) $(BIN)/eventops demo

# tests/ plus the doctests of the packages (pyproject: testpaths, --doctest-modules)
test: services-up
	$(SVC_ENV) && $(BIN)/python -m pytest -q

test-unit: venv
	$(BIN)/python -m pytest tests/unit tests/model $(PACKAGES) -q

# metric rows of the growth benchmark's filled database (~15 GB at 50M; 2000000 for a quick run)
GROWTH_ROWS ?= 50000000
bench: services-up
	$(BIN)/python -m benchmarks.bench_e2e
	$(BIN)/python -m benchmarks.bench_remote_write
	$(BIN)/python -m benchmarks.bench_detect
	$(BIN)/python -m benchmarks.bench_train
	$(BIN)/python -m benchmarks.bench_api
	$(BIN)/python -m benchmarks.bench_notify
	$(BIN)/python -m benchmarks.bench_growth --rows $(GROWTH_ROWS)

# MLflow UI on the project's PostgreSQL (database `mlflow`), artifacts under mlruns/
mlflow: services-up
	@$(SVC_ENV) && $(BIN)/python -c "from core.settings import Settings; from registry.client import ensure_experiment, DEFAULT_EXPERIMENT; import os; print('MLflow UI: http://127.0.0.1:' + os.environ.get('MLFLOW_PORT', '5000') + '/#/experiments/' + ensure_experiment(Settings(), DEFAULT_EXPERIMENT))"
	$(BIN)/mlflow server --backend-store-uri "postgresql+psycopg://eventops:eventops@127.0.0.1:$${EVENTOPS_PG_PORT:-55432}/mlflow" \
	  --artifacts-destination mlruns --workers 1 --host 127.0.0.1 --port $${MLFLOW_PORT:-5000}

# The evaluation (`eventops eval`, training/evalsuite.py): (a) leave-one-kind-out on DATA (a NAB
# checkout or nab-dev: DATA/data/<category>/<name>.csv + DATA/windows.json; skipped with a note
# when DATA is empty), (b) the synthetic corpus of training/corpus.py, (c) the simulator on held-out
# seeds. Tables printed, eval.json under EVAL_OUT. ABLATION=1 adds the ablation table; SETS=loko,...
# picks sets. Not part of `make test`, which needs no data from outside the repository.
DATA ?= $(wildcard ../shared/datasets/nab-dev)
EVAL_OUT ?= eval-out
eval: venv
	$(BIN)/eventops eval $(if $(DATA),--data "$(DATA)") --out "$(EVAL_OUT)" $(if $(ABLATION),--ablation) $(if $(SETS),--sets "$(SETS)")

# One backtest of the default detectors on DATA (`eventops backtest`): NAB scores per profile and
# event-wise metrics printed, per-row scores and report.json under BACKTEST_OUT.
BACKTEST_OUT ?= $(EVAL_OUT)/backtest
backtest: venv
	@if [ -z "$(DATA)" ]; then echo "make backtest: no labelled data: give DATA=<dir with data/ and windows.json> (the default ../shared/datasets/nab-dev is absent)" >&2; exit 2; fi
	@if [ ! -d "$(DATA)/data" ] || [ ! -f "$(DATA)/windows.json" ]; then echo "make backtest: $(DATA) is not a NAB-layout directory: expected $(DATA)/data/ and $(DATA)/windows.json" >&2; exit 2; fi
	$(BIN)/eventops backtest "$(DATA)/data" --windows "$(DATA)/windows.json" --out "$(BACKTEST_OUT)"
	@echo "report: $(BACKTEST_OUT)/report.json"

# every check runs, then the target fails if any did: style (ruff check, ruff format --check),
# the layer contracts (import-linter, pyproject [tool.importlinter]), types (mypy, pyproject
# [tool.mypy])
lint: venv
	@rc=0; \
	echo "== ruff"; $(BIN)/ruff check $(PACKAGES) tests benchmarks || rc=1; \
	echo "== ruff format"; $(BIN)/ruff format --check $(PACKAGES) tests benchmarks || rc=1; \
	echo "== import-linter"; $(BIN)/lint-imports || rc=1; \
	echo "== mypy"; $(BIN)/mypy || rc=1; \
	exit $$rc

clean: services-down
	rm -rf $(VENV) .services
