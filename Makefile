# EventOps — `make demo` runs it, `make test` tests it. Both provision everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# the EVENTOPS_* settings that point at the services scripts/services.sh runs (ports may be set
# with EVENTOPS_PG_PORT / EVENTOPS_KAFKA_PORT); tests make their own MLflow stores
SVC_ENV := eval "$$(scripts/services.sh env)" && unset MLFLOW_TRACKING_URI

.PHONY: help setup apt venv services-up services-down services-status migrate topics demo test test-unit test-integration bench lint clean mlflow

help:
	@echo "make demo   - local PostgreSQL + embedded pipeline + simulator + API/UI"
	@echo "make test   - unit, model and integration tests against real Kafka + PostgreSQL"
	@echo "make bench  - benchmarks (results in benchmarks/results/)"
	@echo "make setup | services-up | services-down | lint"

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
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing >/dev/null; \
	fi

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

services-up: setup
	PYTHON=$(BIN)/python scripts/services.sh up
	$(SVC_ENV) && $(BIN)/eventops db migrate && $(BIN)/eventops topics create

services-down:
	scripts/services.sh down

services-status:
	scripts/services.sh status

migrate: venv
	$(BIN)/eventops db migrate

demo: setup
	PYTHON=$(BIN)/python scripts/services.sh pg-up
	$(SVC_ENV) && $(BIN)/eventops db migrate && $(BIN)/eventops demo

test: services-up
	$(SVC_ENV) && $(BIN)/python -m pytest tests -q

test-unit: venv
	$(BIN)/python -m pytest tests/unit tests/model -q

# metric rows of the growth benchmark's filled database (~15 GB at 50M; 2000000 for a quick run)
GROWTH_ROWS ?= 50000000
bench: services-up
	$(BIN)/python -m benchmarks.bench_e2e
	$(BIN)/python -m benchmarks.bench_detect
	$(BIN)/python -m benchmarks.bench_train
	$(BIN)/python -m benchmarks.bench_api
	$(BIN)/python -m benchmarks.bench_growth --rows $(GROWTH_ROWS)

# MLflow UI on the project's PostgreSQL (database `mlflow`), artifacts under mlruns/
mlflow: services-up
	$(BIN)/mlflow server --backend-store-uri "postgresql+psycopg://eventops:eventops@127.0.0.1:$${EVENTOPS_PG_PORT:-55432}/mlflow" \
	  --artifacts-destination mlruns --workers 1 --host 127.0.0.1 --port $${MLFLOW_PORT:-5000}

lint: venv
	$(BIN)/ruff check core features models storage registry pipeline training serving cli tests benchmarks

clean: services-down
	rm -rf $(VENV) .services
