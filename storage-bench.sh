#!/usr/bin/env bash
# The storage benchmark: PostgreSQL alone (no broker), in the database logpipe_bench.
#
#   ./storage-bench.sh [--rows N] [--days N] [--ratio-rows N] [--repeat N] [--ingest-rate N]
#                      [--ingest-secs N] [--query-clients N] [--report-dir DIR] [--keep]
#
# Loads --rows synthetic events (default 50,000,000 over 7 days, about 20 GB with indexes: the run
# checks free disk first) and reports in one run: COPY into the partitioned layout vs the old
# unpartitioned one (ratio, same rows), each index's cost to the writer (CPU per row), query p50/p95
# through the collector's API with EXPLAIN ANALYZE, the text-index build, the time to drop a day,
# size per million rows, a paced writer's rate alone and under eight query clients. Writes summary.md and
# explain.md into --report-dir (default storage-bench-report). Exit code: 0 every answer right,
# 1 a wrong answer (a failed query, rows that do not add up), 2 the run failed.
# The full run takes about an hour on 2 cores; the test command runs a short form.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"
cd "$LOGPIPE_ROOT" || exit 2

case " $* " in *" --help "*|*" -h "*) sed -n '2,14p' "$0"; exit 0 ;; esac
ensure_build_deps
ensure_postgres
ensure_database logpipe_bench
cargo build --release --locked -p logpipe-storage-bench --bin logpipe-storage-bench >/dev/null 2>&1 \
    || cargo build --release --locked -p logpipe-storage-bench --bin logpipe-storage-bench \
    || die "building logpipe-storage-bench failed"
exec "$CARGO_TARGET_DIR/release/logpipe-storage-bench" \
    --database-url "postgres://$PG_USER@$PG_HOST:$PG_PORT/logpipe_bench" "$@"
