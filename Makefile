# vector_assets — every target sets itself up from nothing (a fresh machine needs Python 3.11).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of PyTorch (already on disk here). GPU users: see README, "GPU".
TORCH_SPEC ?= torch==2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo test test-server dev serve eval clean

$(BIN)/vector-assets: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/vector-assets

## demo: install, backfill the bundled sample into Milvus Lite, and search it.
demo: install
	$(BIN)/vector-assets backfill --workers 2
	$(BIN)/vector-assets search --tenant HADOOP -k 5 "multipart upload to S3 fails and cannot recover"
	$(BIN)/vector-assets search --tenant pallets/flask -k 5 "support async views"

## test: install and run the test suite (real model, Milvus Lite, Dagster instance) and, at the
## same time, the end-to-end tests against a real Milvus 2.3.5 server on loopback
## (make test-server; scripts/test_all.sh says why at the same time).
test: install
	scripts/test_all.sh $(BIN)/python

## test-server: only the end-to-end tests against the Milvus 2.3.5 server (scripts/server_tests.sh).
test-server: install
	scripts/server_tests.sh $(BIN)/python

## serve: the HTTP search service on http://127.0.0.1:8000 (README, "Search service"; keys with
## `.venv/bin/vector-assets keys add --tenant T`).
serve: install
	$(BIN)/vector-assets serve --port 8000

## dev: the Dagster UI (http://127.0.0.1:3000) with the daemon, for backfills and sensors
## (`dg dev`, Dagster's supported dev command; the code location is named vector_assets). Its
## services log warnings and errors only (their INFO lines list every partition of a backfill);
## runs log at INFO (the job's console logger), every event is in the UI.
## One planned event per asset for a run over a range of tenant-days, on Postgres storage too.
## The instance's storage is created first: the webserver and the daemon creating a fresh SQLite
## instance at the same moment can leave its schedule database with two alembic heads.
dev: install
	$(BIN)/python -c "from vector_assets.settings import dagster_instance; dagster_instance()"
	@echo "Dagster UI: http://127.0.0.1:3000"
	VIRTUAL_ENV="$(CURDIR)/$(VENV)" PATH="$(CURDIR)/$(BIN):$$PATH" DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true \
		$(BIN)/dg dev --host 127.0.0.1 --port 3000 --log-level warning

## eval: search quality on ../shared/data/eval_pr_commits through the product (see README).
eval: install
	$(BIN)/python benchmarks/search_quality.py

clean:
	-$(BIN)/vector-assets server stop
	-VECTOR_ASSETS_STORE_URL=pgserver:$(CURDIR)/.vector_assets/pg $(BIN)/vector-assets server stop
	rm -rf .vector_assets .dagster_home
