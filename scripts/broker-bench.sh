#!/usr/bin/env bash
# Brokers side by side in one run (issue 33: a broker change must be no slower). Each BIN is started
# in turn on a private port with its memory engine, and the bare clients' ceilings are measured
# against it; the brokers alternate for ROUNDS rounds, so none always meets a colder or busier
# machine:
#   - produce: `cargo bench -p logpipe-generator --bench produce -- N`: a bare idempotent rdkafka
#     producer of pre-serialized events (the ceiling) and the generator, two rounds of N each;
#   - consume: `cargo bench -p logpipe-collector --bench drain -- N consume`: N events filled by an
#     idempotent producer, then read back by a bare consumer with the default fetch settings and
#     three tuned ones (the ceiling is the best);
# and the broker's own CPU seconds over each bench (user + system, /proc/PID/stat), the same work on
# every broker.
#
#   scripts/broker-bench.sh [--rounds R] [--events N] [BIN...]     (default: the broker setup builds)
#
# Ends with a Markdown table; the benches' own output stays in the printed folder.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$LOGPIPE_ROOT"

ROUNDS=2
EVENTS=300000
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --events) EVENTS=$2; shift 2 ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
if [ $# -eq 0 ]; then
    ensure_broker
    set -- "$LOGPIPE_BROKER_BIN"
fi
for bin; do [ -x "$bin" ] || die "$bin is not an executable"; done

OUT=$(mktemp -d /tmp/logpipe-broker-bench.XXXXXX)
log "building the benches (output in $OUT)"
cargo bench --no-run -p logpipe-generator --bench produce -p logpipe-collector --bench drain \
    >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log" >&2; die "bench build failed"; }

# CPU seconds a process has used: fields 14 and 15 of /proc/PID/stat, after the command name.
cpu_secs() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ printf "%.2f", ($12 + $13) / 100 }'; }
# The number before "events/s" on the first line matching PATTERN in FILE.
rate() { grep -m1 -- "$2" "$1" | sed -E 's/.* ([0-9]+) events\/s.*/\1/'; }

PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; true; }
trap cleanup EXIT

ROWS=()
for round in $(seq 1 "$ROUNDS"); do
    for bin; do
        name=$(basename "$bin")
        dir=$OUT/$round-$name
        mkdir -p "$dir"
        port=$(free_port)
        LOGPIPE_BROKER_BIN=$bin broker_command "$port" "memory://$name/"
        (cd "$dir" && exec "${BROKER_CMD[@]}") >"$dir/broker.log" 2>&1 &
        PID=$!
        wait_port 127.0.0.1 "$port" 30 || die "$bin did not listen on $port (see $dir/broker.log)"
        export LOGPIPE_BENCH_BROKERS=127.0.0.1:$port
        log "round $round, $name: produce"
        c0=$(cpu_secs "$PID")
        cargo bench -q -p logpipe-generator --bench produce -- "$EVENTS" >"$dir/produce.txt" 2>>"$dir/bench.log" \
            || die "the produce bench failed on $name (see $dir)"
        c1=$(cpu_secs "$PID")
        log "round $round, $name: consume"
        cargo bench -q -p logpipe-collector --bench drain -- "$EVENTS" consume >"$dir/consume.txt" 2>>"$dir/bench.log" \
            || die "the consume bench failed on $name (see $dir)"
        c2=$(cpu_secs "$PID")
        kill "$PID"
        wait "$PID" 2>/dev/null || true
        PID=
        ROWS+=("| $round | $name | $(rate "$dir/produce.txt" 'ceiling (bare') | $(rate "$dir/produce.txt" 'generator engine') | $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.1f", b - a }') | $(sed -nE 's/.*WARN and above, ([0-9]+) events\/s.*/\1/p' "$dir/consume.txt") | $(rate "$dir/consume.txt" 'default fetch') | $(rate "$dir/consume.txt" 'ceiling   consume') | $(awk -v a="$c1" -v b="$c2" 'BEGIN { printf "%.1f", b - a }') |")
    done
done

echo
echo "Brokers side by side, $EVENTS events per phase, memory engine ($(date -u +%F), $(nproc) cores; benches' output in $OUT):"
echo
echo "| round | broker | produce: bare producer, events/s | generator, events/s | broker CPU s over the produce bench | consume bench fill, events/s | consume, default fetch | consume ceiling, best tuned | broker CPU s over the consume bench |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
