#!/usr/bin/env bash
# The console in a real browser: a stack from ./setup.sh --with-keys on its own ports, run directory
# and database; Debian's headless Chromium driven by playwright-core (npm) runs
# integration-tests/console/console-test.mjs against the gateway's page, and saves screenshots.
# Before it, integration-tests/console/hostile-page.mjs: a page on another origin against a second,
# open gateway of the same stack, trying what a malicious site could (nothing may change).
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
    [ -f "$LOGPIPE_RUN_DIR/pids/open-gateway.pid" ] && stop_pid open-gateway "$LOGPIPE_RUN_DIR/pids/open-gateway.pid" 10 >/dev/null 2>&1
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

# A second gateway of the same stack, open (no keys) on loopback, as `./setup.sh` without
# --with-keys runs it: only the browser protections stand between a page and the pipeline.
OPEN_PORT=$(free_port)
start_bg open-gateway "$LOGPIPE_RUN_DIR" "$LOGPIPE_RUN_DIR/logs/open-gateway.log" "$LOGPIPE_RUN_DIR/pids/open-gateway.pid" \
    "$CARGO_TARGET_DIR/release/logpipe-gateway" --port "$OPEN_PORT" --brokers "127.0.0.1:$LOGPIPE_BROKER_PORT" \
    --generator-urls "http://127.0.0.1:$LOGPIPE_GENERATOR_PORT" \
    --collector-url "http://127.0.0.1:$LOGPIPE_COLLECTOR_PORT" \
    --internal-token-file "$LOGPIPE_RUN_DIR/internal-token" >/dev/null
wait_http "http://127.0.0.1:$OPEN_PORT/ready" 60 || log "the open gateway is not ready; see $LOGPIPE_RUN_DIR/logs/open-gateway.log"
LOGPIPE_NODE_DIR="$NODE_DIR" LOGPIPE_OPEN_GATEWAY_URL="http://127.0.0.1:$OPEN_PORT" \
    LOGPIPE_GENERATOR_URL="http://127.0.0.1:$LOGPIPE_GENERATOR_PORT" \
    LOGPIPE_COLLECTOR_URL="http://127.0.0.1:$LOGPIPE_COLLECTOR_PORT" \
    node "$ROOT/integration-tests/console/hostile-page.mjs" | tee "$LOGPIPE_RUN_DIR/hostile-page.log"
LOGPIPE_NODE_DIR="$NODE_DIR" LOGPIPE_CONSOLE_URL="http://127.0.0.1:$LOGPIPE_GATEWAY_PORT" \
    LOGPIPE_ADMIN_KEY=$ADMIN_KEY LOGPIPE_SHOTS=$SHOTS \
    node "$ROOT/integration-tests/console/console-test.mjs" | tee "$LOGPIPE_RUN_DIR/console-page.log"
counts() { sed -nE "s/^$1: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p" "$2"; }
read -r hp hf <<<"$(counts hostile-page "$LOGPIPE_RUN_DIR/hostile-page.log")"
read -r cp cf <<<"$(counts console-page "$LOGPIPE_RUN_DIR/console-page.log")"
# A script that died before its count line is a failure.
passed_n=$(( ${hp:-0} + ${cp:-0} ))
failed_n=$(( ${hf:-1} + ${cf:-1} ))
echo "console-test: $passed_n passed, $failed_n failed"
[ "$failed_n" -eq 0 ] && rc=0
exit "$rc"
