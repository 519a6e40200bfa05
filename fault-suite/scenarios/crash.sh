#!/usr/bin/env bash
# Crash test for the collector's exactly-once delivery: N events (default 1,000,000) are produced by
# the release generator to a private broker while the release collector drains them into its own
# database; the collector is killed with SIGKILL at random moments (KILLS times, default 3) and
# restarted each time. Passes when Postgres ends with exactly N rows, N distinct event ids, and the
# stored offsets cover all N records. Needs the release binaries (setup.sh builds them).
# The collector runs as a dynamic group member, as by default (with `--group-instance-id`, static
# membership, Tansu 0.6's coordinator wedged the group in 2 of 11 runs; deploy/nisshi/README.md).
# A restarted dynamic member waits up to the session timeout (10 s) for the killed one to expire.
# Ends with "crash-test: N passed, M failed".
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

N=${LOGPIPE_CRASH_EVENTS:-1000000}
KILLS=${LOGPIPE_CRASH_KILLS:-3}
# The collector logs at info (its assignments and resumes), so a failed run can be read afterwards.
fault_setup crash logpipe_crash_test GEN_PORT COL_PORT

finish() {
    if [ "$failed" -ne 0 ]; then
        collector_said "$COL_PORT" "$RUN/collector.log"
        curl -fsS --max-time 2 "http://127.0.0.1:$COL_PORT/metrics" 2>/dev/null \
            | grep -E '^collector_(consumer_lag|events_consumed_total|events_stored_total)' || true
    fi
    fault_end "${acked:-}" "${rows:-}" "${distinct:-}"
    fault_stop collector generator broker
    echo "offset gaps re-fetched by the collector: $(grep -c 'offset gap' "$RUN/collector.log" 2>/dev/null || true)"
    fault_exit "crash-test"
}
trap finish EXIT

fault_prepare

start_collector() {
    start_bg collector "$RUN" "$RUN/collector.log" "$RUN/collector.pid" \
        "$BIN/logpipe-collector" --port "$COL_PORT" >/dev/null
}
start_collector
wait_http "http://127.0.0.1:$COL_PORT/ready" 60 || { check "collector starts" false; exit 1; }
fault_generate "{\"rate_per_second\": 100000, \"count\": $N, \"batch_size\": 1000, \"threads\": 2}"

fault_begin crash
for k in $(seq 1 "$KILLS"); do
    # Each kill hits a collector that is writing: wait until the stored offsets move (the restarted
    # collector got the partitions once the killed member's session expired), then pick a random
    # moment 0.5-4 s later.
    wait_offsets_move 60
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.5, 4), 2))')"
    echo "kill -9 collector #$k at $(offsets_stored) stored offsets"
    fault_mark "fault SIGKILL collector #$k"
    kill -KILL "$(cat "$RUN/collector.pid")" 2>/dev/null
    sleep 0.5
    start_collector
    fault_mark "healed collector #$k restarted"
done

wait_offsets_stored "$N" 300
check_stored_exactly "$N"
# The windows were upserted in the offsets' transactions, so however the kills cut the batches, each
# 60 s window counts exactly the stored rows it covers (an event later than the allowed lateness
# would count in no window: the generator's events are in order per partition, so none is).
window_mismatches=$(sql "WITH w AS (SELECT window_start, service, level, event_count FROM window_stats
      WHERE width_secs = 60 AND slide_secs = 60),
    r AS (SELECT to_timestamp(floor(extract(epoch FROM ts) / 60) * 60) AS window_start, service, level,
      count(*) AS event_count FROM log_events GROUP BY 1, 2, 3)
    SELECT count(*) FROM w FULL JOIN r USING (window_start, service, level)
    WHERE w.event_count IS DISTINCT FROM r.event_count")
check "every 60 s window count equals a recount of the stored rows ($window_mismatches differ)" \
    [ "$window_mismatches" = 0 ]
