#!/usr/bin/env bash
# Rebalance-churn test (the fault suite's scenario 3): the release generator produces N events
# (default 1,200,000 at 10,000/s) to a private broker while release collectors join and leave the
# group every CHURN_EVERY seconds (default 20): one is added until three run, then the oldest is
# stopped (SIGTERM, the way an orchestrator scales down) until one runs, and again, so every step
# moves partitions between members. Passes with exactly N rows, N distinct ids and stored offsets
# covering N: no rebalance loses or repeats a record. Needs the release binaries (setup.sh builds
# them). Ends with "churn-test: N passed, M failed".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/lib.sh"
source "$ROOT/integration-tests/fault-lib.sh"

N=${LOGPIPE_CHURN_EVENTS:-1200000}
RATE=${LOGPIPE_CHURN_RATE:-10000}
EVERY=${LOGPIPE_CHURN_EVERY:-20}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/logpipe-churn.XXXXXX")
DB=logpipe_churn_test
DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB"
BIN=$CARGO_TARGET_DIR/release
BROKER_PORT=$(free_port)
GEN_PORT=$(free_port)
export LOGPIPE_KAFKA_BROKERS=127.0.0.1:$BROKER_PORT LOGPIPE_DATABASE_URL=$DB_URL RUST_LOG=${LOGPIPE_CHURN_LOG:-info,librdkafka=warn}

passed=0
failed=0
RUNNING=()  # collector names, oldest first
NEXT=1
finish() {
    fault_end "${acked:-}" "${rows:-}" "${distinct:-}"
    if [ "$failed" -ne 0 ]; then
        for c in "${RUNNING[@]}"; do
            echo "collector $c /ready: $(curl -s --max-time 2 "http://127.0.0.1:$(cat "$RUN/$c.port")/ready")"
        done
    fi
    for f in "$RUN"/c*.pid; do [ -f "$f" ] && stop_pid "$(basename "$f" .pid)" "$f" 15 >/dev/null; done
    for name in generator broker; do stop_pid "$name" "$RUN/$name.pid" 15 >/dev/null; done
    echo "fenced batches: $(cat "$RUN"/c*.log 2>/dev/null | grep -c 'batch fenced')"
    fault_exit "churn-test"
}
trap finish EXIT
sql() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" -tAc "$1" 2>/dev/null; }
stored() { sql "SELECT COALESCE(sum(next_offset), 0) FROM consumer_offsets" || echo 0; }
fault_acked() { generator_field "$GEN_PORT" events_acked; }
fault_stored() { sql "SELECT COALESCE(sum(next_offset), 0) FROM consumer_offsets"; }

fault_test_setup "$DB" || exit 1
start_test_broker "$RUN" "$BROKER_PORT" || { check "broker starts" false; exit 1; }

# Dynamic members; a partition nobody stores is reported after 10 s.
printf '[consumer]\norphan_after_secs = 10\n' >"$RUN/collector.toml"
add_collector() {
    local name=c$NEXT port
    port=$(free_port)
    NEXT=$((NEXT + 1))
    echo "$port" >"$RUN/$name.port"
    start_test_service "$name" "$RUN" "$port" "$BIN/logpipe-collector" --port "$port" \
        --config "$RUN/collector.toml" || return 1
    RUNNING+=("$name")
}
remove_oldest() {
    local name=${RUNNING[0]}
    RUNNING=("${RUNNING[@]:1}")
    stop_pid "$name" "$RUN/$name.pid" 30 >/dev/null
}

add_collector || { check "the first collector starts" false; exit 1; }
start_test_service generator "$RUN" "$GEN_PORT" "$BIN/logpipe-generator" --port "$GEN_PORT" \
    || { check "generator starts" false; exit 1; }
start_generation "$GEN_PORT" "{\"rate_per_second\": $RATE, \"count\": $N, \"batch_size\": 1000, \"threads\": 2}" \
    || { check "generation starts" false; exit 1; }
fault_begin churn

growing=1
steps=0
start_failed=0
while [ "$(generator_field "$GEN_PORT" state)" = running ]; do
    sleep "$EVERY"
    [ "$(generator_field "$GEN_PORT" state)" = running ] || break
    steps=$((steps + 1))
    if [ "$growing" = 1 ]; then
        fault_mark "fault add collector c$NEXT (${#RUNNING[@]} running)"
        add_collector || start_failed=$((start_failed + 1))
        [ "${#RUNNING[@]}" -ge 3 ] && growing=0
    else
        fault_mark "fault stop collector ${RUNNING[0]} (${#RUNNING[@]} running)"
        remove_oldest
        [ "${#RUNNING[@]}" -le 1 ] && growing=1
    fi
done
fault_mark "healed churn over after $steps steps (${#RUNNING[@]} running)"
check "collectors joined and left $steps times during the run (at least 3)" [ "$steps" -ge 3 ]
check "every added collector started" [ "$start_failed" = 0 ]

deadline=$((SECONDS + 240))
while [ $SECONDS -lt $deadline ]; do
    [ "$(stored)" = "$N" ] && break
    sleep 1
done
acked=$(generator_field "$GEN_PORT" events_acked)
check "generator acknowledged all $N events" [ "$acked" = "$N" ]
check "stored offsets cover all $N records" [ "$(stored)" = "$N" ]
rows=$(sql 'SELECT count(*) FROM log_events')
distinct=$(sql 'SELECT count(DISTINCT event_id) FROM log_events')
check "exactly $N rows" [ "$rows" = "$N" ]
check "$N distinct event ids" [ "$distinct" = "$N" ]
for c in "${RUNNING[@]}"; do
    check "collector $c is ready at the end" wait_http "http://127.0.0.1:$(cat "$RUN/$c.port")/ready" 30
done
