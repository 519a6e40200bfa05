#!/usr/bin/env bash
# Poison records mixed into a large run (the fault suite's scenario 8): the release generator
# produces RATE events/s (default 10,000) for RUN_SECS (default 60) to a private broker that one
# release collector drains, while logpipe-poison (integration-tests/src/bin) writes ROUNDS (default
# 20) rounds of the records no row can hold straight into the raw topic, one round a second: NUL in
# a message, NUL deep in attributes, timestamps at -5000, year 0 and +10000, invalid UTF-8 in a JSON
# record and in a raw line, a 40 KiB message, a syslog line cut inside a multibyte character (the
# set tests/poison.rs checks, which adds records the database itself refuses). Debian's kcat cannot
# be the raw producer: its librdkafka 2.0.2 failed Tansu 0.6's ApiVersions answer ("Read underflow").
# Passes when exactly those records are in logs.dlq, ROUNDS of each kind, each with its source and
# error headers; none of them is in PostgreSQL, every acknowledged event is stored once, lag is back
# to 0 and the collector never restarted. Ends with "poison-run-test: N passed, M failed".
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

RATE=${LOGPIPE_POISON_RATE:-10000}
RUN_SECS=${LOGPIPE_POISON_RUN_SECS:-60}
ROUNDS=${LOGPIPE_POISON_ROUNDS:-20}
fault_setup poison logpipe_poison_run GEN_PORT COL_PORT

finish() {
    fault_end "${acked:-}" "${rows:-}" "${distinct:-}"
    if [ "$failed" -ne 0 ]; then
        collector_said "$COL_PORT" "$RUN/collector.log"
    fi
    fault_stop generator collector broker
    fault_exit "poison-run-test"
}
trap finish EXIT
fault_stored() { sql "SELECT count(*) FROM log_events"; }

[ -x "$BIN/logpipe-poison" ] || { check "logpipe-poison is built (fault-suite.sh builds it)" false; exit 1; }
fault_prepare
fault_collector collector "$COL_PORT"
collector_pid=$(cat "$RUN/collector.pid")
fault_generate "{\"rate_per_second\": $RATE, \"duration_secs\": $RUN_SECS}"
fault_begin poison-run

sleep 3
fault_mark "fault poison rounds begin"
produced=$("$BIN/logpipe-poison" produce "$LOGPIPE_KAFKA_BROKERS" "$ROUNDS" 2>"$RUN/poison.err")
fault_mark "healed poison rounds over"
check "logpipe-poison wrote $ROUNDS rounds ($produced)" [ -n "$produced" ]

acked=$(wait_generation_done "$GEN_PORT" $((RUN_SECS + 120)))
for _ in $(seq 1 120); do
    [ "$(fault_stored)" -ge "${acked:-0}" ] 2>/dev/null && [ "$(collector_metric_sum "$COL_PORT" collector_consumer_lag)" = 0 ] && break
    sleep 1
done
sleep 2
rows=$(sql 'SELECT count(*) FROM log_events')
distinct=$(sql 'SELECT count(DISTINCT event_id) FROM log_events')
"$BIN/logpipe-poison" dlq "$LOGPIPE_KAFKA_BROKERS" "$ROUNDS" >"$RUN/dlq.txt" 2>>"$RUN/poison.err"
dlq_rc=$?
cat "$RUN/dlq.txt"
check "exactly the poison records are in logs.dlq, $ROUNDS of each kind, each with its headers" \
    [ "$dlq_rc" = 0 ]
check "none of them is in PostgreSQL" [ "$(sql "SELECT count(*) FROM log_events WHERE service = 'poison'")" = 0 ]
check "every acknowledged event is stored ($rows rows for $acked acknowledged)" [ "$rows" = "$acked" ]
check "each once ($distinct distinct ids)" [ "$distinct" = "$rows" ]
check "lag is back to 0" [ "$(collector_metric_sum "$COL_PORT" collector_consumer_lag)" = 0 ]
check "the collector never restarted" same_process "$RUN/collector.pid" "$collector_pid"
check "the collector is ready" wait_http "http://127.0.0.1:$COL_PORT/ready" 10
