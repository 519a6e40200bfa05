# shellcheck shell=bash
# Shared by setup.sh, stop.sh, test.sh and the system test: installing what the native stack needs,
# starting processes with pid files, and stopping exactly those pids. Source it; do not run it.

LOGPIPE_ROOT=${LOGPIPE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# Per-user cache: the broker binary and the Cargo target directory live here so every clone reuses them.
LOGPIPE_CACHE=${LOGPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/logpipe}
# The broker native mode builds and starts is nisshi, Tansu's successor (issue 33; logpipe ran on
# Tansu 0.6.0 with three local patches until then, deploy/nisshi/README.md says why it moved). It
# is built unpatched from its published crate with the lock file it publishes, by the one toolchain
# it needs (rama 0.4 wants Rust 1.96), installed for that build alone; the workspace keeps its own.
NISSHI_VERSION=0.8.1
NISSHI_TOOLCHAIN=1.96.0
export NISSHI_BIN=${NISSHI_BIN:-$LOGPIPE_CACHE/nisshi-$NISSHI_VERSION/bin/nisshi}
# LOGPIPE_BROKER_BIN is the broker every script and the integration tests' private brokers start;
# another build of a broker with the same command line can stand in for it (setting it skips the
# build). Its memory engine and durable file are named for the binary (broker_storage).
export LOGPIPE_BROKER_BIN=${LOGPIPE_BROKER_BIN:-$NISSHI_BIN}
# LOGPIPE_BROKER chose between Tansu and nisshi before the move; an old setting is refused aloud
# rather than ignored.
case "${LOGPIPE_BROKER:-nisshi}" in
    nisshi) ;;
    *) printf '[logpipe] error: LOGPIPE_BROKER=%s: logpipe runs on nisshi only since Tansu was retired (deploy/nisshi/README.md); unset it, or set LOGPIPE_BROKER_BIN to run another broker binary\n' "$LOGPIPE_BROKER" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$LOGPIPE_CACHE/target}
PG_HOST=${LOGPIPE_PG_HOST:-127.0.0.1}
PG_PORT=${LOGPIPE_PG_PORT:-5432}
PG_USER=${LOGPIPE_PG_USER:-postgres}
REDIS_PORT=${LOGPIPE_REDIS_PORT:-6379}

log() { printf '[logpipe] %s\n' "$*"; }
die() { printf '[logpipe] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=
apt_install() {
    if [ -z "$APT_UPDATED" ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# Build dependencies of the rdkafka crate's bundled librdkafka (cmake-build, zstd, libz), of sqlx
# and reqwest, plus the client tools the scripts use.
ensure_build_deps() {
    local pkgs=(cmake pkg-config build-essential patch libcurl4-openssl-dev libssl-dev zlib1g-dev libzstd-dev
                libsasl2-dev curl postgresql-client redis-tools)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
}

# The shipper clients tests/shippers.rs drives: syslog-ng with its HTTP module and SCL (Debian's;
# it replaces rsyslog where that is installed, as the two packages conflict); rsyslog with
# omelasticsearch unpacked from Debian's packages into the per-user cache, beside it (its
# libraries installed; the package itself would remove syslog-ng); and, in the per-user cache,
# reinstalled only when a pinned list changes, the Python ones
# (integration-tests/shippers/requirements.txt) in a virtualenv and the Node.js ones
# (integration-tests/shippers/package.json) in a node_modules.
ensure_shipper_clients() {
    local dir=$LOGPIPE_ROOT/integration-tests/shippers
    if ! command -v syslog-ng >/dev/null || [ ! -d /usr/share/syslog-ng/include/scl/elasticsearch ] \
        || ! compgen -G '/usr/lib/syslog-ng/*/libhttp.so' >/dev/null; then
        apt_install syslog-ng-core syslog-ng-mod-http syslog-ng-scl
    fi
    local rsyslog=$LOGPIPE_CACHE/rsyslog
    if [ ! -x "$rsyslog/usr/sbin/rsyslogd" ] || [ ! -e "$rsyslog/usr/lib/x86_64-linux-gnu/rsyslog/omelasticsearch.so" ]; then
        local missing=() p
        for p in libestr0 libfastjson4 liblognorm5 libcurl4; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
        done
        [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
        local debs
        debs=$(mktemp -d)
        log "unpacking Debian's rsyslog and rsyslog-elasticsearch into $rsyslog"
        (cd "$debs" && chmod 777 . && apt-get download -qq rsyslog rsyslog-elasticsearch >/dev/null 2>&1) \
            || die "apt-get download rsyslog rsyslog-elasticsearch failed"
        mkdir -p "$rsyslog"
        for p in "$debs"/*.deb; do dpkg -x "$p" "$rsyslog" || die "dpkg -x $p failed"; done
        rm -rf "$debs"
    fi
    local venv=$LOGPIPE_CACHE/shippers-venv node=$LOGPIPE_CACHE/shippers-node
    if ! { [ -x "$venv/bin/python" ] && cmp -s "$dir/requirements.txt" "$venv/.requirements"; }; then
        python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; } \
            || die "could not make a virtualenv at $venv"
        log "pip install the shipper clients into $venv"
        "$venv/bin/pip" install -q -r "$dir/requirements.txt" || die "pip install -r $dir/requirements.txt failed"
        cp "$dir/requirements.txt" "$venv/.requirements"
    fi
    if ! { [ -d "$node/node_modules/winston-loki" ] && cmp -s "$dir/package.json" "$node/package.json"; }; then
        command -v npm >/dev/null || apt_install nodejs npm
        mkdir -p "$node" && cp "$dir/package.json" "$node/package.json"
        log "npm install the shipper clients into $node"
        (cd "$node" && npm install --silent --no-audit --no-fund >/dev/null) || die "npm install in $node failed"
    fi
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

# Use the PostgreSQL reachable on 127.0.0.1 if there is one; else start the installed cluster; else
# install Debian's package, allow trust auth on loopback, and start it.
ensure_postgres() {
    pg_up && return 0
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
        local hba
        hba=$(find /etc/postgresql -path '*/main/pg_hba.conf' | sort -V | tail -1)
        as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    local ver
    ver=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    for _ in $(seq 1 30); do pg_up && return 0; sleep 1; done
    die "PostgreSQL is not reachable on $PG_HOST:$PG_PORT"
}

ensure_database() {
    local db=$1
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
        || psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "CREATE DATABASE \"$db\"" >/dev/null \
        || die "cannot create database $db"
}

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
    redis_up && return 0
    command -v redis-server >/dev/null || apt_install redis-server
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/logpipe.log
    for _ in $(seq 1 20); do redis_up && return 0; sleep 0.5; done
    die "Redis is not reachable on 127.0.0.1:$REDIS_PORT"
}

# fetch_crate NAME VERSION SHA256 DIR: download NAME-VERSION from crates.io, check it against the
# checksum the crates.io index publishes, and unpack it in DIR.
fetch_crate() {
    local file=$4/$1-$2.crate
    curl -fsSL --retry 3 -o "$file" "https://static.crates.io/crates/$1/$1-$2.crate" \
        || die "cannot download the crate $1 $2"
    echo "$3  $file" | sha256sum -c --quiet - || die "checksum mismatch for $file"
    tar xzf "$file" -C "$4"
}
# with_progress LABEL TOTAL LOG CMD...: run a cargo build CMD with its output in LOG, and print once
# a minute how many crates it has compiled (of about TOTAL; 0 when unknown) and for how long, so a
# first build's quarter of an hour is never silent. Returns CMD's status.
with_progress() {
    local label=$1 total=$2 build_log=$3 pid started=$SECONDS next=60 n of=""
    shift 3
    [ "$total" -gt 0 ] && of=" of about $total"
    "$@" >"$build_log" 2>&1 &
    pid=$!
    # A background job of a script ignores SIGINT, so on Ctrl-C the build is stopped here, and
    # so is a broker build running beside it (build_beside_broker).
    # shellcheck disable=SC2064 # the pids are fixed now
    trap "kill $pid 2>/dev/null; ${BESIDE_PID:+kill -- -$BESIDE_PID 2>/dev/null;} exit 130" INT TERM
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        if [ $((SECONDS - started)) -ge $next ]; then
            n=$(grep -c '^ *Compiling ' "$build_log")
            log "  $label: $n$of crates compiled, $((next / 60)) min in"
            next=$((next + 60))
        fi
    done
    trap - INT TERM
    wait "$pid"
}

ensure_nisshi() {
    [ -x "$NISSHI_BIN" ] && return 0
    local src=$LOGPIPE_CACHE/nisshi-src build_log=$LOGPIPE_CACHE/nisshi-build.log
    mkdir -p "$LOGPIPE_CACHE"
    log "building nisshi $NISSHI_VERSION into $LOGPIPE_CACHE (once per machine; 16 to 18 minutes on 2 cores)"
    log "  build log: $build_log"
    rustup toolchain list | grep -q "^$NISSHI_TOOLCHAIN" \
        || rustup toolchain install "$NISSHI_TOOLCHAIN" --profile minimal \
        || die "cannot install Rust $NISSHI_TOOLCHAIN for nisshi"
    rm -rf "$src"/nisshi-* && mkdir -p "$src"
    fetch_crate nisshi "$NISSHI_VERSION" \
        a357efb09b95f96964366d41b030341aa9c729544ae4dd9cdd012d7ef8e19a52 "$src"
    # Only the two engines logpipe starts: memory:// (dynostore) and sqlite:// (libsql).
    # --timings keeps where the build's minutes go (target/cargo-timings/) for the next cut.
    CARGO_TARGET_DIR=$src/target with_progress nisshi 465 "$build_log" \
        cargo "+$NISSHI_TOOLCHAIN" build --release --locked --timings --no-default-features \
        --features dynostore,libsql --manifest-path "$src/nisshi-$NISSHI_VERSION/Cargo.toml" \
        || { tail -30 "$build_log" >&2; die "building nisshi failed"; }
    install -D -m 0755 "$src/target/release/nisshi" "$NISSHI_BIN"
}

# The broker's process, as pid_alive matches a command line: the binary started, or a Tansu that an
# older checkout's setup.sh started (so this stop.sh still drains and stops that stack).
# shellcheck disable=SC2034 # read by setup.sh and stop.sh
BROKER_PROCESS="$LOGPIPE_BROKER_BIN \\|/bin/tansu "

ensure_broker() {
    [ -x "$LOGPIPE_BROKER_BIN" ] && return 0
    [ "$LOGPIPE_BROKER_BIN" = "$NISSHI_BIN" ] || die "LOGPIPE_BROKER_BIN=$LOGPIPE_BROKER_BIN is not an executable"
    ensure_nisshi
}

# build_beside_broker LABEL TOTAL LOG CMD...: run the cargo build CMD as with_progress does while the
# broker builds beside it, when it must be built (issue 33: on a fresh machine the two builds no
# longer wait on each other, and each prints its own progress). The broker builds in its own
# process group, so a failed CMD stops it at once instead of leaving the user a quarter of an hour
# to learn of it. Returns CMD's status; dies if the broker's build failed (ensure_broker says why).
build_beside_broker() {
    local broker_pid="" rc=0
    if [ ! -x "$LOGPIPE_BROKER_BIN" ]; then
        log "the broker and $1 build side by side (a first build on 2 cores: about 18 minutes in all, the broker's being the longer)"
        # A script's background job is not a group leader, so setsid does not fork: the pid is
        # the new group's.
        setsid bash -c "source '$LOGPIPE_ROOT/scripts/lib.sh' && ensure_broker" &
        broker_pid=$!
    fi
    BESIDE_PID=$broker_pid with_progress "$@" || rc=$?
    if [ -n "$broker_pid" ]; then
        if [ "$rc" -ne 0 ]; then
            kill -- "-$broker_pid" 2>/dev/null
            wait "$broker_pid" 2>/dev/null
        else
            wait "$broker_pid" || die "the broker was not built (see above)"
        fi
    fi
    return "$rc"
}

# broker_command PORT STORAGE: sets BROKER_CMD to the broker's command line on 127.0.0.1:PORT.
# The broker logs at LOGPIPE_BROKER_LOG (default warn), never at the services' RUST_LOG: nisshi
# writes every span's enter and exit at info, 29 GB in a four-minute fault scenario.
# A new group's first rebalance does not wait (GROUP_INITIAL_REBALANCE_DELAY, nisshi's name for
# Kafka's group.initial.rebalance.delay.ms, 3 s by default): a collector starting alone got its
# partitions 3 s after it joined, and events produced meanwhile waited (the load test's p99 3.0 s
# at 40,000 events/s; 60 ms with 0). Collectors starting together rebalance once per arrival
# instead, which cooperative-sticky keeps cheap. An environment variable, so another broker
# binary given as LOGPIPE_BROKER_BIN ignores it.
broker_command() {
    # shellcheck disable=SC2034 # read by the caller
    BROKER_CMD=(env "RUST_LOG=${LOGPIPE_BROKER_LOG:-warn}" GROUP_INITIAL_REBALANCE_DELAY=0s
        "$LOGPIPE_BROKER_BIN" broker
        --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1"
        --storage-engine "$2")
}

# broker_storage memory|durable: the broker's --storage-engine URL. A durable log is a SQLite file
# named for the broker binary in its working directory (as `it::start_broker` names it), so one
# broker never opens another's.
broker_storage() {
    case "$1" in
        durable) echo "sqlite://$(basename "$LOGPIPE_BROKER_BIN").db" ;;
        *) echo "memory://$(basename "$LOGPIPE_BROKER_BIN")/" ;;
    esac
}

# check WHAT CMD...: run CMD; print "ok - WHAT" or "not ok - WHAT" and count it in the caller's
# `passed` / `failed` (the test scripts' TAP-like lines).
check() {
    local what=$1
    shift
    if "$@"; then echo "ok - $what"; passed=$((passed + 1)); else echo "not ok - $what"; failed=$((failed + 1)); fi
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# A port free on loopback now (the fault tests' private processes).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    local host=$1 port=$2 secs=${3:-30}
    for _ in $(seq 1 $((secs * 5))); do port_open "$host" "$port" && return 0; sleep 0.2; done
    return 1
}

# ensure_internal_token DIR: the token the gateway presents to the collector and the generator
# (DIR/internal-token, 64 hex digits) and the same as a curl header file
# (DIR/internal-auth.header), both mode 0600, made once and kept; nothing prints them. Exports
# LOGPIPE_INTERNAL_HEADER so internal_curl and wait_http send it.
ensure_internal_token() {
    local dir=$1
    if [ ! -s "$dir/internal-token" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/internal-token")
    fi
    chmod 600 "$dir/internal-token"
    (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$dir/internal-token")" >"$dir/internal-auth.header")
    export LOGPIPE_INTERNAL_HEADER=$dir/internal-auth.header
}

# internal_curl ARGS...: curl with the internal token's header when this stack has one (the token
# goes through a file, never onto a command line other users can read).
internal_curl() {
    if [ -n "${LOGPIPE_INTERNAL_HEADER:-}" ] && [ -f "$LOGPIPE_INTERNAL_HEADER" ]; then
        curl -H @"$LOGPIPE_INTERNAL_HEADER" "$@"
    else
        curl "$@"
    fi
}

wait_http() {
    local url=$1 secs=${2:-60}
    for _ in $(seq 1 $((secs * 2))); do
        internal_curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}

# True when the pid file names a live process running the expected executable (guards pid reuse).
pid_alive() {
    local pidfile=$1 exe=$2 pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$exe"
}

# start_bg NAME DIR LOGFILE PIDFILE CMD...: start detached (own session) from DIR, record its pid.
start_bg() {
    local name=$1 dir=$2 logfile=$3 pidfile=$4
    shift 4
    (cd "$dir" && exec setsid "$@" >>"$logfile" 2>&1 </dev/null) &
    echo $! >"$pidfile"
    log "started $name (pid $(cat "$pidfile")), log: $logfile"
}

# stop_pid NAME PIDFILE DEADLINE_SECS: SIGTERM, wait for the drain deadline, then SIGKILL.
stop_pid() {
    local name=$1 pidfile=$2 deadline=${3:-20} pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        log "$name was not running (stale pid file removed)"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((deadline * 10))); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    log "$name (pid $pid) did not exit within ${deadline}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}
