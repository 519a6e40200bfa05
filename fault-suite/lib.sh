# shellcheck shell=bash
# Helpers the fault scenarios share (scenarios/*.sh source it; it sources scripts/lib.sh). A scenario
# starts with `fault_setup` (its folder, database, ports and environment), defines two functions,
# `fault_acked` (events acknowledged so far: the generator's count) and `fault_stored` (rows in its
# database), calls `fault_begin NAME` once its services are up, `fault_mark LABEL` when it injects
# and heals a fault, and `fault_end ACKED ROWS DISTINCT` then `fault_exit LABEL` from its exit trap.
# With
# LOGPIPE_FAULT_REPORT set (./fault-suite.sh sets it) that leaves in the report folder:
#   NAME.csv    one row a second: seconds, acknowledged, stored (the "acknowledged, not yet stored"
#               chart is drawn from it);
#   NAME.marks  "seconds label" per fault step ("fault ...", then "healed ..."); recovery is counted
#               from the last "healed" mark to the first second everything acknowledged by then was
#               stored;
#   rows.tsv    the scenario's row: name, acknowledged, stored rows, lost, duplicated, verdict.
# Run by hand (no LOGPIPE_FAULT_REPORT), the scenario writes nothing of this.
# Lost and duplicated are counted in PostgreSQL against the acknowledged count: every event the
# generator makes carries a unique id, so lost = acknowledged - distinct stored ids (never below 0:
# a send whose acknowledgement timed out may still have been written) and duplicated = rows -
# distinct ids.

# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/scripts/lib.sh"
# shellcheck disable=SC2034  # the scenarios' own files (slow-clients.py) are found through it
FAULT_DIR=$LOGPIPE_ROOT/fault-suite

FAULT_NAME=""
FAULT_T0=""
FAULT_SAMPLER=""
passed=0
failed=0

# fault_setup SHORT DB [PORT_VAR...]: the preamble every scenario shares. RUN is a fresh folder
# (logpipe-SHORT.*, kept when the scenario fails), DB and DB_URL its own database in the shared
# PostgreSQL, BIN the release binaries, BROKER_PORT and each PORT_VAR a free loopback port; the
# services it starts find the broker and the database in LOGPIPE_KAFKA_BROKERS and
# LOGPIPE_DATABASE_URL and log at LOGPIPE_FAULT_LOG (default info, librdkafka at warn).
fault_setup() {
    local short=$1 v
    DB=$2
    shift 2
    RUN=$(mktemp -d "${TMPDIR:-/tmp}/logpipe-$short.XXXXXX")
    DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB"
    BIN=$CARGO_TARGET_DIR/release
    BROKER_PORT=$(free_port)
    for v in "$@"; do printf -v "$v" '%s' "$(free_port)"; done
    export LOGPIPE_KAFKA_BROKERS=127.0.0.1:$BROKER_PORT LOGPIPE_DATABASE_URL=$DB_URL
    export RUST_LOG=${LOGPIPE_FAULT_LOG:-info,librdkafka=warn}
}

# fault_test_setup DB (called once the exit trap is set): the release binaries must exist, and the
# database DB starts empty. Fails the run (through `check`) when a binary is missing.
fault_test_setup() {
    local db=$1 bin=$CARGO_TARGET_DIR/release
    if [ ! -x "$bin/logpipe-collector" ] || [ ! -x "$bin/logpipe-generator" ]; then
        check "release binaries exist (run setup.sh first)" false
        return 1
    fi
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null
    ensure_database "$db"
}

# start_test_broker RUN PORT [STORAGE]: a private broker for a fault test, pid and log in RUN; waits
# for its port (STORAGE defaults to memory).
start_test_broker() {
    local run=$1 port=$2 storage=${3:-$(broker_storage memory)}
    broker_command "$port" "$storage"
    start_bg broker "$run" "$run/broker.log" "$run/broker.pid" "${BROKER_CMD[@]}" >/dev/null
    wait_port 127.0.0.1 "$port" 30
}

# start_test_service NAME RUN PORT CMD...: a fault test's service in the background (pid and log
# named NAME in RUN), then wait (60 s) for its /ready on PORT.
start_test_service() {
    local name=$1 run=$2 port=$3
    shift 3
    start_bg "$name" "$run" "$run/$name.log" "$run/$name.pid" "$@" >/dev/null
    wait_http "http://127.0.0.1:$port/ready" 60
}

# start_generation PORT JSON: start a run on the generator listening on PORT.
start_generation() {
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$1/api/v1/generator/start" \
        -H 'content-type: application/json' -d "$2"
}

# fault_prepare (once the exit trap is set): the database fresh and the private in-memory broker
# up; a failure is a failed check, and the scenario exits.
fault_prepare() {
    fault_test_setup "$DB" || exit 1
    start_test_broker "$RUN" "$BROKER_PORT" || { check "broker starts" false; exit 1; }
}

# fault_collector NAME PORT [ARGS...]: a release collector started on PORT (pid and log named NAME
# in RUN) and ready; a failure is a failed check, and the scenario exits.
fault_collector() {
    local name=$1 port=$2
    shift 2
    start_test_service "$name" "$RUN" "$port" "$BIN/logpipe-collector" --port "$port" "$@" \
        || { check "collector $name starts" false; exit 1; }
}

# fault_generate JSON: the release generator started on GEN_PORT (pid and log in RUN) and a run
# started on it with JSON; a failure is a failed check, and the scenario exits.
fault_generate() {
    start_test_service generator "$RUN" "$GEN_PORT" "$BIN/logpipe-generator" --port "$GEN_PORT" \
        || { check "generator starts" false; exit 1; }
    start_generation "$GEN_PORT" "$1" || { check "generation starts" false; exit 1; }
}

# fault_stop NAME...: each of the scenario's processes stopped (SIGTERM, SIGKILL after 15 s).
fault_stop() {
    local name
    for name in "$@"; do stop_pid "$name" "$RUN/$name.pid" 15 >/dev/null; done
}

# The sampler's two readings unless a scenario defines its own: the generator's acknowledged count
# and the records the stored offsets cover.
fault_acked() { generator_field "$GEN_PORT" events_acked; }
fault_stored() { offsets_stored; }

# sql QUERY: one value from the scenario's database (empty when it cannot answer).
sql() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" -tAc "$1" 2>/dev/null; }

# offsets_stored: the records the stored offsets cover. The database is the scenario's own and no
# offset is reset, so this counts the records stored.
offsets_stored() { sql "SELECT COALESCE(sum(next_offset), 0) FROM consumer_offsets" || echo 0; }

# check_stored_exactly N: the generator acknowledged N, the stored offsets cover N, and the table
# holds N rows with N distinct ids (sets `acked`, `rows` and `distinct` for fault_end).
check_stored_exactly() {
    local n=$1
    acked=$(generator_field "$GEN_PORT" events_acked)
    check "generator acknowledged all $n events" [ "$acked" = "$n" ]
    check "stored offsets cover all $n records" [ "$(offsets_stored)" = "$n" ]
    rows=$(sql 'SELECT count(*) FROM log_events')
    distinct=$(sql 'SELECT count(DISTINCT event_id) FROM log_events')
    check "exactly $n rows" [ "$rows" = "$n" ]
    check "$n distinct event ids" [ "$distinct" = "$n" ]
}

# wait_offsets_stored N SECS: until the generator is idle with N acknowledged and the stored offsets
# cover N, or SECS pass.
wait_offsets_stored() {
    local deadline=$((SECONDS + $2))
    while [ $SECONDS -lt $deadline ]; do
        [ "$(generator_field "$GEN_PORT" state)" = idle ] \
            && [ "$(generator_field "$GEN_PORT" events_acked)" = "$1" ] \
            && [ "$(offsets_stored)" = "$1" ] && return 0
        sleep 1
    done
    return 1
}

# wait_offsets_move SECS: until the stored offsets move (a collector is writing), or SECS pass.
wait_offsets_move() {
    local before
    before=$(offsets_stored)
    for _ in $(seq 1 $(($1 * 2))); do [ "$(offsets_stored)" != "$before" ] && return 0; sleep 0.5; done
    return 1
}

# collector_said PORT LOG: what a collector said of itself when a scenario failed, before it is
# stopped (CI keeps only what is printed): its /ready and its last warnings and errors.
collector_said() {
    echo "collector /ready: $(internal_curl -sS --max-time 2 "http://127.0.0.1:$1/ready" 2>&1)"
    echo "collector log, last warnings:"
    grep -E ' (WARN|ERROR) ' "$2" 2>/dev/null | tail -n 15 | cut -c1-300
}

# Seconds since fault_begin, to a tenth.
fault_now() {
    local d=$(($(date +%s%N) / 100000000 - FAULT_T0))
    echo "$((d / 10)).$((d % 10))"
}

# fault_begin NAME: starts the once-a-second sampler.
fault_begin() {
    FAULT_NAME=$1
    FAULT_T0=$(($(date +%s%N) / 100000000))
    [ -n "${LOGPIPE_FAULT_REPORT:-}" ] || return 0
    mkdir -p "$LOGPIPE_FAULT_REPORT"
    : >"$LOGPIPE_FAULT_REPORT/$FAULT_NAME.marks"
    echo "secs,acked,stored" >"$LOGPIPE_FAULT_REPORT/$FAULT_NAME.csv"
    (
        while true; do
            local t a s
            t=$(fault_now)
            a=$(fault_acked 2>/dev/null)
            s=$(fault_stored 2>/dev/null)
            # A sample the services could not answer (a process down) is left out, not zeroed.
            [[ "$a" =~ ^[0-9]+$ && "$s" =~ ^[0-9]+$ ]] && echo "$t,$a,$s" >>"$LOGPIPE_FAULT_REPORT/$FAULT_NAME.csv"
            sleep 1
        done
    ) &
    FAULT_SAMPLER=$!
}

# fault_mark LABEL: "fault <what>" when a fault starts, "healed <what>" when it is undone.
fault_mark() {
    echo "fault step at $(fault_now) s: $1"
    [ -n "${LOGPIPE_FAULT_REPORT:-}" ] && [ -n "$FAULT_NAME" ] || return 0
    echo "$(fault_now) $1" >>"$LOGPIPE_FAULT_REPORT/$FAULT_NAME.marks"
}

# fault_end ACKED ROWS DISTINCT [LOST]: stops the sampler and writes the scenario's row (verdict from
# the script's `failed` count). Empty arguments (the run never got that far) are written as "-".
# LOST, when given, replaces "acknowledged - distinct" (a scenario whose broker forgets its log).
fault_end() {
    local acked=${1:-} rows=${2:-} distinct=${3:-} lost=- dup=- verdict=pass
    [ -n "$FAULT_SAMPLER" ] && kill "$FAULT_SAMPLER" 2>/dev/null && wait "$FAULT_SAMPLER" 2>/dev/null
    FAULT_SAMPLER=""
    if [[ "$acked" =~ ^[0-9]+$ && "$rows" =~ ^[0-9]+$ && "$distinct" =~ ^[0-9]+$ ]]; then
        lost=$((acked > distinct ? acked - distinct : 0))
        dup=$((rows - distinct))
    fi
    [[ "${4:-}" =~ ^[0-9]+$ ]] && lost=$4
    [ "${failed:-1}" -eq 0 ] || verdict=fail
    echo "fault row: $FAULT_NAME acked=${acked:--} stored=${rows:--} lost=$lost duplicated=$dup $verdict"
    [ -n "${LOGPIPE_FAULT_REPORT:-}" ] && [ -n "$FAULT_NAME" ] || return 0
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$FAULT_NAME" "${acked:--}" "${rows:--}" "$lost" "$dup" "$verdict" \
        >>"$LOGPIPE_FAULT_REPORT/rows.tsv"
}

# generator_field PORT FIELD: one field of a generator's status.
generator_field() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/api/v1/generator/status" 2>/dev/null \
        | python3 -c "import json,sys; print(json.load(sys.stdin).get('$2', ''))" 2>/dev/null
}

# collector_metric PORT NAME: one sample of a collector's metric, exactly NAME (empty when absent).
collector_metric() {
    internal_curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null \
        | awk -v m="$2" '$1 == m { print $2; found = 1 } END { if (!found) print "" }'
}

# collector_metric_sum PORT PREFIX: the sum of a collector's samples whose name and labels start
# with PREFIX (every partition's lag, say), as an integer; empty when there is none.
collector_metric_sum() {
    internal_curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null \
        | awk -v m="$2" 'index($1, m) == 1 { s += $2; n++ } END { if (n) printf "%d\n", s }'
}

# gateway_accepted PORT: events the gateway on PORT has had acknowledged by Kafka (its metric).
gateway_accepted() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null \
        | awk '/^ingest_events_total\{outcome="accepted"\}/ { printf "%d\n", $2 }'
}

# wait_generation_done PORT SECS: until the generator is idle and every event it handed to its
# producer has its delivery report (generated = acknowledged + failed: a run ends after a bounded
# flush, and after a broker fault reports can come later); echoes its acknowledged count.
wait_generation_done() {
    local deadline=$((SECONDS + $2))
    while [ $SECONDS -lt $deadline ]; do
        [ "$(generator_field "$1" state)" = idle ] && generation_settled "$1" && break
        sleep 1
    done
    generator_field "$1" events_acked
}

# generation_settled PORT: every event handed to the producer has a delivery report.
generation_settled() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/api/v1/generator/status" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["events_generated"] == d["events_acked"] + d["events_failed"] else 1)' 2>/dev/null
}

# fault_exit LABEL: the end of a scenario's exit trap: its folder removed when it passed (kept and
# named when not), "LABEL: N passed, M failed" (what test.sh sums), and the exit code.
fault_exit() {
    if [ "$failed" -eq 0 ]; then rm -rf "$RUN"; else echo "logs kept in $RUN"; fi
    echo "$1: ${passed:-0} passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}

# same_process PIDFILE PID: the process started at the beginning is the one running now, alive.
same_process() { [ "$(cat "$1" 2>/dev/null)" = "$2" ] && kill -0 "$2" 2>/dev/null; }
