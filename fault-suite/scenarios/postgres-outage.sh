#!/usr/bin/env bash
# PostgreSQL outage test (the fault suite's scenarios 6 and 13), on a private PostgreSQL cluster
# (initdb into the run folder, its own port), so the machine's server is never touched:
#
#   postgres-outage-test.sh stop       the server is stopped (pg_ctl stop -m fast: every connection
#                                      cut) for OUTAGE_SECS (default 60), then started again;
#   postgres-outage-test.sh readonly   every transaction turns read-only for OUTAGE_SECS (ALTER
#                                      SYSTEM default_transaction_read_only + reload: what a full
#                                      disk or a read-only tablespace looks like to a writer, SQLSTATE
#                                      25006/53100, without needing a mount), then writable again.
#
# Meanwhile the release generator produces at RATE (default 5,000/s) for RUN_SECS (default 120) to
# a private broker and one release collector drains it. Passes when the collector reported
# not-ready during the outage, dead-lettered nothing, was never restarted, and afterwards every
# acknowledged event is stored exactly once. Needs the release binaries (setup.sh builds them).
# Ends with "postgres-outage-test: N passed, M failed".
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

MODE=${1:-stop}
case $MODE in stop | readonly) ;; *) die "usage: $0 stop|readonly" ;; esac
RATE=${LOGPIPE_OUTAGE_RATE:-5000}
RUN_SECS=${LOGPIPE_OUTAGE_RUN_SECS:-120}
OUTAGE_SECS=${LOGPIPE_OUTAGE_SECS:-60}
PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
# The scenario's database is `logpipe` in a private cluster of its own, the one it stops.
PRIVATE_PG_PORT=$(free_port)
PG_HOST=127.0.0.1 PG_PORT=$PRIVATE_PG_PORT PG_USER=postgres
fault_setup "pg-$MODE" logpipe GEN_PORT COL_PORT

# initdb and the server refuse to run as root: as root they run as the postgres user.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_ctl_() { as_pg "$PG_BIN/pg_ctl" -D "$RUN/pg/data" -w -t 60 "$@"; }
finish() {
    fault_end "${acked:-}" "${rows:-}" "${distinct:-}"
    if [ "$failed" -ne 0 ]; then
        collector_said "$COL_PORT" "$RUN/collector.log"
    fi
    fault_stop generator collector broker
    [ -f "$RUN/pg/data/postmaster.pid" ] && pg_ctl_ stop -m immediate >/dev/null 2>&1
    fault_exit "postgres-outage-test"
}
trap finish EXIT
fault_stored() { sql "SELECT count(*) FROM log_events"; }

if [ ! -x "$BIN/logpipe-collector" ] || [ ! -x "$BIN/logpipe-generator" ]; then
    check "release binaries exist (run setup.sh first)" false
    exit 1
fi
[ -n "$PG_BIN" ] || { check "PostgreSQL's server binaries are installed" false; exit 1; }

# The private cluster: trust on loopback, its socket in the run folder.
mkdir -p "$RUN/pg"
chmod 755 "$RUN"
[ "$(id -u)" -eq 0 ] && chown postgres "$RUN/pg"
as_pg "$PG_BIN/initdb" -D "$RUN/pg/data" -U postgres --auth=trust >"$RUN/initdb.log" 2>&1 \
    || { cat "$RUN/initdb.log"; check "initdb" false; exit 1; }
pg_ctl_ -l "$RUN/pg/server.log" \
    -o "-p $PRIVATE_PG_PORT -c listen_addresses=127.0.0.1 -k $RUN/pg" start >/dev/null \
    || { cat "$RUN/pg/server.log"; check "the private PostgreSQL starts" false; exit 1; }
psql -h 127.0.0.1 -p "$PRIVATE_PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE logpipe" >/dev/null \
    || { check "the test database is created" false; exit 1; }

start_test_broker "$RUN" "$BROKER_PORT" || { check "broker starts" false; exit 1; }
fault_collector collector "$COL_PORT"
collector_pid=$(cat "$RUN/collector.pid")
fault_generate "{\"rate_per_second\": $RATE, \"duration_secs\": $RUN_SECS}"
fault_begin "postgres-$MODE"

# Let the collector write for a while first.
for _ in $(seq 1 60); do [ "$(fault_stored)" -gt $((RATE * 5)) ] 2>/dev/null && break; sleep 1; done
if [ "$MODE" = stop ]; then
    fault_mark "fault PostgreSQL stopped"
    pg_ctl_ stop -m fast >/dev/null || check "PostgreSQL stops" false
else
    fault_mark "fault PostgreSQL read-only"
    sql "ALTER SYSTEM SET default_transaction_read_only = on" >/dev/null
    sql "SELECT pg_reload_conf()" >/dev/null
fi
not_ready=0
unanswered=0
t0=$SECONDS
while [ $((SECONDS - t0)) -lt "$OUTAGE_SECS" ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$COL_PORT/ready")
    [ "$code" = 503 ] && not_ready=1
    [ "$code" = 000 ] && unanswered=$((unanswered + 1))
    sleep 1
done
check "the collector reported not-ready during the outage" [ "$not_ready" = 1 ]
check "its /ready answered within 2 s every time ($unanswered probes timed out)" [ "$unanswered" = 0 ]
if [ "$MODE" = stop ]; then
    pg_ctl_ -l "$RUN/pg/server.log" \
        -o "-p $PRIVATE_PG_PORT -c listen_addresses=127.0.0.1 -k $RUN/pg" start >/dev/null \
        || check "PostgreSQL starts again" false
    fault_mark "healed PostgreSQL started"
else
    # This session must write the setting back although every transaction defaults to read-only.
    psql -h 127.0.0.1 -p "$PRIVATE_PG_PORT" -U postgres -d logpipe -q \
        -c "SET default_transaction_read_only = off" \
        -c "ALTER SYSTEM RESET default_transaction_read_only" -c "SELECT pg_reload_conf()" >/dev/null \
        || check "PostgreSQL turns writable again" false
    fault_mark "healed PostgreSQL writable"
fi

acked=$(wait_generation_done "$GEN_PORT" $((RUN_SECS + 120)))
for _ in $(seq 1 180); do [ "$(fault_stored)" -ge "${acked:-0}" ] 2>/dev/null && break; sleep 1; done
sleep 2
rows=$(sql 'SELECT count(*) FROM log_events')
distinct=$(sql 'SELECT count(DISTINCT event_id) FROM log_events')
echo "generated $(generator_field "$GEN_PORT" events_generated), acked $acked, failed $(generator_field "$GEN_PORT" events_failed), stored $rows"
check "the run finished" [ "$(generator_field "$GEN_PORT" state)" = idle ]
check "every acknowledged event is stored ($rows rows for $acked acked)" [ "$rows" = "$acked" ]
check "each once ($distinct distinct ids)" [ "$distinct" = "$rows" ]
check "nothing was dead-lettered (collector_dlq_total $(collector_metric "$COL_PORT" collector_dlq_total))" \
    [ "$(collector_metric "$COL_PORT" collector_dlq_total)" = 0 ]
check "the collector was never restarted" same_process "$RUN/collector.pid" "$collector_pid"
check "the collector is ready again" wait_http "http://127.0.0.1:$COL_PORT/ready" 30
