#!/usr/bin/env bash
# Slow and abusive clients (the fault suite's scenario 11): a release gateway on a private broker,
# with a release collector storing what it accepts, while slow-clients.py (beside it) keeps a
# well-behaved client posting one event every 20 ms and, after a 5 s baseline, opens IDLE (default
# 1,000) idle connections, TRICKLE (5) bodies sent one byte a second, and BIG (10) 10 MB bodies
# announced by Content-Length plus as many streamed chunked, all in parallel.
# Passes when each abusive request gets its status within 100 ms of its limit (408 at the gateway's
# body_read_timeout_ms, set to 3 s here; 413 from the head for an announced 10 MB; 413 once the
# 4 MiB body limit is passed for a chunked one, within 1 s), the good client's p99 stays under 50 ms
# and it is never refused, the gateway's RSS grows by less than 100 MiB, and every event of the
# good client's 202s is stored once. Ends with "slow-clients-test: N passed, M failed".
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${LOGPIPE_SLOW_SECS:-30}
IDLE=${LOGPIPE_SLOW_IDLE:-1000}
fault_setup slow logpipe_slow_test GW_PORT GEN_PORT COL_PORT

finish() {
    [ -n "${RSS_PID:-}" ] && kill "$RSS_PID" 2>/dev/null
    fault_end "${accepted:-}" "${rows:-}" "${distinct:-}"
    fault_stop gateway generator collector broker
    fault_exit "slow-clients-test"
}
trap finish EXIT
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$(cat "$RUN/gateway.pid")/status" 2>/dev/null || echo 0; }
fault_acked() { gateway_accepted "$GW_PORT"; }
fault_stored() { sql "SELECT count(*) FROM log_events"; }

fault_prepare
fault_collector collector "$COL_PORT"
# An idle generator: the gateway is ready only when its generators answer.
start_test_service generator "$RUN" "$GEN_PORT" "$BIN/logpipe-generator" --port "$GEN_PORT" \
    || { check "generator starts" false; exit 1; }
printf '[ingest]\nbody_read_timeout_ms = 3000\n' >"$RUN/gateway.toml"
start_test_service gateway "$RUN" "$GW_PORT" "$BIN/logpipe-gateway" --host 127.0.0.1 --port "$GW_PORT" \
    --config "$RUN/gateway.toml" --collector-url "http://127.0.0.1:$COL_PORT" \
    --generator-urls "http://127.0.0.1:$GEN_PORT" \
    || { check "gateway starts" false; exit 1; }
fault_begin slow-clients

rss_before=$(rss_kib)
(
    peak=0
    while true; do
        r=$(rss_kib)
        [ "$r" -gt "$peak" ] && peak=$r && echo "$peak" >"$RUN/rss-peak"
        sleep 0.2
    done
) &
RSS_PID=$!
fault_mark "fault abuse starts"
python3 "$FAULT_DIR/scenarios/slow-clients.py" --port "$GW_PORT" --secs "$SECS" --abuse-at 5 \
    --idle "$IDLE" >"$RUN/result.json" 2>"$RUN/client.err" \
    || { cat "$RUN/client.err"; check "the client script ran" false; exit 1; }
fault_mark "healed abuse over"
kill "$RSS_PID" 2>/dev/null
RSS_PID=""
rss_peak=$(cat "$RUN/rss-peak" 2>/dev/null || echo 0)
r() { python3 -c "import json,sys; r=json.load(open('$RUN/result.json')); print($1)"; }
echo "result: $(cat "$RUN/result.json")" | cut -c1-1500

check "all $IDLE idle connections were opened" [ "$(r 'r["idle_opened"]')" = "$IDLE" ]
check "every trickled body got 408 at the 3 s body timeout, within 100 ms" \
    [ "$(r 'all(t["status"] == 408 and 2.9 <= t["secs"] <= 3.1 for t in r["trickle"])')" = True ]
# The gateway answers 413 and reads and discards the rest of the body for a while (a "lingering
# close", RFC 9112 9.6): a server that closed with unread data would make the kernel send a reset,
# and a client still writing could lose the 413 it was sent. So every client must read its 413.
refused() { r "all(b['status'] == 413 and b['secs'] <= $2 for b in r['$1'])"; }
statuses() { r "sorted(set(str(b['status']) for b in r['$1']))"; }
check "every announced 10 MB body was refused with a 413 read within 100 ms ($(statuses big_with_length))" \
    [ "$(refused big_with_length 0.1)" = True ]
check "every chunked 10 MB body was refused with a 413 read within 1 s ($(statuses big_chunked))" \
    [ "$(refused big_chunked 1.0)" = True ]
p99=$(r 'r["good"]["during_p99_ms"]')
check "the good client's p99 during the abuse is under 50 ms ($p99 ms; before: $(r 'r["good"]["before_p99_ms"]') ms)" \
    [ "$(r 'r["good"]["during_p99_ms"] is not None and r["good"]["during_p99_ms"] < 50')" = True ]
check "the good client was never refused ($(r 'r["good"]["other"]'))" [ "$(r 'r["good"]["other"]')" = "{}" ]
echo "gateway RSS: ${rss_before} KiB before, ${rss_peak} KiB peak"
check "the gateway's RSS grew by less than 100 MiB" [ "$rss_peak" -lt $((rss_before + 100 * 1024)) ]
accepted=$(r 'r["good"]["accepted"]')
for _ in $(seq 1 60); do
    [ "$(sql "SELECT count(*) FROM log_events WHERE service = 'fault-slow-good'")" = "$accepted" ] && break
    sleep 1
done
rows=$(sql "SELECT count(*) FROM log_events")
distinct=$(sql "SELECT count(DISTINCT event_id) FROM log_events")
check "every event of the good client's 202s is stored once ($rows rows, $accepted accepted)" \
    [ "$rows" = "$accepted" ]
check "the gateway is still alive and ready" wait_http "http://127.0.0.1:$GW_PORT/ready" 10
