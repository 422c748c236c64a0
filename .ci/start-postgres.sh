#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the request-log tests; idempotent.
#
#   eval "$(.ci/start-postgres.sh)"     # sets HONED_TEST_PG_URL
#
# Installs Debian's postgresql with apt-get when no server binaries are found, initialises a
# data folder (trust auth: loopback only, test data only), starts the server on 127.0.0.1 and
# creates the database. Everything but the final `export` line goes to stderr.
# Settings: HONED_PG_DIR (data folder), HONED_PG_PORT (default 54329), HONED_PG_DB.
set -euo pipefail

PG_DIR="${HONED_PG_DIR:-/tmp/honed-pg}"
PG_PORT="${HONED_PG_PORT:-54329}"
PG_DB="${HONED_PG_DB:-honed_test}"
PG_USER=postgres

log() { echo "start-postgres: $*" >&2; }

find_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; fi
}

BIN=$(find_bindir)
if [ -z "$BIN" ]; then
  log "no PostgreSQL server found: installing Debian's postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
  BIN=$(find_bindir)
  [ -n "$BIN" ] || { log "postgresql installed but no pg_ctl under /usr/lib/postgresql"; exit 1; }
fi

# The server refuses to run as root: run its tools as the postgres user then.
as_pg() {
  if [ "$(id -u)" = "0" ]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}
if [ "$(id -u)" != "0" ]; then PG_USER=$(id -un); fi

mkdir -p "$PG_DIR"
if [ "$(id -u)" = "0" ]; then chown "$PG_USER" "$PG_DIR"; fi
chmod 700 "$PG_DIR"

if [ ! -f "$PG_DIR/PG_VERSION" ]; then
  log "initialising $PG_DIR"
  as_pg "$BIN/initdb" -D "$PG_DIR" -U "$PG_USER" --auth=trust --encoding=UTF8 >&2
fi

if ! as_pg "$BIN/pg_ctl" -D "$PG_DIR" status >/dev/null 2>&1; then
  log "starting on 127.0.0.1:$PG_PORT"
  as_pg "$BIN/pg_ctl" -D "$PG_DIR" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR" start >&2
fi

if ! as_pg "$BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
  log "creating database $PG_DB"
  as_pg "$BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$PG_DB" >&2
fi

echo "export HONED_TEST_PG_URL=postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
