#!/usr/bin/env bash
# Rebalance-churn test (the fault suite's scenario 3): the release generator produces N events
# (default 1,200,000 at 10,000/s) to a private broker while release collectors join and leave the
# group every CHURN_EVERY seconds (default 20): one is added until three run, then the oldest is
# stopped (SIGTERM, the way an orchestrator scales down) until one runs, and again, so every step
# moves partitions between members. Passes with exactly N rows, N distinct ids and stored offsets
# covering N: no rebalance loses or repeats a record. Needs the release binaries (setup.sh builds
# them). Ends with "churn-test: N passed, M failed".
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

N=${LOGPIPE_CHURN_EVENTS:-1200000}
RATE=${LOGPIPE_CHURN_RATE:-10000}
EVERY=${LOGPIPE_CHURN_EVERY:-20}
fault_setup churn logpipe_churn_test GEN_PORT

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
    fault_stop generator broker
    echo "fenced batches: $(cat "$RUN"/c*.log 2>/dev/null | grep -c 'batch fenced')"
    fault_exit "churn-test"
}
trap finish EXIT

fault_prepare

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
fault_generate "{\"rate_per_second\": $RATE, \"count\": $N, \"batch_size\": 1000, \"threads\": 2}"
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

wait_offsets_stored "$N" 240
check_stored_exactly "$N"
for c in "${RUNNING[@]}"; do
    check "collector $c is ready at the end" wait_http "http://127.0.0.1:$(cat "$RUN/$c.port")/ready" 30
done
