#!/usr/bin/env bash
# The whole-path fuzzer, long form: generated events through the real gateway (and straight into
# the raw topic) to the real collector and PostgreSQL, then every promise checked (see
# integration-tests/src/fuzz): no 5xx or dropped connection, a marker stored within 30 s after
# each chunk, every acknowledged record stored exactly once or in the DLQ with a reason, lag back
# to 0, the query API answering 200 over the run's range, memory bounded.
#
#   ./fuzz.sh [--cases N] [--seed S]
#
# N generated events (default 100,000), seed S (default: a fresh one, printed; the same seed
# replays the run). Starts a private in-memory broker on its own port, uses the logpipe_test
# database (its own schema) and Redis, and stops the broker at the end. The test command runs the
# short form (tests/fuzz.rs, 3,000 events). Exit code: 0 every promise held, 1 a failure.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"
cd "$LOGPIPE_ROOT" || exit 1

case " $* " in *" --help "*|*" -h "*) sed -n '2,13p' "$0"; exit 0 ;; esac
ensure_build_deps
ensure_postgres
ensure_redis
ensure_broker
ensure_database logpipe_test

RUN=$(mktemp -d "${TMPDIR:-/tmp}/logpipe-fuzz.XXXXXX")
BROKER_PORT=$(free_port)
cleanup() {
    stop_pid "fuzz broker" "$RUN/broker.pid" 10 >/dev/null
    rm -rf "$RUN"
}
trap cleanup EXIT

cargo build --release --locked -p logpipe-integration-tests --bin logpipe-fuzz \
    || die "building logpipe-fuzz failed"
broker_command "$BROKER_PORT" "$(broker_storage memory)"
start_bg "fuzz broker" "$RUN" "$RUN/broker.log" "$RUN/broker.pid" "${BROKER_CMD[@]}"
wait_port 127.0.0.1 "$BROKER_PORT" 30 || { cat "$RUN/broker.log"; die "fuzz broker did not start"; }

LOGPIPE_TEST_BROKERS="127.0.0.1:$BROKER_PORT" \
LOGPIPE_TEST_DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/logpipe_test" \
    "$CARGO_TARGET_DIR/release/logpipe-fuzz" "$@"
