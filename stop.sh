#!/usr/bin/env bash
# Stop exactly what ./setup.sh started, by pid: SIGTERM, a drain deadline, then SIGKILL.
#
#   ./stop.sh            (LOGPIPE_RUN_DIR and LOGPIPE_STOP_DEADLINE_SECS override the defaults)
#
# Order matters: the gateway first (no new requests), then the generator (flushes its producer), the
# collector (commits its last batch), and the broker last. Nothing is killed by name.
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

for name in prometheus gateway generator collector broker; do
    stop_pid "$name" "$RUN_DIR/pids/$name.pid" "$DEADLINE"
done
log "all stopped; logs kept in $RUN_DIR/logs"
