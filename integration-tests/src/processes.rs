//! The processes a test starts, kills and starts again on a port of its own: a private broker (the
//! one `scripts/lib.sh` builds, `LOGPIPE_BROKER_BIN`) and a private Redis.

use std::time::Duration;

/// A port nothing listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Start a server process (a private broker or Redis a test may kill and restart) and wait until it
/// listens on `port`; a process that never listens is reaped and the test fails.
pub fn spawn_listening(cmd: &mut std::process::Command, port: u16) -> std::process::Child {
    let mut child = cmd.spawn().expect("start server process");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{cmd:?} did not listen on port {port}");
}

/// The broker binary `./test.sh` builds into the per-user cache: `LOGPIPE_BROKER_BIN`, which
/// `scripts/lib.sh` exports, else the cache folder it builds nisshi into.
pub fn broker_bin() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Ok(p) = std::env::var("LOGPIPE_BROKER_BIN") {
        return p.into();
    }
    let cache = std::env::var("LOGPIPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/logpipe")
        });
    let bin = cache.join("nisshi-0.8.1/bin/nisshi");
    assert!(
        bin.exists(),
        "the broker was not found at {}; ./test.sh builds it",
        bin.display()
    );
    bin
}

/// Where a private broker keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerLog {
    /// In memory: a restart starts from an empty log.
    Memory,
    /// A SQLite file in the broker's folder, named for the broker: survives a restart.
    Durable,
}

/// A private broker on `port`, run from `dir` (its log goes to `dir/broker.log`), keeping its log
/// as `log` says.
pub fn start_broker(port: u16, dir: &std::path::Path, log: BrokerLog) -> std::process::Child {
    use std::process::{Command, Stdio};
    let bin = broker_bin();
    let name = bin
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("broker")
        .to_owned();
    let storage = match log {
        BrokerLog::Memory => format!("memory://{name}/"),
        BrokerLog::Durable => format!("sqlite://{name}.db"),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .expect("broker log");
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(bin);
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", &storage])
    // Its own level, never the test's RUST_LOG: nisshi writes every span at info (scripts/lib.sh).
    .env(
        "RUST_LOG",
        std::env::var("LOGPIPE_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
    )
    // A new group's first rebalance does not wait 3 s, as scripts/lib.sh starts it.
    .env("GROUP_INITIAL_REBALANCE_DELAY", "0s")
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(log.try_clone().expect("broker log"))
    .stderr(log);
    spawn_listening(&mut cmd, port)
}

/// A private Redis on `port`, so a test can stop and restart it without touching the shared one.
pub fn start_redis(port: u16) -> std::process::Child {
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    spawn_listening(&mut cmd, port)
}
