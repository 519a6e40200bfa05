# shellcheck shell=bash
# Helpers the fault scenarios share (sourced after scripts/lib.sh). A scenario defines two functions,
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

FAULT_NAME=""
FAULT_T0=""
FAULT_SAMPLER=""

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
