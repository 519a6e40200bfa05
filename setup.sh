#!/usr/bin/env bash
# Bring the whole logpipe stack up and start generating.
#
#   ./setup.sh [--durable] [--rate N] [--no-generate] [--with-keys] [--with-prometheus] [--syslog[=PORT]]
#              [--native|--docker]
#
# With a Docker engine (`docker info` succeeds) it runs docker-compose; otherwise it runs natively:
# installs what is missing (apt build deps, PostgreSQL, Redis, the broker, nisshi), builds release
# binaries, applies migrations, starts broker, collector, generator and gateway in the background with
# pid files and logs under one run directory, waits for each /ready, and starts generation through the
# gateway. --with-prometheus also starts Prometheus from Debian's package (installed if missing),
# scraping the three services and loading the alert rules. Running it again while the stack is up is
# safe. ./stop.sh stops what it started. --with-keys (native mode) makes an admin, an ingest and a
# read API key for a gateway it starts, prints them once and keeps only their SHA-256 hashes
# ($RUN_DIR/gateway-keys.toml, in force until deleted); without keys the gateway is open, on
# 127.0.0.1 only. --syslog (native mode) turns on the gateway's syslog listeners, TCP and UDP on
# 127.0.0.1:5514 (or PORT); LOGPIPE_SYSLOG_TCP_ADDR / LOGPIPE_SYSLOG_UDP_ADDR set either alone.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"
cd "$LOGPIPE_ROOT"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-logpipe}

MODE=auto
DURABLE=0
GENERATE=1
PROMETHEUS=0
WITH_KEYS=0
SYSLOG_PORT=
RATE=${LOGPIPE_RATE:-1000}
while [ $# -gt 0 ]; do
    case $1 in
        --durable) DURABLE=1 ;;
        --no-generate) GENERATE=0 ;;
        --rate) RATE=$2; shift ;;
        --native) MODE=native ;;
        --docker) MODE=docker ;;
        --with-prometheus) PROMETHEUS=1 ;;
        --with-keys) WITH_KEYS=1 ;;
        --syslog) SYSLOG_PORT=5514 ;;
        --syslog=*) SYSLOG_PORT=${1#--syslog=} ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

RUN_DIR=${LOGPIPE_RUN_DIR:-$LOGPIPE_ROOT/.run}
BROKER_PORT=${LOGPIPE_BROKER_PORT:-9092}
GENERATOR_PORT=${LOGPIPE_GENERATOR_PORT:-8080}
COLLECTOR_PORT=${LOGPIPE_COLLECTOR_PORT:-8082}
GATEWAY_PORT=${LOGPIPE_GATEWAY_PORT:-8090}
PROMETHEUS_PORT=${LOGPIPE_PROMETHEUS_PORT:-9090}
DB_NAME=${LOGPIPE_DB_NAME:-logpipe}
DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB_NAME"
BROKERS="127.0.0.1:$BROKER_PORT"
PROFILE_DIR=release

if [ "$MODE" = auto ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then MODE=docker; else MODE=native; fi
fi

mkdir -p "$RUN_DIR/logs" "$RUN_DIR/pids" "$RUN_DIR/broker-data"
# The run directory holds the internal token and the key hashes: the operator's alone.
chmod 700 "$RUN_DIR"
# The collector and the generator answer only the gateway (and whoever holds this file).
ensure_internal_token "$RUN_DIR"
INTERNAL=(--internal-token-file "$RUN_DIR/internal-token")

# make_keys: an admin, an ingest and a read key, printed once at the end, kept as hashes in
# $keys_file (mode 0600); the admin key is kept in ADMIN_KEY to start generation.
ADMIN_KEY=${LOGPIPE_ADMIN_KEY:-}
KEYS_MADE=""
keys_file="$RUN_DIR/gateway-keys.toml"
make_keys() {
    local role key hash
    (umask 077 && : >"$keys_file")
    printf '# API keys made by ./setup.sh --with-keys on %s: hashes only.\n[auth]\nkeys = [\n' "$(date -u +%FT%TZ)" >>"$keys_file"
    for role in admin ingest read; do
        key="lp_${role}_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
        hash=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
        printf '  { name = "%s", sha256 = "%s", scopes = ["%s"] },\n' "$role" "$hash" "$role" >>"$keys_file"
        KEYS_MADE+=$(printf '  %-10s %s' "$role" "$key")$'\n'
        [ "$role" = admin ] && ADMIN_KEY=$key
    done
    printf ']\n' >>"$keys_file"
}

# start_generation_through_gateway: the admin key goes to curl on its standard input (`-H @-`),
# not its command line, which every local user can read.
start_generation_through_gateway() {
    local code
    code=$(printf '%s\n' "${ADMIN_KEY:+authorization: Bearer $ADMIN_KEY}" \
        | curl -sS -o "$RUN_DIR/logs/start-response.json" -w '%{http_code}' -X POST -H @- \
            -H 'content-type: application/json' -d "{\"rate_per_second\": $RATE}" \
            "http://127.0.0.1:$GATEWAY_PORT/api/v1/generator/start")
    case $code in
        202) log "generation started at $RATE events/s" ;;
        409) log "generation already running" ;;
        401) log "the running gateway needs an admin key to start generation: set LOGPIPE_ADMIN_KEY" ;;
        *) die "starting generation failed with HTTP $code: $(cat "$RUN_DIR/logs/start-response.json")" ;;
    esac
}

print_keys() {
    [ -n "$KEYS_MADE" ] || return 0
    printf '\nAPI keys (shown once; only their hashes are kept, in %s):\n%s' "$keys_file" "$KEYS_MADE"
    printf "  use        curl -H 'authorization: Bearer <key>' http://127.0.0.1:%s/api/v1/stats\n" "$GATEWAY_PORT"
}

if [ "$MODE" = docker ]; then
    [ -n "$SYSLOG_PORT" ] && die "--syslog is for native mode; under compose set LOGPIPE_SYSLOG_TCP_ADDR and publish the port in docker-compose.yml"
    log "Docker engine found: running the stack with docker compose"
    # Containers take the token from their environment (a bind-mounted 0600 file would keep the
    # host owner, whom the container user is not); Prometheus reads a copy in this run directory.
    LOGPIPE_INTERNAL_TOKEN=$(cat "$RUN_DIR/internal-token")
    export LOGPIPE_INTERNAL_TOKEN LOGPIPE_RUN_DIR=$RUN_DIR
    cp "$RUN_DIR/internal-token" "$RUN_DIR/prometheus-internal-token"
    chmod 644 "$RUN_DIR/prometheus-internal-token"
    COMPOSE_FILES=(-f docker-compose.yml)
    [ "$WITH_KEYS" = 1 ] && make_keys
    if [ -f "$keys_file" ]; then
        # Hashes only, readable by the container's user; the directory stays the operator's.
        chmod 644 "$keys_file"
        cat >"$RUN_DIR/compose.keys.yml" <<YML
# Written by ./setup.sh: the gateway with the API keys of $keys_file.
services:
  gateway:
    environment:
      LOGPIPE_GATEWAY_CONFIG: /etc/logpipe/gateway-keys.toml
    volumes:
      - $keys_file:/etc/logpipe/gateway-keys.toml:ro
YML
        COMPOSE_FILES+=(-f "$RUN_DIR/compose.keys.yml")
    fi
    docker compose "${COMPOSE_FILES[@]}" up -d --build --wait
    if [ "$GENERATE" = 1 ]; then start_generation_through_gateway; fi
    docker compose "${COMPOSE_FILES[@]}" ps
    log "console: http://127.0.0.1:$GATEWAY_PORT/   stop with: docker compose down"
    print_keys
    exit 0
fi

log "native mode (no Docker engine); run directory: $RUN_DIR"

ensure_build_deps
ensure_postgres
ensure_redis
ensure_database "$DB_NAME"

log "building release binaries (target dir: $CARGO_TARGET_DIR; several minutes the first time, then seconds)"
build_beside_broker logpipe 280 "$RUN_DIR/logs/build.log" \
    cargo build --release --locked -p logpipe-generator -p logpipe-gateway -p logpipe-collector \
    || { tail -40 "$RUN_DIR/logs/build.log" >&2; die "build failed"; }
BIN=$CARGO_TARGET_DIR/$PROFILE_DIR

# The first `Error: ` line a service wrote to log $1 after its first $2 lines (this run's own; the
# logs keep every run's), without the prefix; nothing when there is none.
error_since() {
    tail -n +"$(($2 + 1))" "$1" | grep -m1 '^Error: ' | sed 's/^Error: //' || true
}

log "applying migrations to $DB_NAME"
MIGRATE_LOG=$RUN_DIR/logs/migrate.log
seen=0
[ -f "$MIGRATE_LOG" ] && seen=$(wc -l <"$MIGRATE_LOG")
# This run's lines only (the log keeps every run's); the collector's error line is repeated last,
# since with RUST_BACKTRACE set the 20 lines shown are the backtrace that follows it.
"$BIN/logpipe-collector" --migrate-only --database-url "$DATABASE_URL" >>"$MIGRATE_LOG" 2>&1 \
    || { tail -n +"$((seen + 1))" "$MIGRATE_LOG" | tail -20 >&2
         why=$(error_since "$MIGRATE_LOG" "$seen")
         die "the collector's --migrate-only step failed (its configuration or the migrations)${why:+: $why}"; }

# --- broker ---------------------------------------------------------------------------------------
if pid_alive "$RUN_DIR/pids/broker.pid" "$BROKER_PROCESS"; then
    log "broker already running (pid $(cat "$RUN_DIR/pids/broker.pid"): $(tr '\0' ' ' <"/proc/$(cat "$RUN_DIR/pids/broker.pid")/cmdline" | cut -d' ' -f1))"
else
    port_open 127.0.0.1 "$BROKER_PORT" && die "port $BROKER_PORT is taken by a process this setup did not start"
    if [ "$DURABLE" = 1 ]; then
        STORAGE=$(broker_storage durable)   # relative to the broker's working directory, the data dir
    else
        STORAGE=$(broker_storage memory)
    fi
    broker_command "$BROKER_PORT" "$STORAGE"
    start_bg broker "$RUN_DIR/broker-data" "$RUN_DIR/logs/broker.log" "$RUN_DIR/pids/broker.pid" \
        "${BROKER_CMD[@]}"
    wait_port 127.0.0.1 "$BROKER_PORT" 30 || die "broker did not open port $BROKER_PORT; see $RUN_DIR/logs/broker.log"
fi

# --- services -------------------------------------------------------------------------------------
# Lines each service's log held before this run started it (the logs are appended to across runs):
# a start that fails is explained from this run's lines only.
declare -A LOG_SEEN=()
start_service() {
    local name=$1 port=$2
    shift 2
    if pid_alive "$RUN_DIR/pids/$name.pid" "logpipe-$name"; then
        log "$name already running (pid $(cat "$RUN_DIR/pids/$name.pid"))"
        return 0
    fi
    port_open 127.0.0.1 "$port" && die "port $port is taken by a process this setup did not start"
    LOG_SEEN[$name]=0
    [ -f "$RUN_DIR/logs/$name.log" ] && LOG_SEEN[$name]=$(wc -l <"$RUN_DIR/logs/$name.log")
    start_bg "$name" "$RUN_DIR" "$RUN_DIR/logs/$name.log" "$RUN_DIR/pids/$name.pid" "$BIN/logpipe-$name" "$@"
}

# Wait for a service's /ready. One that exits meanwhile fails the setup at once, quoting its error,
# instead of after the whole wait.
wait_ready() {
    local name=$1 port=$2 secs=$3 logfile="$RUN_DIR/logs/$1.log" why
    for _ in $(seq 1 $((secs * 2))); do
        internal_curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/ready" 2>/dev/null && return 0
        # Not `pid_alive`: just started, the process may not have exec'd the service yet. A
        # zombie (exited, not reaped yet) counts as exited.
        if ! grep -qs '^State:[[:space:]]*[^Z]' "/proc/$(cat "$RUN_DIR/pids/$name.pid")/status"; then
            why=$(error_since "$logfile" "${LOG_SEEN[$name]:-0}")
            die "$name exited while starting${why:+: $why}; see $logfile"
        fi
        sleep 0.5
    done
    die "$name is not ready after $secs s; see $logfile"
}

# stop.sh reads where the collector listens, to wait for it to drain before the broker stops.
echo "COLLECTOR_PORT=$COLLECTOR_PORT" >"$RUN_DIR/ports.env"
start_service collector "$COLLECTOR_PORT" --port "$COLLECTOR_PORT" --brokers "$BROKERS" \
    --database-url "$DATABASE_URL" "${INTERNAL[@]}"
start_service generator "$GENERATOR_PORT" --port "$GENERATOR_PORT" --brokers "$BROKERS" \
    --instance-id "gen-$(hostname)-1" "${INTERNAL[@]}"
# API keys: made only for a gateway this run starts, shown once, kept only as hashes. Once made
# they stay in force across stop and setup until the file is deleted (a restart never silently
# reopens a keyed gateway); generation is then started with LOGPIPE_ADMIN_KEY.
GATEWAY_ARGS=()
if [ "$WITH_KEYS" = 1 ] && ! pid_alive "$RUN_DIR/pids/gateway.pid" logpipe-gateway; then
    make_keys
fi
[ -f "$keys_file" ] && GATEWAY_ARGS=(--config "$keys_file")
if [ -n "$SYSLOG_PORT" ]; then
    case $SYSLOG_PORT in ''|*[!0-9]*) die "--syslog=PORT takes a port number, not $SYSLOG_PORT" ;; esac
    GATEWAY_ARGS+=(--syslog-tcp-addr "127.0.0.1:$SYSLOG_PORT" --syslog-udp-addr "127.0.0.1:$SYSLOG_PORT")
fi
start_service gateway "$GATEWAY_PORT" --port "$GATEWAY_PORT" --brokers "$BROKERS" \
    --generator-urls "http://127.0.0.1:$GENERATOR_PORT" --collector-url "http://127.0.0.1:$COLLECTOR_PORT" \
    "${INTERNAL[@]}" "${GATEWAY_ARGS[@]}"

for svc in collector:$COLLECTOR_PORT generator:$GENERATOR_PORT gateway:$GATEWAY_PORT; do
    name=${svc%%:*}
    port=${svc##*:}
    wait_ready "$name" "$port" 90
    log "$name ready on http://127.0.0.1:$port"
done

if [ "$PROMETHEUS" = 1 ]; then
    command -v prometheus >/dev/null || apt_install prometheus
    if pid_alive "$RUN_DIR/pids/prometheus.pid" prometheus; then
        log "prometheus already running (pid $(cat "$RUN_DIR/pids/prometheus.pid"))"
    else
        port_open 127.0.0.1 "$PROMETHEUS_PORT" && die "port $PROMETHEUS_PORT is taken by a process this setup did not start"
        # The compose config with this run's addresses (compose names become 127.0.0.1 ports).
        mkdir -p "$RUN_DIR/prometheus/data"
        cp deploy/prometheus/alerts.yml "$RUN_DIR/prometheus/alerts.yml"
        cat >"$RUN_DIR/prometheus/prometheus.yml" <<PROM
global:
  scrape_interval: 2s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: gateway
    static_configs: [{ targets: ["127.0.0.1:$GATEWAY_PORT"] }]
  - job_name: generator
    authorization: { credentials_file: $RUN_DIR/internal-token }
    static_configs: [{ targets: ["127.0.0.1:$GENERATOR_PORT"] }]
  - job_name: collector
    authorization: { credentials_file: $RUN_DIR/internal-token }
    static_configs: [{ targets: ["127.0.0.1:$COLLECTOR_PORT"] }]
PROM
        start_bg prometheus "$RUN_DIR/prometheus" "$RUN_DIR/logs/prometheus.log" "$RUN_DIR/pids/prometheus.pid" \
            "$(command -v prometheus)" --config.file="$RUN_DIR/prometheus/prometheus.yml" \
            --storage.tsdb.path="$RUN_DIR/prometheus/data" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
        wait_http "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" 60 \
            || die "prometheus is not ready after 60 s; see $RUN_DIR/logs/prometheus.log"
        log "prometheus ready on http://127.0.0.1:$PROMETHEUS_PORT"
    fi
fi

[ "$GENERATE" = 1 ] && start_generation_through_gateway

cat <<EOF

logpipe is up (native mode).
  console    http://127.0.0.1:$GATEWAY_PORT/
  gateway    http://127.0.0.1:$GATEWAY_PORT   (pid $(cat "$RUN_DIR/pids/gateway.pid"))
  generator  http://127.0.0.1:$GENERATOR_PORT   (pid $(cat "$RUN_DIR/pids/generator.pid"); answers the gateway's token only)
  collector  http://127.0.0.1:$COLLECTOR_PORT   (pid $(cat "$RUN_DIR/pids/collector.pid"); answers the gateway's token only)$( [ "$PROMETHEUS" = 1 ] && printf '\n  prometheus http://127.0.0.1:%s' "$PROMETHEUS_PORT")
$( [ -n "$SYSLOG_PORT" ] && printf '  syslog     127.0.0.1:%s TCP (RFC 6587) and UDP  (logger -n 127.0.0.1 -P %s -T --rfc5424 hello)\n' "$SYSLOG_PORT" "$SYSLOG_PORT")
  broker     127.0.0.1:$BROKER_PORT  $(basename "$(tr '\0' ' ' <"/proc/$(cat "$RUN_DIR/pids/broker.pid")/cmdline" | cut -d' ' -f1)"), $( [ "$DURABLE" = 1 ] && echo "sqlite (durable)" || echo "memory (lost on stop)" ) (pid $(cat "$RUN_DIR/pids/broker.pid"))
  postgres   $DATABASE_URL
  logs       $RUN_DIR/logs/
  status     curl http://127.0.0.1:$GATEWAY_PORT/api/v1/generator/status
  events     psql $DATABASE_URL -c 'select count(*) from log_events'
  stop       ./stop.sh
EOF
if [ -z "$KEYS_MADE" ] && [ -f "$keys_file" ]; then
    echo "  API keys   in force from $keys_file (made earlier; delete it for an open local gateway)"
fi
print_keys
