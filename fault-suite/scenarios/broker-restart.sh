#!/usr/bin/env bash
# Broker restart under load, with the release generator and collector on a private broker:
#
#   fault-suite/scenarios/broker-restart.sh durable|memory
#
# The generator produces RATE events/s (LOGPIPE_RESTART_RATE, default 10,000) for SECS seconds
# (LOGPIPE_RESTART_SECS, default 60); a third of the way in the broker is killed with SIGKILL and
# started again 2 s later on the same port.
# - durable (the broker on SQLite): the restarted broker has its data. Every event the generator saw
#   acknowledged is stored exactly once, and no stored offset was reset.
# - memory: the restarted broker is empty (what an in-memory broker acknowledged and nobody stored is
#   gone with it). The collector must detect that its stored offsets lie past the new log's end,
#   record the reset, and store every record of the new log: per partition, the rows stored since
#   its reset equal its new log end, and nothing is stored twice.
# Also checked in both: the broker answers a Metadata request at every probe except while it is
# down, within 5 s each and within 1 s at 19 probes in 20. In the fault suite's row (scenario 5), "lost" in memory mode counts the records of the new
# log that were not stored: what the empty broker lost itself is no collector's to store. Ends with "broker-restart-test (MODE): N passed, M failed".
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

MODE=${1:-durable}
case $MODE in
    durable) STORAGE=$(broker_storage durable) ;;
    memory) STORAGE=$(broker_storage memory) ;;
    *) die "usage: $0 durable|memory" ;;
esac
RATE=${LOGPIPE_RESTART_RATE:-10000}
SECS=${LOGPIPE_RESTART_SECS:-60}
fault_setup restart "logpipe_restart_$MODE" GEN_PORT COL_PORT
export RUST_LOG=${LOGPIPE_FAULT_LOG:-warn}

finish() {
    [ -n "${PROBE_PID:-}" ] && kill "$PROBE_PID" 2>/dev/null
    fault_end "${acked:-}" "${rows_end:-}" "${distinct:-}" "${lost:-}"
    fault_stop collector generator broker
    fault_exit "broker-restart-test ($MODE)"
}
trap finish EXIT
fault_stored() { sql "SELECT count(*) FROM log_events"; }

fault_test_setup "$DB" || exit 1

start_broker() { start_test_broker "$RUN" "$BROKER_PORT" "$STORAGE"; }
start_broker || { check "broker starts" false; exit 1; }

# One probe a second: how long the broker takes to answer a Metadata request (v4, all topics) on a
# new connection. A TCP connect is not enough: a broker whose storage is stuck still accepts
# connections. Lines: "<epoch seconds> <ms or DOWN>".
python3 - "$BROKER_PORT" >"$RUN/probe.log" 2>/dev/null <<'EOF' &
import socket, struct, sys, time
port = int(sys.argv[1])
client = b"logpipe-probe"
body = struct.pack(">hhih", 3, 4, 1, len(client)) + client + struct.pack(">ib", -1, 0)
request = struct.pack(">i", len(body)) + body
while True:
    t = time.time()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            s.sendall(request)
            buf = b""
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">i", buf[:4])[0]:
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
        print(f"{t:.1f} {(time.time() - t) * 1000:.0f}", flush=True)
    except OSError:
        print(f"{t:.1f} DOWN", flush=True)
    time.sleep(max(0.0, 1.0 - (time.time() - t)))
EOF
PROBE_PID=$!

fault_collector collector "$COL_PORT"
fault_generate "{\"rate_per_second\": $RATE, \"duration_secs\": $SECS}"
fault_begin "broker-restart-$MODE"

status() { curl -fsS "http://127.0.0.1:$GEN_PORT/api/v1/generator/status" 2>/dev/null; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])" 2>/dev/null; }

sleep $((SECS / 3))
echo "kill -9 broker at $(status | field events_acked) acknowledged events"
down_at=$(date +%s)
fault_mark "fault SIGKILL broker"
kill -KILL "$(cat "$RUN/broker.pid")" 2>/dev/null
sleep 2
start_broker || { check "broker starts again" false; exit 1; }
fault_mark "healed broker restarted"
up_at=$(date +%s)
echo "broker back after $((up_at - down_at)) s"

# Generation ends by itself, and every delivery report comes in; then everything acknowledged must be
# stored (bounded wait).
deadline=$((SECONDS + SECS + 240))
acked=$(wait_generation_done "$GEN_PORT" $((SECS + 240)))
failed_sends=$(status | field events_failed)
echo "generator: $acked acknowledged, $failed_sends failed deliveries"
rows() { sql "SELECT count(*) FROM log_events"; }
if [ "$MODE" = durable ]; then
    # A delivery that failed may still have been written (a request in flight when the broker died:
    # "possibly persisted"), so the rows lie between the acknowledged and the handed-over counts;
    # with no failed delivery they equal the acknowledged count.
    while [ $SECONDS -lt $deadline ] && [ "$(rows)" -lt "$acked" ]; do sleep 1; done
    n=$(rows)
    between() { [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }
    check "every acknowledged event is stored ($n rows for $acked acknowledged, $failed_sends failed)" \
        between "$n" "$acked" $((acked + failed_sends))
    check "no stored offset was reset" [ "$(sql 'SELECT count(*) FROM offset_resets')" = 0 ]
else
    # Rows per partition stored since that partition's reset must equal its new log's end.
    new_log_gap() {
        sql "SELECT COALESCE(sum(abs(o.next_offset - (SELECT count(*) FROM log_events e
                    WHERE e.kafka_partition = o.kafka_partition AND e.stored_at >= r.reset_at))), -1)
               FROM consumer_offsets o
               JOIN (SELECT kafka_partition, max(reset_at) AS reset_at FROM offset_resets
                      GROUP BY kafka_partition) r USING (kafka_partition)"
    }
    lag() { curl -fsS "http://127.0.0.1:$COL_PORT/metrics" | awk '/^collector_consumer_lag\{/ { s += $2 } END { print s + 0 }'; }
    while [ $SECONDS -lt $deadline ]; do
        [ "$(new_log_gap)" = 0 ] && [ "$(lag)" = 0 ] && break
        sleep 1
    done
    # past_log_end when the collector looked before the new log reached the stored offset;
    # log_replaced when it had already grown past it (the record before the offset differs).
    resets=$(sql "SELECT count(*) FROM offset_resets WHERE reason IN ('past_log_end', 'log_replaced')")
    check "the resets are recorded ($resets partitions, reason past_log_end or log_replaced)" \
        [ "${resets:-0}" -gt 0 ]
    check "the collector logged each reset at ERROR" \
        grep -q "stored offset does not fit the broker's log" "$RUN/collector.log"
    check "every record of the new log is stored (rows since each reset = the partition's log end)" \
        [ "$(new_log_gap)" = 0 ]
    check "lag is back to 0" [ "$(lag)" = 0 ]
fi
rows_end=$(sql 'SELECT count(*) FROM log_events')
distinct=$(sql 'SELECT count(DISTINCT event_id) FROM log_events')
[ "$MODE" = memory ] && lost=$(new_log_gap)
check "no event is stored twice" [ "$rows_end" = "$distinct" ]
check "the collector never exited" pid_alive "$RUN/collector.pid" logpipe-collector
# The spin this probe was written for (a broker pinned by its own storage, produce starved) leaves
# it unanswered for the probe's whole 5 s timeout, probe after probe. A single answer after 1 s is
# what a 2-core machine does while the generator's backlog and the collector's catch-up hit the
# restarted broker at once (seen once in CI: 1 of 66 probes), so slow answers are counted, printed
# and bounded rather than each one failing the run.
outside() { awk -v d="$down_at" -v u="$up_at" '$1 < d - 1 || $1 > u + 1' "$RUN/probe.log"; }
probes=$(outside | wc -l)
unanswered=$(outside | awk '$2 == "DOWN"' | wc -l)
slow=$(outside | awk '$2 != "DOWN" && $2 > 1000' | wc -l)
echo "probes outside the outage: $probes, answered after 1 s: $slow, unanswered in 5 s: $unanswered, slowest: $(outside | awk '$2 != "DOWN" && $2 > m { m = $2 } END { print m + 0 }') ms"
outside | awk '$2 == "DOWN" || $2 > 1000 { print "  slow probe at " $1 ": " $2 }'
check "the broker answered every metadata probe outside the outage within 5 s ($probes probes)" [ "$unanswered" = 0 ]
check "at most 1 in 20 of those answers took over 1 s ($slow of $probes)" [ $((slow * 20)) -le "$probes" ]
