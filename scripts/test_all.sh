#!/usr/bin/env bash
# The whole suite, as `make test` and CI run it: the pytest suite (real model, Milvus Lite,
# Dagster instances, the UI path), then the end-to-end tests on PostgreSQL + pgvector
# (scripts/pgvector_tests.sh), and at the same time the end-to-end tests against the Milvus
# 2.3.5 server (scripts/server_tests.sh, in its own network namespace).
#
# Why at the same time: the UI tests wait on the daemon and the webserver for most of their
# time (test_ui_checks: 25% of one core over its 170 s), so the two suites overlap well on two
# cores; one after the other they took 29 + 12.5 minutes, against CI's 45-minute budget.
# The pgvector suite runs in the same background chain, after the server suite, not after the
# Lite suite: on a slower machine (2026-12-02, no AMX) the Lite suite alone took 40 minutes and
# the pgvector suite after it put the whole run at 47 minutes.
# Each suite has its own --basetemp (two pytest sessions sharing /tmp/pytest-of-USER can prune
# each other's numbered folders). System packages are installed first, once: two apt-gets at
# once fail on dpkg's lock.
#
# Usage: scripts/test_all.sh PYTHON [pytest args for the Lite suite...]
# Exit status: non-zero when either suite fails (pytest's 5, nothing collected, included).
set -uo pipefail
PYTHON=${1:?python of the venv}
shift || true
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
    missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v ip >/dev/null || missing+=(iproute2)
    if [ ${#missing[@]} -gt 0 ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2 || exit 1
    fi
fi
base=$(mktemp -d /tmp/va-tests.XXXXXX)
started=$SECONDS
# The background chain: the server suite, then the pgvector suite; each exit status in a file.
(
    scripts/server_tests.sh "$PYTHON" --basetemp="$base/server" > "$base/server_tests.log" 2>&1
    echo $? > "$base/server.rc"
    echo "== Milvus 2.3.5 server suite done after $((SECONDS - started)) s" >> "$base/server_tests.log"
    scripts/pgvector_tests.sh "$PYTHON" --basetemp="$base/pgvector" > "$base/pgvector_tests.log" 2>&1
    echo $? > "$base/pgvector.rc"
    echo "== pgvector suite done after $((SECONDS - started)) s" >> "$base/pgvector_tests.log"
) &
chain=$!
"$PYTHON" -m pytest --basetemp="$base/lite" "$@"
lite_rc=$?
echo "== pytest (Milvus Lite): exit $lite_rc after $((SECONDS - started)) s; waiting for the server and pgvector suites"
wait $chain
server_rc=$(cat "$base/server.rc" 2>/dev/null || echo 1)
pg_rc=$(cat "$base/pgvector.rc" 2>/dev/null || echo 1)
echo "== Milvus 2.3.5 server suite (scripts/server_tests.sh): exit $server_rc; its log:"
cat "$base/server_tests.log"
echo "== pgvector suite (scripts/pgvector_tests.sh): exit $pg_rc; its log:"
cat "$base/pgvector_tests.log"
echo "== all done after $((SECONDS - started)) s"
rm -rf "$base"
[ "$lite_rc" -eq 0 ] && [ "$pg_rc" -eq 0 ] && [ "$server_rc" -eq 0 ]
