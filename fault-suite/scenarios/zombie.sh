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

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

N=${LOGPIPE_ZOMBIE_EVENTS:-300000}
PAUSE_SECS=${LOGPIPE_ZOMBIE_PAUSE_SECS:-35}
fault_setup zombie logpipe_zombie_test GEN_PORT A_PORT B_PORT

finish() {
    # A frozen process cannot act on SIGTERM: resume it first.
    [ -f "$RUN/a.pid" ] && kill -CONT "$(cat "$RUN/a.pid")" 2>/dev/null
    fault_end "${acked:-}" "${rows:-}" "${distinct:-}"
    fault_stop a b generator broker
    echo "collector A: $(grep -c 'batch fenced' "$RUN/a.log" 2>/dev/null) fenced batches; collector B: $(grep -c 'batch fenced' "$RUN/b.log" 2>/dev/null) fenced batches"
    fault_exit "zombie-test"
}
trap finish EXIT

fault_prepare

# Dynamic members (no group.instance.id): a member silent past its session timeout leaves the group.
# A partition nobody stores is reported after 10 s (not 60), within the freeze.
printf '[consumer]\norphan_after_secs = 10\n' >"$RUN/collector.toml"
fault_collector a "$A_PORT" --config "$RUN/collector.toml"
fault_collector b "$B_PORT" --config "$RUN/collector.toml"
fault_generate "{\"rate_per_second\": 20000, \"count\": $N, \"batch_size\": 1000, \"threads\": 2}"
fault_begin zombie

# Freeze A while both are writing: after the stored offsets have moved twice.
wait_offsets_move 60
wait_offsets_move 60
echo "SIGSTOP collector A at $(offsets_stored) stored offsets, for ${PAUSE_SECS}s"
fault_mark "fault SIGSTOP collector A"
kill -STOP "$(cat "$RUN/a.pid")"
frozen_at=$(offsets_stored)
# Meanwhile B must not be silent: either the group hands it A's partitions and the stored offsets
# move, or B's /ready reports partitions nobody stores (Apache Kafka evicts A after its session
# timeout; Tansu 0.6 sometimes kept a silent member until it spoke again, ARCHITECTURE.md), or
# B's writes fail on A's locks (A frozen in the middle of a COPY keeps them until it resumes;
# B's lock_timeout makes that a failing write, not a silent wait).
said_so=0
for _ in $(seq 1 "$PAUSE_SECS"); do
    curl -s --max-time 1 "http://127.0.0.1:$B_PORT/ready" \
        | grep -qE '"partitions_unstored":[1-9]|"last_write":"failing"' && said_so=1
    sleep 1
done
moved=$(offsets_stored)
echo "while A was frozen: stored offsets $frozen_at -> $moved; B reported unstored partitions or failing writes: $said_so"
moved_or_said_so() { [ "$moved" -gt "$frozen_at" ] || [ "$said_so" = 1 ]; }
check "while A was frozen the group moved on, or said it could not" moved_or_said_so
echo "SIGCONT collector A at $moved stored offsets"
kill -CONT "$(cat "$RUN/a.pid")"
fault_mark "healed SIGCONT collector A"

wait_offsets_stored "$N" 240
check_stored_exactly "$N"
check "collector A is alive and ready after its freeze" wait_http "http://127.0.0.1:$A_PORT/ready" 30
