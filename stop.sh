#!/usr/bin/env bash
# Stop exactly what ./setup.sh started, by pid: SIGTERM, a drain deadline, then SIGKILL.
#
#   ./stop.sh            (LOGPIPE_RUN_DIR and LOGPIPE_STOP_DEADLINE_SECS override the defaults)
#
# Order matters: the gateway first (no new requests), then the generator (flushes its producer); then
# a bounded wait until the collector has stored everything the broker holds (LOGPIPE_STOP_DRAIN_SECS,
# default 120), the collector (commits its last batch), and the broker last. Nothing is killed by name.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"
cd "$LOGPIPE_ROOT"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-logpipe}

RUN_DIR=${LOGPIPE_RUN_DIR:-$LOGPIPE_ROOT/.run}
DEADLINE=${LOGPIPE_STOP_DEADLINE_SECS:-20}

if [ ! -d "$RUN_DIR/pids" ] || [ -z "$(ls -A "$RUN_DIR/pids" 2>/dev/null)" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1 && [ -n "$(docker compose ps -q 2>/dev/null)" ]; then
        log "stopping the docker compose stack"
        docker compose down
    else
        log "nothing to stop: no pid files in $RUN_DIR/pids"
    fi
    exit 0
fi

# Sum of the collector's per-partition lag, or nothing when it cannot be read.
collector_lag() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null \
        | awk '/^collector_consumer_lag\{/ { sum += $2; n++ } END { if (n > 0) printf "%d\n", sum }'
}

# With producers stopped, wait (bounded) until the collector has stored everything the broker
# holds: an in-memory broker loses whatever is still unstored when it stops. The collector
# refreshes its lag every 5 s, so only a reading taken after the producers stopped counts.
drain_collector() {
    local port secs=${LOGPIPE_STOP_DRAIN_SECS:-120} lag=""
    pid_alive "$RUN_DIR/pids/collector.pid" logpipe-collector || return 0
    pid_alive "$RUN_DIR/pids/broker.pid" tansu || return 0
    port=$(sed -n 's/^COLLECTOR_PORT=//p' "$RUN_DIR/ports.env" 2>/dev/null)
    port=${port:-${LOGPIPE_COLLECTOR_PORT:-8082}}
    log "waiting (up to ${secs}s) for the collector to store what the broker holds"
    sleep 6
    for _ in $(seq 1 "$secs"); do
        lag=$(collector_lag "$port")
        if [ -z "$lag" ]; then
            log "warning: cannot read the collector's lag on port $port; stopping without waiting"
            return 0
        fi
        [ "$lag" -le 0 ] && { log "collector drained (lag 0)"; return 0; }
        sleep 1
    done
    log "warning: the collector still lags by $lag records after ${secs}s; they stay unstored if the broker keeps nothing"
}

for name in prometheus gateway generator; do
    stop_pid "$name" "$RUN_DIR/pids/$name.pid" "$DEADLINE"
done
drain_collector
for name in collector broker; do
    stop_pid "$name" "$RUN_DIR/pids/$name.pid" "$DEADLINE"
done
log "all stopped; logs kept in $RUN_DIR/logs"
