#!/usr/bin/env bash
# Redis restart under load (the fault suite's scenario 7), on a private redis-server: two release
# generators share one global budget of BUDGET events/s (default 4,000) held in that Redis, each
# asked for twice the budget; the release gateway limits its clients through the same Redis while an
# HTTP client posts batches of events to it; one release collector stores everything. Mid-run Redis
# is killed (SIGKILL) for OUTAGE_SECS (default 20) and started again, empty.
# Passes when: the gateway answered every request during the outage (202, never 5xx) on its local
# limiter and went back to Redis; each generator fell back to its local share (budget / instances
# seen) and kept within it, then rejoined the global budget; no process restarted; and every
# acknowledged event (the generators' acknowledged counts, and the events of the gateway's 202s) is
# stored once. Needs the release binaries (setup.sh builds them). Ends with
# "redis-restart-test: N passed, M failed".
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

BUDGET=${LOGPIPE_REDIS_BUDGET:-4000}
RUN_SECS=${LOGPIPE_REDIS_RUN_SECS:-60}
OUTAGE_SECS=${LOGPIPE_REDIS_OUTAGE_SECS:-20}
fault_setup redis logpipe_redis_test REDIS_P A_PORT B_PORT GW_PORT COL_PORT
export LOGPIPE_REDIS_URL=redis://127.0.0.1:$REDIS_P

finish() {
    [ -n "${CLIENT_PID:-}" ] && kill "$CLIENT_PID" 2>/dev/null
    fault_end "${acked:-}" "${rows:-}" "${distinct:-}"
    fault_stop a b gateway collector broker redis
    fault_exit "redis-restart-test"
}
trap finish EXIT
backend() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/api/v1/generator/status" 2>/dev/null \
        | python3 -c 'import json,sys; print((json.load(sys.stdin).get("budget") or {}).get("backend", ""))' 2>/dev/null
}
gateway_local() {
    curl -fsS --max-time 2 "http://127.0.0.1:$GW_PORT/metrics" 2>/dev/null \
        | awk '/^gateway_rate_limit_backend\{backend="local"\}/ { print $2 }'
}
fault_acked() {
    local a b c
    a=$(generator_field "$A_PORT" events_acked) b=$(generator_field "$B_PORT" events_acked) c=$(gateway_accepted "$GW_PORT")
    echo $((${a:-0} + ${b:-0} + ${c:-0}))
}
fault_stored() { sql "SELECT count(*) FROM log_events"; }
start_redis() {
    start_bg redis "$RUN" "$RUN/redis.log" "$RUN/redis.pid" redis-server --port "$REDIS_P" \
        --bind 127.0.0.1 --save '' --appendonly no >/dev/null
    for _ in $(seq 1 50); do [ "$(redis-cli -p "$REDIS_P" ping 2>/dev/null)" = PONG ] && return 0; sleep 0.1; done
    return 1
}

fault_prepare
command -v redis-server >/dev/null || apt_install redis-server
start_redis || { check "redis starts" false; exit 1; }
fault_collector collector "$COL_PORT"
for g in a:$A_PORT b:$B_PORT; do
    start_test_service "${g%%:*}" "$RUN" "${g##*:}" "$BIN/logpipe-generator" --port "${g##*:}" \
        --instance-id "fault-${g%%:*}" --global-rate-per-second "$BUDGET" --budget-key-prefix "fault-$$" \
        || { check "generator ${g%%:*} starts" false; exit 1; }
done
start_test_service gateway "$RUN" "$GW_PORT" "$BIN/logpipe-gateway" --host 127.0.0.1 --port "$GW_PORT" \
    --collector-url "http://127.0.0.1:$COL_PORT" \
    --generator-urls "http://127.0.0.1:$A_PORT,http://127.0.0.1:$B_PORT" \
    || { check "gateway starts" false; exit 1; }
pids_before=$(cat "$RUN"/{a,b,gateway,collector}.pid | tr '\n' ' ')

# The HTTP client: 20 requests a second of 50 events each, statuses counted; one line a second:
# "<seconds> <events accepted> <requests> <non-202 statuses as code:count,...>".
python3 - "$GW_PORT" "$RUN_SECS" >"$RUN/client.out" 2>"$RUN/client.err" <<'EOF' &
import http.client, json, sys, time, datetime, collections
port, secs = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
accepted, requests, other = 0, 0, collections.Counter()
start = time.time()
next_report = start + 1
while time.time() - start < secs:
    t = time.time()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    body = "\n".join(json.dumps({"timestamp": now, "level": "INFO", "service": "fault-redis-client",
                                 "message": f"request {requests} event {i}"}) for i in range(50))
    try:
        conn.request("POST", "/api/v1/logs", body, {"content-type": "application/x-ndjson"})
        r = conn.getresponse()
        reply = r.read()
        if r.status == 202:
            accepted += json.loads(reply)["accepted"]
        else:
            other[r.status] += 1
    except Exception:
        other["error"] += 1
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    requests += 1
    if time.time() >= next_report:
        print(f"{time.time() - start:.0f} {accepted} {requests} "
              + ",".join(f"{k}:{v}" for k, v in other.items()), flush=True)
        next_report += 1
    time.sleep(max(0.0, 0.05 - (time.time() - t)))
print(f"{time.time() - start:.0f} {accepted} {requests} " + ",".join(f"{k}:{v}" for k, v in other.items()), flush=True)
EOF
CLIENT_PID=$!
for g in a b; do
    port=$A_PORT
    [ "$g" = b ] && port=$B_PORT
    start_generation "$port" "{\"rate_per_second\": $((BUDGET * 2)), \"duration_secs\": $RUN_SECS}" \
        || { check "generation starts on $g" false; exit 1; }
done
fault_begin redis-restart

sleep $((RUN_SECS / 4))
check "both generators draw on the budget in Redis before the outage" \
    [ "$(backend "$A_PORT")/$(backend "$B_PORT")" = redis/redis ]
a0=$(generator_field "$A_PORT" events_acked)
b0=$(generator_field "$B_PORT" events_acked)
fault_mark "fault SIGKILL redis"
kill -KILL "$(cat "$RUN/redis.pid")"
t0=$SECONDS
gw_local=0 gens_local=0
while [ $((SECONDS - t0)) -lt "$OUTAGE_SECS" ]; do
    [ "$(gateway_local)" = 1 ] && gw_local=1
    [ "$(backend "$A_PORT")/$(backend "$B_PORT")" = local/local ] && gens_local=1
    sleep 1
done
a1=$(generator_field "$A_PORT" events_acked)
b1=$(generator_field "$B_PORT" events_acked)
outage=$((SECONDS - t0))
start_redis || check "redis starts again" false
fault_mark "healed redis restarted (empty)"
check "the gateway switched to its local limiter" [ "$gw_local" = 1 ]
check "both generators fell back to their local shares" [ "$gens_local" = 1 ]
# Local share = budget / 2 instances seen; 10 % and one second's share of slack for the edges.
share_kept() {
    local g=$1 d=$2 limit=$(((BUDGET / 2) * (outage + 1) * 11 / 10))
    echo "generator $g acknowledged $d events in the ${outage} s outage (at most $limit)"
    [ "$d" -le "$limit" ]
}
check "generator a kept within its local share" share_kept a $((a1 - a0))
check "generator b kept within its local share" share_kept b $((b1 - b0))
back=0
for _ in $(seq 1 20); do
    [ "$(gateway_local)" = 0 ] && [ "$(backend "$A_PORT")/$(backend "$B_PORT")" = redis/redis ] && { back=1; break; }
    sleep 1
done
check "the gateway and both generators went back to Redis" [ "$back" = 1 ]

wait "$CLIENT_PID"
CLIENT_PID=""
for g in $A_PORT $B_PORT; do wait_generation_done "$g" 120 >/dev/null; done
read -r _ accepted requests others < <(tail -n 1 "$RUN/client.out")
echo "HTTP client: $requests requests, $accepted events accepted, other answers: ${others:-none}"
check "every request got 202 (others: ${others:-none})" [ -z "${others:-}" ]
acked=$(fault_acked)
for _ in $(seq 1 120); do [ "$(fault_stored)" -ge "$acked" ] 2>/dev/null && break; sleep 1; done
sleep 2
rows=$(sql 'SELECT count(*) FROM log_events')
distinct=$(sql 'SELECT count(DISTINCT event_id) FROM log_events')
client_rows=$(sql "SELECT count(*) FROM log_events WHERE service = 'fault-redis-client'")
check "every event of a 202 is stored ($client_rows of $accepted)" [ "$client_rows" = "$accepted" ]
check "every acknowledged event is stored ($rows rows for $acked acknowledged)" [ "$rows" = "$acked" ]
check "each once ($distinct distinct ids)" [ "$distinct" = "$rows" ]
same_processes() { [ "$(cat "$RUN"/{a,b,gateway,collector}.pid | tr '\n' ' ')" = "$pids_before" ] \
    && for f in "$RUN"/{a,b,gateway,collector}.pid; do kill -0 "$(cat "$f")" || return 1; done; }
check "no service restarted or exited" same_processes
check "no service panicked" bash -c "! grep -l 'panicked at' '$RUN'/*.log"
