#!/usr/bin/env bash
# Zombie test for the collector's fencing (the fault suite's scenario 2): two release collectors in
# one consumer group drain N events (default 300,000) from a private broker into their own
# database. Mid-run collector A is frozen with SIGSTOP for longer than its session timeout (10 s),
# so the group hands its partitions to collector B; then A is resumed. Whatever A held when it froze
# (a batch in memory, or an open transaction holding its offset rows) must not be stored twice nor
# skip anything: its stale commit is refused by the offset fence, or it commits before B could and B
# is fenced instead. Passes with exactly N rows, N distinct ids and stored offsets covering N.
# Needs the release binaries (setup.sh builds them). Ends with "zombie-test: N passed, M failed".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/lib.sh"
source "$ROOT/integration-tests/fault-lib.sh"

N=${LOGPIPE_ZOMBIE_EVENTS:-300000}
PAUSE_SECS=${LOGPIPE_ZOMBIE_PAUSE_SECS:-35}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/logpipe-zombie.XXXXXX")
DB=logpipe_zombie_test
DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB"
BIN=$CARGO_TARGET_DIR/release
BROKER_PORT=$(free_port)
GEN_PORT=$(free_port)
A_PORT=$(free_port)
B_PORT=$(free_port)
export LOGPIPE_KAFKA_BROKERS=127.0.0.1:$BROKER_PORT LOGPIPE_DATABASE_URL=$DB_URL RUST_LOG=${LOGPIPE_ZOMBIE_LOG:-info,librdkafka=warn}

passed=0
failed=0
finish() {
    # A frozen process cannot act on SIGTERM: resume it first.
    [ -f "$RUN/a.pid" ] && kill -CONT "$(cat "$RUN/a.pid")" 2>/dev/null
    fault_end "${acked:-}" "${rows:-}" "${distinct:-}"
    for name in a b generator broker; do stop_pid "$name" "$RUN/$name.pid" 15 >/dev/null; done
    echo "collector A: $(grep -c 'batch fenced' "$RUN/a.log" 2>/dev/null) fenced batches; collector B: $(grep -c 'batch fenced' "$RUN/b.log" 2>/dev/null) fenced batches"
    fault_exit "zombie-test"
}
trap finish EXIT
sql() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" -tAc "$1" 2>/dev/null; }
stored() { sql "SELECT COALESCE(sum(next_offset), 0) FROM consumer_offsets" || echo 0; }
fault_acked() { generator_field "$GEN_PORT" events_acked; }
fault_stored() { sql "SELECT COALESCE(sum(next_offset), 0) FROM consumer_offsets"; }

fault_test_setup "$DB" || exit 1

start_test_broker "$RUN" "$BROKER_PORT" || { check "broker starts" false; exit 1; }

# Dynamic members (no group.instance.id): a member silent past its session timeout leaves the group.
# A partition nobody stores is reported after 10 s (not 60), within the freeze.
printf '[consumer]\norphan_after_secs = 10\n' >"$RUN/collector.toml"
for c in a:$A_PORT b:$B_PORT; do
    start_test_service "${c%%:*}" "$RUN" "${c##*:}" \
        "$BIN/logpipe-collector" --port "${c##*:}" --config "$RUN/collector.toml" \
        || { check "collector ${c%%:*} starts" false; exit 1; }
done
start_test_service generator "$RUN" "$GEN_PORT" "$BIN/logpipe-generator" --port "$GEN_PORT" \
    || { check "generator starts" false; exit 1; }
start_generation "$GEN_PORT" "{\"rate_per_second\": 20000, \"count\": $N, \"batch_size\": 1000, \"threads\": 2}" \
    || { check "generation starts" false; exit 1; }
fault_begin zombie

# Freeze A while both are writing: after the stored offsets have moved twice.
for _ in 1 2; do
    before=$(stored)
    for _ in $(seq 1 120); do [ "$(stored)" != "$before" ] && break; sleep 0.5; done
done
echo "SIGSTOP collector A at $(stored) stored offsets, for ${PAUSE_SECS}s"
fault_mark "fault SIGSTOP collector A"
kill -STOP "$(cat "$RUN/a.pid")"
frozen_at=$(stored)
# Meanwhile B must not be silent: either the group hands it A's partitions and the stored offsets
# move, or B's /ready reports partitions nobody stores (Apache Kafka evicts A after its session
# timeout; Tansu 0.6 sometimes keeps a silent member until it speaks again, ARCHITECTURE.md), or
# B's writes fail on A's locks (A frozen in the middle of a COPY keeps them until it resumes;
# B's lock_timeout makes that a failing write, not a silent wait).
said_so=0
for _ in $(seq 1 "$PAUSE_SECS"); do
    curl -s --max-time 1 "http://127.0.0.1:$B_PORT/ready" \
        | grep -qE '"partitions_unstored":[1-9]|"last_write":"failing"' && said_so=1
    sleep 1
done
moved=$(stored)
echo "while A was frozen: stored offsets $frozen_at -> $moved; B reported unstored partitions or failing writes: $said_so"
moved_or_said_so() { [ "$moved" -gt "$frozen_at" ] || [ "$said_so" = 1 ]; }
check "while A was frozen the group moved on, or said it could not" moved_or_said_so
echo "SIGCONT collector A at $moved stored offsets"
kill -CONT "$(cat "$RUN/a.pid")"
fault_mark "healed SIGCONT collector A"

deadline=$((SECONDS + 240))
while [ $SECONDS -lt $deadline ]; do
    acked=$(curl -fsS "http://127.0.0.1:$GEN_PORT/api/v1/generator/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["events_acked"] if s["state"]=="idle" else -1)' 2>/dev/null || echo -1)
    [ "$acked" = "$N" ] && [ "$(stored)" = "$N" ] && break
    sleep 1
done
check "generator acknowledged all $N events" [ "$acked" = "$N" ]
check "stored offsets cover all $N records" [ "$(stored)" = "$N" ]
rows=$(sql 'SELECT count(*) FROM log_events')
distinct=$(sql 'SELECT count(DISTINCT event_id) FROM log_events')
check "exactly $N rows" [ "$rows" = "$N" ]
check "$N distinct event ids" [ "$distinct" = "$N" ]
check "collector A is alive and ready after its freeze" wait_http "http://127.0.0.1:$A_PORT/ready" 30
