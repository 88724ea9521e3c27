#!/usr/bin/env bash
# The end-to-end tests against a real Milvus server (the `milvus` 2.3.5 standalone server,
# loopback only; see scripts/with_milvus_server.sh). Needs root (unshare); skipped otherwise.
# Usage: scripts/server_tests.sh PYTHON [pytest args...]
set -euo pipefail
PYTHON=${1:?python of the venv}
shift || true
exec "$(dirname "$0")/with_milvus_server.sh" "$PYTHON" "$PYTHON" -m pytest -p no:cacheprovider "$@" \
    tests/test_milvus_server.py tests/test_pipeline.py tests/test_model_switch.py tests/test_correctness.py \
    "tests/test_cli.py::test_backfill_then_search[sqlite]"
