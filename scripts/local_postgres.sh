#!/usr/bin/env bash
# Start a local PostgreSQL for Dagster's storage (dagster-postgres) and print the DAGSTER_PG_*
# exports that select it (see README, "Postgres for Dagster's storage").
#
#   eval "$(scripts/local_postgres.sh)"            # database vector_assets, kept if it exists
#   eval "$(scripts/local_postgres.sh --fresh DB)" # database DB, dropped and created empty
#
# Debian/Ubuntu, as root: installs the distribution's postgresql package when pg_ctlcluster is
# missing, starts its cluster, and creates the login role vector_assets (password
# vector_assets) that owns the database. Diagnostics go to stderr, the exports to stdout.
set -euo pipefail
fresh=0
if [[ "${1:-}" == "--fresh" ]]; then fresh=1; shift; fi
db="${1:-vector_assets}"
if [[ ! "$db" =~ ^[a-z_][a-z0-9_]*$ ]]; then echo "local_postgres.sh: bad database name '$db'" >&2; exit 2; fi
if [[ $EUID -ne 0 ]]; then echo "local_postgres.sh: run as root (it starts the system cluster)" >&2; exit 2; fi
if ! command -v pg_ctlcluster >/dev/null; then
  echo "local_postgres.sh: installing postgresql from the distribution" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version="$(ls /usr/lib/postgresql | sort -n | tail -1)"
pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$version main" || pg_createcluster "$version" main >&2
pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -qx online || pg_ctlcluster "$version" main start >&2
port="$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')"
psql_() { su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qtAc \"$1\""; }
[[ "$(psql_ "select 1 from pg_roles where rolname = 'vector_assets'")" == 1 ]] || psql_ "create role vector_assets login password 'vector_assets'" >&2
if (( fresh )); then psql_ "drop database if exists $db with (force)" >&2; fi
[[ "$(psql_ "select 1 from pg_database where datname = '$db'")" == 1 ]] || psql_ "create database $db owner vector_assets" >&2
cat <<OUT
export DAGSTER_PG_HOST=localhost DAGSTER_PG_PORT=$port DAGSTER_PG_USER=vector_assets DAGSTER_PG_PASSWORD=vector_assets DAGSTER_PG_DB=$db
OUT
