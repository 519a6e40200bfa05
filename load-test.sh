#!/usr/bin/env bash
# Whole-pipeline load test: drives a stack, counts loss and duplicates by event id in PostgreSQL,
# measures bare-client ceilings in the same run, and writes a report folder.
#
#   ./load-test.sh [ramp|burst|ingest|soak|steady] [--own-stack] [options of logpipe-load-test]
#
# Without --own-stack it uses the stack at the usual ports (LOGPIPE_GATEWAY_PORT etc., as setup.sh);
# when none answers it starts one with ./setup.sh --native --no-generate and stops it afterwards.
# --own-stack starts a private stack on free ports, with its own run directory, database and broker,
# and stops it at the end (what the test command runs). --with-keys has a stack it starts make API
# keys (./setup.sh --with-keys) and uses them, so keys and limits are in force (ingest scenario).
# Everything else goes to the binary:
#   --rate N --duration-secs N --step-rate N --max-rate N --hold-secs N --burst-factor N
#   --clients N --requests-per-second N --events-per-request N --profile NAME
#   --max-loss N --min-rate N --max-p99-ms N --max-rss-growth-pct N --report-dir DIR
# (./load-test.sh --help lists them all). Exit code: 0 thresholds met, 1 not met, 2 the run failed.
# With keys on the gateway, set LOGPIPE_ADMIN_KEY (and LOGPIPE_INGEST_KEY for ingest).
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"
cd "$LOGPIPE_ROOT" || exit 2

OWN=0
KEYS=0
PASS=()
for a in "$@"; do
    case $a in
        --own-stack) OWN=1 ;;
        --with-keys) KEYS=1 ;;
        -h|--help) sed -n '2,18p' "$0"; echo; PASS+=("$a") ;;
        *) PASS+=("$a") ;;
    esac
done

ensure_build_deps
# The charts' text is drawn with a system TrueType font.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_install fonts-dejavu-core
cargo build --release --locked -p logpipe-load-test >/dev/null 2>&1 \
    || cargo build --release --locked -p logpipe-load-test || die "building logpipe-load-test failed"
BIN=$CARGO_TARGET_DIR/release/logpipe-load-test
case " ${PASS[*]} " in *" --help "*|*" -h "*) exec "$BIN" --help ;; esac

STARTED=0
if [ "$OWN" = 1 ]; then
    LOGPIPE_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/logpipe-load.XXXXXX")
    LOGPIPE_BROKER_PORT=$(free_port)
    LOGPIPE_GENERATOR_PORT=$(free_port)
    LOGPIPE_COLLECTOR_PORT=$(free_port)
    LOGPIPE_GATEWAY_PORT=$(free_port)
    LOGPIPE_DB_NAME=logpipe_load_test
    export LOGPIPE_RUN_DIR LOGPIPE_BROKER_PORT LOGPIPE_GENERATOR_PORT LOGPIPE_COLLECTOR_PORT \
        LOGPIPE_GATEWAY_PORT LOGPIPE_DB_NAME
    # A fresh database each time: the run's rows are the only ones.
    ensure_postgres
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "DROP DATABASE IF EXISTS $LOGPIPE_DB_NAME" >/dev/null
fi
RUN_DIR=${LOGPIPE_RUN_DIR:-$LOGPIPE_ROOT/.run}
GATEWAY="http://127.0.0.1:${LOGPIPE_GATEWAY_PORT:-8090}"
COLLECTOR="http://127.0.0.1:${LOGPIPE_COLLECTOR_PORT:-8082}"

stop_started() {
    if [ "$STARTED" = 1 ]; then
        LOGPIPE_RUN_DIR=$RUN_DIR bash "$LOGPIPE_ROOT/stop.sh" >/dev/null 2>&1 || true
        [ "$OWN" = 1 ] && rm -rf "$RUN_DIR"
        log "stopped the stack this load test started"
    fi
}
trap stop_started EXIT
# A signal ends the script through its EXIT trap, so a stack it started is stopped.
trap 'exit 130' INT TERM

if ! curl -fsS --max-time 2 "$GATEWAY/ready" >/dev/null 2>&1; then
    log "no stack answers at $GATEWAY: starting one (./setup.sh --native --no-generate, run dir $RUN_DIR)"
    STARTED=1
    # Its own file (mode 0600, a fresh name): with --with-keys it holds the keys setup printed.
    setup_log=$(mktemp "${TMPDIR:-/tmp}/logpipe-load-setup.XXXXXX")
    KEY_ARGS=()
    [ "$KEYS" = 1 ] && KEY_ARGS=(--with-keys)
    LOGPIPE_RUN_DIR=$RUN_DIR bash "$LOGPIPE_ROOT/setup.sh" --native --no-generate "${KEY_ARGS[@]}" >"$setup_log" 2>&1 \
        || { tail -30 "$setup_log"; rm -f "$setup_log"; die "setup.sh failed"; }
    if [ "$KEYS" = 1 ]; then
        # setup.sh prints each key once ("  admin  lp_..."); they live only in this process.
        key_of() { awk -v role="$1" '$1 == role && $2 ~ /^lp_/ { print $2 }' "$setup_log"; }
        LOGPIPE_ADMIN_KEY=$(key_of admin)
        LOGPIPE_INGEST_KEY=$(key_of ingest)
        export LOGPIPE_ADMIN_KEY LOGPIPE_INGEST_KEY
    fi
    # Read once, then gone: it may hold keys, and every run without keys left one in /tmp too.
    rm -f "$setup_log"
    if [ "$KEYS" = 1 ] && { [ -z "$LOGPIPE_ADMIN_KEY" ] || [ -z "$LOGPIPE_INGEST_KEY" ]; }; then
        die "setup.sh --with-keys printed no keys"
    fi
fi

"$BIN" "${PASS[@]}" \
    --gateway "$GATEWAY" --collector "$COLLECTOR" \
    --brokers "127.0.0.1:${LOGPIPE_BROKER_PORT:-9092}" \
    --database-url "postgres://$PG_USER@$PG_HOST:$PG_PORT/${LOGPIPE_DB_NAME:-logpipe}" \
    --run-dir "$RUN_DIR"
