#!/usr/bin/env bash
# The one test command: every test, unit to end-to-end, against real Redis, PostgreSQL and a
# Kafka-API broker (nisshi).
#
#   ./test.sh
#
# 1. ensures the dependencies the way setup.sh does (apt build deps, PostgreSQL, Redis, nisshi,
#    which on a fresh machine builds beside the tests' own build); then the lint gate
#    (scripts/lint.sh: cargo fmt --check, clippy -D warnings, shellcheck): a lint failure fails
#    the run, the tests still run so one run reports everything;
# 2. starts a private in-memory broker on its own port for the run, and stops it at the end;
# 3. runs `cargo test --workspace` (each integration test uses its own topics, schema, group);
# 4. runs integration-tests/system-test.sh, which brings a whole stack up with setup.sh on its own
#    ports and run directory, checks it (including both trace chains, through a Zipkin stand-in),
#    and tears it down with stop.sh;
# 5. runs ./fault-suite.sh --short, the fault suite's short form (release binaries): the collector
#    SIGKILLed 3 times during 1,000,000 events (exactly 1,000,000 rows, ids, offsets, and window
#    counts equal to a recount); one of two collectors frozen past its session timeout (a zombie);
#    collectors joining and leaving every 12 s; the broker SIGKILLed and restarted during 10,000
#    events/s, in memory (restarted empty) and durable (SQLite, restarted on its data); a private
#    PostgreSQL stopped 15 s, then read-only 15 s; Redis killed under load; poison records; slow
#    clients; each with every acknowledged event stored once, and a table and charts in its report;
# 6. (the full fault suite, ./fault-suite.sh, is run by hand: README, "Fault tests");
# 7. runs ./load-test.sh steady --own-stack, the load test's short form (20,000 events/s for 15 s
#    on a private stack, loss by event id, ceilings, 5 s of the bare stages at the held rate,
#    report): the tool itself cannot rot;
#    then ./storage-bench.sh's short form (200,000 rows: partitioned vs unpartitioned COPY, every
#    query of the API answered, retention's drop; its checks are of answers, not of times);
#    then integration-tests/console-test.sh: the console in headless Chromium against a keyed
#    stack (charts, window table, alerts, a filtered live tail across a dropped connection);
# Exits non-zero on any failure; the last line is the summary over all of it.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"
cd "$LOGPIPE_ROOT" || exit 1

ensure_build_deps
ensure_postgres
ensure_redis
ensure_database logpipe_test
ensure_shipper_clients
# On a fresh machine the broker and the tests build side by side (as in setup.sh); a failure
# here is reported by `cargo test` below, with its compiler output.
build_beside_broker "the tests" 0 "$LOGPIPE_CACHE/test-build.log" \
    cargo test --workspace --locked --no-run \
    || log "building the tests failed; cargo test below shows why"
ensure_broker   # built by now, unless a failed test build stopped it
# The budget tests run a private redis-server of their own, to stop and restart it.
command -v redis-server >/dev/null || apt_install redis-server

log "lint gate"
bash scripts/lint.sh
lint_rc=$?

TEST_RUN=$(mktemp -d "${TMPDIR:-/tmp}/logpipe-test.XXXXXX")
BROKER_PORT=${LOGPIPE_TEST_BROKER_PORT:-19092}
while port_open 127.0.0.1 "$BROKER_PORT"; do BROKER_PORT=$((BROKER_PORT + 1)); done

cleanup() {
    stop_pid "test broker" "$TEST_RUN/broker.pid" 10 >/dev/null
    rm -rf "$TEST_RUN"
}
trap cleanup EXIT

broker_command "$BROKER_PORT" "$(broker_storage memory)"
start_bg "test broker" "$TEST_RUN" "$TEST_RUN/broker.log" "$TEST_RUN/broker.pid" "${BROKER_CMD[@]}"
wait_port 127.0.0.1 "$BROKER_PORT" 30 || { cat "$TEST_RUN/broker.log"; die "test broker did not start"; }

export LOGPIPE_TEST_BROKERS="127.0.0.1:$BROKER_PORT"
export LOGPIPE_TEST_DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/logpipe_test"

log "cargo test --workspace (broker $LOGPIPE_TEST_BROKERS)"
cargo test --workspace --locked 2>&1 | tee "$TEST_RUN/cargo-test.log"
cargo_rc=${PIPESTATUS[0]}

log "system test"
bash integration-tests/system-test.sh 2>&1 | tee "$TEST_RUN/system-test.log"
system_rc=${PIPESTATUS[0]}

log "fault suite (short form)"
bash fault-suite.sh --short --report-dir "$TEST_RUN/fault-report" 2>&1 | tee "$TEST_RUN/fault-suite.log"
fault_rc=${PIPESTATUS[0]}

log "load test (short form)"
bash load-test.sh steady --own-stack --rate 20000 --duration-secs 15 --ceiling-events 100000 \
    --paced-ceiling-secs 5 \
    --report-dir "$TEST_RUN/load-test-report" 2>&1 | tee "$TEST_RUN/load-test.log"
load_rc=${PIPESTATUS[0]}

log "storage benchmark (short form)"
bash storage-bench.sh --rows 200000 --ratio-rows 50000 --repeat 3 --ingest-rate 20000 \
    --ingest-secs 3 --report-dir "$TEST_RUN/storage-bench-report" 2>&1 | tee "$TEST_RUN/storage-bench.log"
storage_rc=${PIPESTATUS[0]}

log "console test (headless Chromium)"
bash integration-tests/console-test.sh "$TEST_RUN/console-shots" 2>&1 | tee "$TEST_RUN/console-test.log"
console_rc=${PIPESTATUS[0]}


passed=0
failed=0
while read -r p f; do
    passed=$((passed + p))
    failed=$((failed + f))
done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$TEST_RUN/cargo-test.log"
         sed -nE 's/^system-test: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$TEST_RUN/system-test.log"
         sed -nE 's/^[a-z-]+-test( \([a-z]+\))?: ([0-9]+) passed, ([0-9]+) failed$/\2 \3/p' "$TEST_RUN/fault-suite.log"
         sed -nE 's/^load-test: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$TEST_RUN/load-test.log"
         sed -nE 's/^storage-bench: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$TEST_RUN/storage-bench.log"
         sed -nE 's/^console-test: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$TEST_RUN/console-test.log")
# A crash that printed no result line still fails the run; so does the lint gate.
if [ "$cargo_rc" -ne 0 ] || [ "$system_rc" -ne 0 ] || [ "$fault_rc" -ne 0 ] \
    || [ "$load_rc" -ne 0 ] || [ "$storage_rc" -ne 0 ] || [ "$console_rc" -ne 0 ]; then
    [ "$failed" -gt 0 ] || failed=1
fi
[ "$lint_rc" -eq 0 ] || failed=$((failed + 1))
echo
echo "summary: $passed passed, $failed failed (lint gate: $([ "$lint_rc" -eq 0 ] && echo ok || echo FAILED))"
[ "$cargo_rc" -eq 0 ] && [ "$system_rc" -eq 0 ] && [ "$fault_rc" -eq 0 ] \
    && [ "$load_rc" -eq 0 ] && [ "$storage_rc" -eq 0 ] && [ "$console_rc" -eq 0 ] \
    && [ "$lint_rc" -eq 0 ]
