//! Syslog over the network into a real gateway, broker and collector: both TCP framings on one
//! connection, messages that are not syslog, over-long ones and ones cut short, a sender over its
//! limit (held back over TCP, never dropped), a UDP flood (every datagram stored or counted), and
//! one sender's flood or connections leaving another's untouched. Real shippers (rsyslog's
//! `omfwd`) are in tests/shippers.rs.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use logpipe_gateway::config::GatewayConfig;
use logpipe_integration_tests as it;
use logpipe_integration_tests::stack::TestStack;
use serde_json::Value;

/// A collector with a gateway whose syslog listeners are on (free ports on loopback).
async fn syslog_stack(
    test: &str,
    tune: impl FnOnce(&mut GatewayConfig),
) -> (TestStack, SocketAddr) {
    let port = it::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let stack = TestStack::collector(test, 2)
        .await
        .with_gateway(|c| {
            c.syslog.tcp_addr = Some(addr.to_string());
            c.syslog.udp_addr = Some(addr.to_string());
            tune(c);
        })
        .await;
    (stack, addr)
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(stack: &TestStack) -> String {
    stack.gateway.as_ref().expect("a gateway").metrics().await
}

/// Stored rows of `service`: message → (level, host, attributes).
async fn stored(stack: &TestStack, service: &str) -> Vec<(String, String, String, Value)> {
    sqlx::query_as(
        "SELECT message, level, host, attributes FROM log_events WHERE service = $1 ORDER BY message",
    )
    .bind(service)
    .fetch_all(&stack.pool)
    .await
    .expect("query rows")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tcp_stores_every_message_once_in_either_framing() {
    let (stack, addr) = syslog_stack("syslog-tcp", |_| {}).await;
    let mut conn = TcpStream::connect(addr).expect("connect");
    let mut sent = 0;
    for seq in 0..1_000 {
        let msg = format!(
            "<{}>1 {} web-3 tcpapp 7 - - seq {seq} \"q\" ünï ✓ {{}}",
            8 + seq % 8,
            now()
        );
        if seq % 2 == 0 {
            write!(conn, "{} {msg}", msg.len()).expect("write");
        } else {
            write!(conn, "{msg}\r\n").expect("write");
        }
        sent += 1;
    }
    // Not syslog, and binary: each kept as its text. An over-long message keeps its head.
    conn.write_all(b"a plain line from a script\n")
        .expect("write");
    conn.write_all(b"<13>1 - web-3 tcpapp - - - bytes \xff\x00\xfe end\n")
        .expect("write");
    let long = format!("<13>1 - web-3 tcpapp - - - long {}", "x".repeat(40_000));
    write!(conn, "{} {long}", long.len()).expect("write");
    // Cut short: announces more than it sends, then the connection closes.
    conn.write_all(b"500 <13>1 - web-3 tcpapp - - - cut")
        .expect("write");
    drop(conn);
    stack.wait_rows(sent + 3).await;

    let rows = stored(&stack, "tcpapp").await;
    assert_eq!(rows.len(), 1_002, "1,000 + the binary one + the long one");
    for (message, level, host, attrs) in &rows {
        assert_eq!(host, "web-3");
        assert_eq!(attrs["syslog.source_ip"], "127.0.0.1", "{attrs}");
        if let Some(seq) = message.strip_prefix("seq ") {
            let seq: usize = seq.split(' ').next().unwrap().parse().unwrap();
            let want = [
                "FATAL", "FATAL", "FATAL", "ERROR", "WARN", "INFO", "INFO", "DEBUG",
            ][seq % 8];
            assert_eq!(level, want, "{message}");
            assert!(message.ends_with("\"q\" ünï ✓ {}"), "{message:?}");
        }
    }
    let long_row = rows
        .iter()
        .find(|r| r.0.starts_with("long "))
        .expect("the long one");
    assert_eq!(long_row.3["syslog.truncated"], true);
    assert!(long_row.0.len() < 16 * 1024);
    assert!(rows
        .iter()
        .any(|r| r.0.contains("bytes \u{fffd}") && r.0.ends_with("end")));
    let plain = stored(&stack, "syslog").await;
    assert_eq!(
        plain.len(),
        1,
        "the plain line, under the listener's service"
    );
    assert_eq!(plain[0].0, "a plain line from a script");
    assert!(plain[0].3["syslog.parse_error"].is_string());

    let m = scrape(&stack).await;
    let tcp = |outcome| {
        metric(
            &m,
            "syslog_messages_total",
            &[("transport", "tcp"), ("outcome", outcome)],
        )
    };
    // Tests share the process's metrics: other tests add to `accepted`; only this one refuses,
    // truncates or keeps unparsed text.
    assert!(tcp("accepted") >= 1_003.0, "{m}");
    assert_eq!(tcp("refused"), 1.0, "the one cut short");
    assert_eq!(
        metric(&m, "syslog_unparsed_total", &[("transport", "tcp")]),
        1.0
    );
    assert_eq!(
        metric(&m, "syslog_truncated_total", &[("transport", "tcp")]),
        1.0
    );
    stack.stop().await;
}

/// Over its limit a TCP sender is read more slowly, and everything it sent is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_sender_over_its_limit_is_held_back_and_loses_nothing() {
    let (stack, addr) = syslog_stack("syslog-backpressure", |c| {
        c.rate_limit.ingest.limit = 300;
        c.rate_limit.ingest.window_ms = 1_000;
        c.syslog.batch_max_events = 100;
    })
    .await;
    let count = 1_500;
    let writer = std::thread::spawn(move || {
        let mut conn = TcpStream::connect(addr).expect("connect");
        for seq in 0..count {
            writeln!(conn, "<14>1 {} h slowapp - - - held {seq}", now()).expect("write");
        }
    });
    stack.wait_rows(count).await;
    writer.join().expect("the writer");
    let m = scrape(&stack).await;
    assert!(
        metric(
            &m,
            "syslog_backpressure_ms_total",
            &[("reason", "rate_limited")]
        ) >= 1_000.0,
        "1,500 events at 300/s wait for seconds: {m}"
    );
    assert!(metric(&m, "syslog_messages_total", &[("outcome", "accepted")]) >= count as f64);
    stack.stop().await;
}

/// A flood of datagrams: every one is stored or counted (queue, limit, kernel), none vanishes;
/// and a second sender over the same listener keeps all of its own, unless the kernel itself
/// dropped datagrams (its buffer is shared; it counts, not by sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flood_is_stored_or_counted_and_leaves_another_sender_whole() {
    let (stack, addr) = syslog_stack("syslog-udp", |c| {
        c.rate_limit.ingest.limit = 5_000;
        c.rate_limit.ingest.window_ms = 60_000;
        c.syslog.udp_queue_datagrams = 2_000;
    })
    .await;
    let flooder = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut flood = 0;
    for seq in 0..30_000 {
        let msg = format!("<12>1 {} flooder udpflood - - - flood {seq}", now());
        // A full receive buffer on loopback is the receiver's drop, counted by its kernel.
        if flooder.send_to(msg.as_bytes(), addr).is_ok() {
            flood += 1;
        }
    }
    // Another address on loopback, sending a little while and after the flood.
    let calm = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    for seq in 0..200 {
        let msg = format!("<14>1 {} calm udpcalm - - - calm {seq}", now());
        calm.send_to(msg.as_bytes(), addr).expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
    let expected_calm = 200;
    let accounted = it::wait_for(
        "every flood datagram stored or counted",
        it::WAIT,
        || async {
            let m = scrape(&stack).await;
            let stored: i64 =
                sqlx::query_scalar("SELECT count(*) FROM log_events WHERE service = 'udpflood'")
                    .fetch_one(&stack.pool)
                    .await
                    .expect("count");
            let calm: i64 =
                sqlx::query_scalar("SELECT count(*) FROM log_events WHERE service = 'udpcalm'")
                    .fetch_one(&stack.pool)
                    .await
                    .expect("count");
            let dropped = metric(&m, "syslog_udp_dropped_total", &[]);
            let kernel = metric(&m, "syslog_udp_kernel_drops", &[]);
            let total = (stored + calm) as f64 + dropped + kernel;
            // The per-sender share protects the listener's queue. The socket's buffer in the
            // kernel is one for all senders: when a busy machine let it fill, the kernel may
            // have dropped the calm sender's datagrams too, and says so (but not whose).
            let calm_whole = calm == expected_calm || (kernel > 0.0 && calm < expected_calm);
            if calm_whole && total == (flood + expected_calm) as f64 {
                Ok((stored, dropped, kernel))
            } else {
                let reasons: Vec<String> = m
                    .lines()
                    .filter(|l| l.starts_with("syslog_udp_dropped_total"))
                    .map(str::to_owned)
                    .collect();
                Err(format!(
                    "flood stored {stored} + dropped {dropped} {reasons:?} + kernel {kernel} of \
                 {flood}; calm {calm}"
                ))
            }
        },
    )
    .await;
    println!(
        "flood: stored {}, dropped {}, kernel {}",
        accounted.0, accounted.1, accounted.2
    );
    assert!(
        accounted.0 <= 5_000,
        "the flooder's limit held: {accounted:?}"
    );
    stack.stop().await;
}

/// One address holding its share of connections does not keep another from connecting; a
/// connection over its address's share is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peers_connections_do_not_lock_out_another() {
    let (stack, addr) = syslog_stack("syslog-conns", |c| {
        c.syslog.max_connections = 8;
        c.syslog.max_connections_per_peer = 4;
    })
    .await;
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The fifth from the same address: accepted by the kernel, closed by the gateway.
    let mut fifth = TcpStream::connect(addr).expect("connect");
    fifth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut fifth, &mut byte).unwrap_or(0),
        0,
        "closed"
    );
    // From 127.0.0.2, a connection is served.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().expect("addr").into())
        .expect("bind 127.0.0.2");
    socket.connect(&addr.into()).expect("connect");
    let mut other: TcpStream = socket.into();
    writeln!(other, "<14>1 {} other connapp - - - still served", now()).expect("write");
    drop(other);
    stack.wait_rows(1).await;
    let m = scrape(&stack).await;
    assert_eq!(
        metric(
            &m,
            "syslog_tcp_connections_refused_total",
            &[("reason", "per_peer")]
        ),
        1.0,
        "{m}"
    );
    drop(held);
    stack.stop().await;
}
