#!/usr/bin/env bash
# The console in a real browser: a stack from ./setup.sh --with-keys on its own ports, run directory
# and database; Debian's headless Chromium driven by playwright-core (npm) runs
# integration-tests/console/console-test.mjs against the gateway's page, and saves screenshots.
#
#   integration-tests/console-test.sh [SCREENSHOT_DIR]
#
# Installs what it needs once per machine: the `chromium` package, and playwright-core into
# ~/.cache/logpipe/node. Ends with "console-test: N passed, M failed".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/lib.sh"

SHOTS=${1:-${TMPDIR:-/tmp}/logpipe-console-shots}
mkdir -p "$SHOTS"
[ -x /usr/bin/chromium ] || apt_install chromium
command -v node >/dev/null || apt_install nodejs npm
NODE_DIR=$LOGPIPE_CACHE/node
if [ ! -d "$NODE_DIR/node_modules/playwright-core" ]; then
    log "installing playwright-core into $NODE_DIR (once per machine)"
    mkdir -p "$NODE_DIR"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent playwright-core@1 >/dev/null \
        || die "npm install playwright-core failed"
fi

LOGPIPE_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/logpipe-console.XXXXXX")
export LOGPIPE_RUN_DIR
LOGPIPE_BROKER_PORT=${LOGPIPE_CONSOLE_BROKER_PORT:-$(free_port)}
LOGPIPE_GENERATOR_PORT=$(free_port)
LOGPIPE_COLLECTOR_PORT=$(free_port)
LOGPIPE_GATEWAY_PORT=$(free_port)
LOGPIPE_DB_NAME=logpipe_console_test
export LOGPIPE_BROKER_PORT LOGPIPE_GENERATOR_PORT LOGPIPE_COLLECTOR_PORT LOGPIPE_GATEWAY_PORT LOGPIPE_DB_NAME
ensure_postgres
psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "DROP DATABASE IF EXISTS $LOGPIPE_DB_NAME" >/dev/null

rc=1
finish() {
    bash "$ROOT/stop.sh" >/dev/null 2>&1 || true
    if [ "$rc" -eq 0 ]; then
        rm -rf "$LOGPIPE_RUN_DIR"
    else
        echo "logs kept in $LOGPIPE_RUN_DIR/logs; the collector's last warnings:"
        grep -E ' (WARN|ERROR) ' "$LOGPIPE_RUN_DIR/logs/collector.log" 2>/dev/null | tail -15 | cut -c1-300
    fi
}
trap finish EXIT
trap 'exit 130' INT TERM

setup_log="$LOGPIPE_RUN_DIR/setup.log"
if ! bash "$ROOT/setup.sh" --native --no-generate --with-keys >"$setup_log" 2>&1; then
    tail -30 "$setup_log"
    echo "console-test: 0 passed, 1 failed"
    exit 1
fi
ADMIN_KEY=$(awk '$1 == "admin" && $2 ~ /^lp_/ { print $2 }' "$setup_log")
[ -n "$ADMIN_KEY" ] || { echo "console-test: 0 passed, 1 failed (no admin key printed)"; exit 1; }

LOGPIPE_NODE_DIR="$NODE_DIR" LOGPIPE_CONSOLE_URL="http://127.0.0.1:$LOGPIPE_GATEWAY_PORT" \
    LOGPIPE_ADMIN_KEY=$ADMIN_KEY LOGPIPE_SHOTS=$SHOTS \
    node "$ROOT/integration-tests/console/console-test.mjs"
rc=$?
exit "$rc"
