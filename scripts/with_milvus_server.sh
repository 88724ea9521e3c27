#!/usr/bin/env bash
# Runs a command beside a real Milvus server: the `milvus` 2.3.5 standalone server from PyPI
# (installed with the test extras), started in a private network namespace so that it is
# reachable on loopback only (it listens on all interfaces otherwise). Needs root (unshare).
# The command sees VECTOR_ASSETS_TEST_MILVUS_URI=http://127.0.0.1:19530; its exit status is
# the script's. Usage: scripts/with_milvus_server.sh PYTHON COMMAND [ARGS...]
# (PYTHON is the venv's python; its bin/ holds milvus-server.)
set -euo pipefail
PYTHON=${1:?python of the venv}
shift
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
    echo "Milvus server: skipped (need root and unshare for a private network namespace)" >&2
    exit 0
fi
if ! command -v ip >/dev/null; then
    # `ip` brings the namespace's loopback up (Debian's iproute2; a fresh machine may lack it).
    apt-get install -y -q iproute2 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null; }
fi
exec unshare --net bash -s "$PYTHON" "$@" <<'INNER'
set -euo pipefail
PYTHON=$1; shift
ip link set lo up
# Only loopback here: the server cannot be reached from outside this namespace.
[ "$(ip -o link show | awk -F": " '{print $2}')" = "lo" ] || { echo "Milvus server: namespace has more than loopback" >&2; exit 1; }
DATA=$(mktemp -d /tmp/va-milvus-server.XXXXXX)
PORT=19530
"$(dirname "$PYTHON")/milvus-server" --data "$DATA" --proxy-port $PORT > "$DATA/server.out" 2>&1 &
SERVER=$!
# The exit status is the command's: the trap's own commands must not replace it (a killed
# server's `wait` returns 143).
trap 'status=$?; kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; rm -rf "$DATA"; exit $status' EXIT
for _ in $(seq 120); do
    (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    kill -0 $SERVER 2>/dev/null || { tail -20 "$DATA/server.out"; exit 1; }
    sleep 1
done
sleep 3
export VECTOR_ASSETS_TEST_MILVUS_URI=http://127.0.0.1:$PORT
"$@"
INNER
