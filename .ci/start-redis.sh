#!/usr/bin/env bash
# Start a throwaway Redis server on loopback for the shared rate-limit tests; idempotent.
#
#   eval "$(.ci/start-redis.sh)"     # sets HONED_TEST_REDIS_URL
#
# Installs Debian's redis-server with apt-get when it is missing, then starts it as a daemon
# on 127.0.0.1 with no persistence (no RDB snapshots, no AOF: test counters only). Everything
# but the final `export` line goes to stderr.
# Settings: HONED_REDIS_DIR (pid/log folder), HONED_REDIS_PORT (default: 63790, or the next
# free port when that one is taken by something that is not our server).
set -euo pipefail

REDIS_DIR="${HONED_REDIS_DIR:-/tmp/honed-redis}"
PORT="${HONED_REDIS_PORT:-63790}"

log() { echo "start-redis: $*" >&2; }

if ! command -v redis-server >/dev/null; then
  log "no redis-server found: installing Debian's redis-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends redis-server >&2
  command -v redis-server >/dev/null || { log "redis-server installed but not on PATH"; exit 1; }
fi

ping() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }
port_taken() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

mkdir -p "$REDIS_DIR"
# Ours already runs (a previous call): reuse it.
if [ -f "$REDIS_DIR/port" ] && ping "$(cat "$REDIS_DIR/port")"; then
  PORT=$(cat "$REDIS_DIR/port")
else
  while port_taken "$PORT"; do PORT=$((PORT + 1)); done
  log "starting on 127.0.0.1:$PORT"
  redis-server --bind 127.0.0.1 --port "$PORT" --daemonize yes \
    --save "" --appendonly no --dir "$REDIS_DIR" \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" >&2
  for _ in $(seq 50); do ping "$PORT" && break; sleep 0.1; done
  ping "$PORT" || { log "redis-server did not answer on $PORT (see $REDIS_DIR/redis.log)"; exit 1; }
  echo "$PORT" >"$REDIS_DIR/port"
fi

echo "export HONED_TEST_REDIS_URL=redis://127.0.0.1:$PORT/0"
