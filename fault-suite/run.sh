#!/usr/bin/env bash
# The fault suite: each scenario drives the real release processes on loopback (a private broker,
# and where it stops PostgreSQL, a private PostgreSQL cluster), injects its fault during a run,
# heals it, and counts in PostgreSQL what the generator had acknowledged against what was stored.
#
#   ./fault-suite.sh [--short] [--report-dir DIR] [SCENARIO...]
#
# This folder is the whole suite: run.sh (this), lib.sh (the scenarios' shared preamble, sampler and
# checks), scenarios/ (one script per scenario), report/ (the report: a table and a chart per
# scenario, crate logpipe-fault-report). The root ./fault-suite.sh runs this.
#
# Scenarios (all by default; the numbers are the fault-suite issue's):
#   crash               1  collector SIGKILLed during a run        (scenarios/crash.sh)
#   zombie              2  a collector frozen past its session     (zombie.sh)
#   churn               3  collectors added and removed every 20 s (churn.sh)
#   broker-pause        4  broker SIGSTOPped 30 s                  (broker-pause.sh)
#   broker-restart-memory  5  in-memory broker SIGKILLed, restarted empty (broker-restart.sh)
#   broker-restart-durable 5  SQLite broker SIGKILLed, restarted on its data (broker-restart.sh)
#   postgres-stop       6  PostgreSQL stopped 60 s                 (postgres-outage.sh stop)
#   redis-restart       7  Redis killed 30 s under gateway load and two budgeted generators
#                                                                  (redis-restart.sh)
#   poison-run          8  poison records mixed into a run         (poison-run.sh)
#   slow-clients       11  trickled bodies, 1,000 idle connections, 10 MB bodies (slow-clients.sh)
#   postgres-readonly  13  PostgreSQL read-only 60 s (a full disk) (postgres-outage.sh readonly)
# --short runs every scenario, smaller (a few minutes in all), as the test command does.
# (broker-restart-memory joined it when logpipe moved to nisshi: Tansu 0.6's coordinator sometimes
# never assigned a partition after its own restart.)
# Writes DIR (default fault-reports/<time>): rows.tsv, a CSV and a chart per scenario, summary.md
# with the table; prints the table. Exit code 0 when every scenario passed.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$LOGPIPE_ROOT" || exit 2

SHORT=0
REPORT=""
NAMES=()
while [ $# -gt 0 ]; do
    case $1 in
        --short) SHORT=1 ;;
        --report-dir) REPORT=$2; shift ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        -*) die "unknown option $1 (--help)" ;;
        *) NAMES+=("$1") ;;
    esac
    shift
done
if [ ${#NAMES[@]} -eq 0 ]; then
    NAMES=(crash zombie churn broker-pause broker-restart-memory broker-restart-durable postgres-stop
        redis-restart poison-run slow-clients postgres-readonly)
fi
REPORT=${REPORT:-fault-reports/$(date +%Y-%m-%d-%H%M%S)}
mkdir -p "$REPORT"
REPORT=$(cd "$REPORT" && pwd)
rm -f "$REPORT/rows.tsv"
export LOGPIPE_FAULT_REPORT=$REPORT

ensure_build_deps
ensure_postgres
ensure_broker
# The charts' text is drawn with a system TrueType font.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_install fonts-dejavu-core
# A private redis-server for the Redis restart.
command -v redis-server >/dev/null || apt_install redis-server
log "building the release binaries"
PKGS=(-p logpipe-collector -p logpipe-generator -p logpipe-gateway -p logpipe-fault-report
    -p logpipe-integration-tests --bins)
cargo build --release --locked "${PKGS[@]}" >/dev/null 2>&1 \
    || cargo build --release --locked "${PKGS[@]}" || die "building the release binaries failed"

# scenario NAME: its script with the sizes of the full or the short form.
run_scenario() {
    local t=fault-suite/scenarios
    case $1 in
        crash)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_CRASH_EVENTS=1000000 LOGPIPE_CRASH_KILLS=3 bash $t/crash.sh
            else env LOGPIPE_CRASH_EVENTS=2000000 LOGPIPE_CRASH_KILLS=5 bash $t/crash.sh; fi ;;
        zombie)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_ZOMBIE_EVENTS=300000 LOGPIPE_ZOMBIE_PAUSE_SECS=20 bash $t/zombie.sh
            else env LOGPIPE_ZOMBIE_EVENTS=1000000 LOGPIPE_ZOMBIE_PAUSE_SECS=35 bash $t/zombie.sh; fi ;;
        churn)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_CHURN_EVENTS=300000 LOGPIPE_CHURN_RATE=5000 LOGPIPE_CHURN_EVERY=12 bash $t/churn.sh
            else env LOGPIPE_CHURN_EVENTS=2400000 LOGPIPE_CHURN_RATE=10000 LOGPIPE_CHURN_EVERY=20 bash $t/churn.sh; fi ;;
        broker-pause)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_PAUSE_RUN_SECS=40 LOGPIPE_PAUSE_SECS=15 bash $t/broker-pause.sh
            else bash $t/broker-pause.sh; fi ;;
        broker-restart-memory)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_RESTART_SECS=30 bash $t/broker-restart.sh memory
            else bash $t/broker-restart.sh memory; fi ;;
        broker-restart-durable)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_RESTART_SECS=30 bash $t/broker-restart.sh durable
            else env LOGPIPE_RESTART_SECS=120 bash $t/broker-restart.sh durable; fi ;;
        postgres-stop | postgres-readonly)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_OUTAGE_RUN_SECS=40 LOGPIPE_OUTAGE_SECS=15 bash $t/postgres-outage.sh "${1#postgres-}"
            else env LOGPIPE_OUTAGE_RUN_SECS=120 LOGPIPE_OUTAGE_SECS=60 bash $t/postgres-outage.sh "${1#postgres-}"; fi ;;
        redis-restart)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_REDIS_RUN_SECS=40 LOGPIPE_REDIS_OUTAGE_SECS=12 bash $t/redis-restart.sh
            else env LOGPIPE_REDIS_RUN_SECS=90 LOGPIPE_REDIS_OUTAGE_SECS=30 bash $t/redis-restart.sh; fi ;;
        poison-run)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_POISON_RUN_SECS=30 LOGPIPE_POISON_ROUNDS=10 bash $t/poison-run.sh
            else env LOGPIPE_POISON_RUN_SECS=120 LOGPIPE_POISON_ROUNDS=60 bash $t/poison-run.sh; fi ;;
        slow-clients)
            if [ "$SHORT" = 1 ]; then env LOGPIPE_SLOW_SECS=20 bash $t/slow-clients.sh
            else env LOGPIPE_SLOW_SECS=60 bash $t/slow-clients.sh; fi ;;
        *) echo "unknown scenario $1"; return 2 ;;
    esac
}

for name in "${NAMES[@]}"; do
    log "fault scenario: $name"
    touch "$REPORT/rows.tsv"
    before=$(wc -l <"$REPORT/rows.tsv")
    run_scenario "$name" 2>&1 | tee "$REPORT/$name.log"
    # A script that died before writing its row still gets one.
    after=$(wc -l <"$REPORT/rows.tsv")
    [ "$after" -gt "$before" ] || printf '%s\t-\t-\t-\t-\tfail\n' "$name" >>"$REPORT/rows.tsv"
done

log "fault suite report: $REPORT/summary.md"
"$CARGO_TARGET_DIR/release/logpipe-fault-report" "$REPORT"
rc=$?
echo "fault-suite: $(grep -c $'\tpass$' "$REPORT/rows.tsv") passed, $(grep -vc $'\tpass$' "$REPORT/rows.tsv") failed"
exit $rc
