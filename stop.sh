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
[ -f "$RUN_DIR/internal-auth.header" ] && export LOGPIPE_INTERNAL_HEADER=$RUN_DIR/internal-auth.header
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

# The collector's lag as "SUM SERIES", "none" when its metrics hold no lag series (it owns no
# partition yet: just started, or waiting for the group to hand it partitions), or nothing when its
# metrics cannot be read at all.
collector_lag() {
    local body
    body=$(internal_curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null) || return 0
    awk '/^collector_consumer_lag\{/ { sum += $2; n++ }
         END { if (n > 0) printf "%d %d\n", sum, n; else print "none" }' <<<"$body"
}

# With producers stopped, wait (bounded) until the collector has stored everything the broker
# holds: an in-memory broker loses whatever is still unstored when it stops. The collector
# refreshes its lag every 5 s, so only a reading taken after the producers stopped counts.
# A collector that owns no partition yet (after a SIGKILL the group may hand it none until the
# dead member expires and it rejoins) exports no lag: that is waited out, not read as "drained";
# only a collector whose metrics cannot be read at all ends the wait early.
drain_collector() {
    local port secs=${LOGPIPE_STOP_DRAIN_SECS:-120} reading="" told=""
    pid_alive "$RUN_DIR/pids/collector.pid" logpipe-collector || return 0
    pid_alive "$RUN_DIR/pids/broker.pid" "$BROKER_PROCESS" || return 0
    port=$(sed -n 's/^COLLECTOR_PORT=//p' "$RUN_DIR/ports.env" 2>/dev/null)
    port=${port:-${LOGPIPE_COLLECTOR_PORT:-8082}}
    log "waiting (up to ${secs}s) for the collector to store what the broker holds"
    sleep 6
    for _ in $(seq 1 "$secs"); do
        reading=$(collector_lag "$port")
        case "$reading" in
            "")
                log "warning: cannot read the collector's metrics on port $port; stopping without waiting"
                return 0
                ;;
            none)
                if [ -z "$told" ]; then
                    log "the collector owns no partition yet (no lag to read); waiting for the group to assign them"
                    told=1
                fi
                ;;
            *)
                if [ "${reading%% *}" -le 0 ]; then
                    log "collector drained (lag 0 over ${reading#* } partitions)"
                    return 0
                fi
                ;;
        esac
        sleep 1
    done
    if [ "$reading" = none ]; then
        log "warning: the collector still owns no partition after ${secs}s; what the broker holds stays unstored if it keeps nothing"
    else
        log "warning: the collector still lags by ${reading%% *} records after ${secs}s; they stay unstored if the broker keeps nothing"
    fi
}

for name in prometheus gateway generator; do
    stop_pid "$name" "$RUN_DIR/pids/$name.pid" "$DEADLINE"
done
drain_collector
for name in collector broker; do
    stop_pid "$name" "$RUN_DIR/pids/$name.pid" "$DEADLINE"
done
log "all stopped; logs kept in $RUN_DIR/logs"
