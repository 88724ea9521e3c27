#!/usr/bin/env bash
# The end-to-end tests against a real Milvus server (the `milvus` 2.3.5 standalone server,
# loopback only; see scripts/with_milvus_server.sh). Needs root (unshare); skipped otherwise.
# Usage: scripts/server_tests.sh PYTHON [pytest args...]
set -euo pipefail
PYTHON=${1:?python of the venv}
shift || true
# The distributed test (tests/test_distributed.py) starts redis-server and a private PostgreSQL
# cluster inside the namespace, which has no network to install them from: install them here.
if [ "$(id -u)" = 0 ]; then
    command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >&2
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
fi
exec "$(dirname "$0")/with_milvus_server.sh" "$PYTHON" "$PYTHON" -m pytest -p no:cacheprovider "$@" \
    tests/test_milvus_server.py tests/test_pipeline.py tests/test_model_switch.py tests/test_correctness.py \
    "tests/test_cli.py::test_backfill_then_search[sqlite]" \
    "tests/test_reliability.py::test_a_second_landing_folder_is_refused_not_allowed_to_delete[L1 first]" \
    tests/test_reliability.py::test_deletes_propagate_after_the_landing_index_is_lost \
    tests/test_reliability.py::test_a_record_moved_to_another_tenant_leaves_no_old_copy \
    tests/test_distributed.py
