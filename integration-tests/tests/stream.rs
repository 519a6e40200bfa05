//! The event stream (`GET /api/v1/events/stream`) against the real broker and Postgres: it sends
//! what is stored and matches its filter, resumes from `Last-Event-ID` without a gap, samples
//! above its rate and says how many it left out, and cuts off a client that stops reading,
//! telling it why.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use logpipe_common::{Level, LogEvent};
use logpipe_integration_tests as it;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);

fn events(prefix: &str, service: &str, n: usize, message_bytes: usize) -> Vec<LogEvent> {
    (0..n)
        .map(|i| LogEvent {
            event_id: format!("{prefix}-{i:06}"),
            timestamp: Utc::now(),
            level: Level::Info,
            service: service.into(),
            component: "api".into(),
            host: "h".into(),
            message: format!("{prefix} {i} {}", "x".repeat(message_bytes)),
            trace_id: None,
            span_id: None,
            attributes: Default::default(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_what_matches_and_resumes_from_its_last_id_without_a_gap() {
    let s = it::TestStack::collector_with("stream", 3, |config| {
        config.stream.poll_ms = 100;
    })
    .await;
    let (kafka, producer) = (&s.kafka, &s.producer);
    let url = s
        .collector
        .url("/api/v1/events/stream?service=api&rate=1000");

    let mut r = it::sse::open(&url, None).await;
    let hello = r.next().await.unwrap();
    assert_eq!(hello.event, "hello");
    let mut last_id = hello.id.clone().unwrap();
    it::produce_events(producer, &kafka.raw_topic, &events("a", "api", 200, 10)).await;
    it::produce_events(producer, &kafka.raw_topic, &events("w", "web", 100, 10)).await;
    let mut got = BTreeSet::new();
    while got.len() < 200 {
        let m = r.next().await.expect("a message before the timeout");
        if let Some(id) = &m.id {
            last_id = id.clone();
        }
        if m.event == "log" {
            let e: Value = serde_json::from_str(&m.data).unwrap();
            assert_eq!(e["service"], "api", "the filter holds");
            got.insert(e["event_id"].as_str().unwrap().to_owned());
        }
        assert_ne!(m.event, "dropped", "nothing over the rate");
    }
    drop(r);

    // Gone for a while; back with the last id it saw.
    it::produce_events(producer, &kafka.raw_topic, &events("b", "api", 150, 10)).await;
    let mut r = it::sse::open(&url, Some(&last_id)).await;
    assert_eq!(r.next().await.unwrap().event, "hello");
    while got.len() < 350 {
        let m = r.next().await.expect("a message before the timeout");
        if m.event == "log" {
            let e: Value = serde_json::from_str(&m.data).unwrap();
            got.insert(e["event_id"].as_str().unwrap().to_owned());
        }
    }
    let want: BTreeSet<String> = events("a", "api", 200, 0)
        .into_iter()
        .chain(events("b", "api", 150, 0))
        .map(|e| e.event_id)
        .collect();
    assert_eq!(got, want, "every api event, across the reconnect");

    // A position it never sent is refused with the header named.
    let (status, body) = it::call(
        reqwest::Client::new()
            .get(&url)
            .header("last-event-id", "not-a-position"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("Last-Event-ID"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_its_rate_sends_a_sample_and_says_how_many_it_left_out() {
    let s = it::TestStack::collector_with("streamrate", 2, |config| {
        config.stream.poll_ms = 500;
    })
    .await;
    let (kafka, producer) = (&s.kafka, &s.producer);
    let mut r = it::sse::open(&s.collector.url("/api/v1/events/stream?rate=10"), None).await;
    assert_eq!(r.next().await.unwrap().event, "hello");
    it::produce_events(producer, &kafka.raw_topic, &events("r", "api", 1000, 10)).await;
    let (mut sent, mut dropped) = (0i64, 0i64);
    while sent + dropped < 1000 {
        let m = r.next().await.expect("a message before the timeout");
        match m.event.as_str() {
            "log" => sent += 1,
            "dropped" => {
                let d: Value = serde_json::from_str(&m.data).unwrap();
                dropped += d["dropped"].as_i64().unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(
        sent + dropped,
        1000,
        "every event sent or counted as left out"
    );
    assert!(dropped > 0 && sent > 0, "sent {sent}, dropped {dropped}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_told_why() {
    let s = it::TestStack::collector_with("streamslow", 2, |config| {
        config.stream.poll_ms = 100;
        config.stream.slow_client_secs = 1;
        config.stream.buffer_batches = 1;
    })
    .await;
    let (kafka, producer) = (&s.kafka, &s.producer);
    // A client with a small receive window that sends its request and then reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(s.collector.addr).await.unwrap();
    conn.write_all(
        b"GET /api/v1/events/stream?rate=1000 HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // Rows keep coming, 2 KB each, so every poll has a batch for it, until the collector cuts the
    // client off: how much the two sockets' buffers take first depends on the kernel, and how
    // fast rows are stored on the broker (on nisshi the first 20 rounds were stored in a few
    // large batches, whose sampled second's worth fitted in the buffers).
    let cut_off = || async {
        s.collector
            .metrics()
            .await
            .lines()
            .any(|l| l.starts_with("collector_streams_cut_off_total") && !l.ends_with(" 0"))
    };
    for round in 0..150 {
        let batch = events(&format!("s{round}"), "api", 200, 2_000);
        it::produce_events(producer, &kafka.raw_topic, &batch).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if round >= 20 && round % 5 == 0 && cut_off().await {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Now it reads: what waited for it, then the reason it was cut off, then the end.
    let mut body = Vec::new();
    let read = tokio::time::timeout(WAIT, conn.read_to_end(&mut body)).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        read.is_ok(),
        "the stream never ended: {} bytes read, …{}",
        body.len(),
        &text[text.len().saturating_sub(300)..]
    );
    assert!(
        text.contains("event: cutoff") && text.contains("read nothing for 1 s"),
        "told why: …{}",
        &text[text.len().saturating_sub(400)..]
    );
    assert!(
        cut_off().await,
        "collector_streams_cut_off_total not raised"
    );
    s.stop().await;
}
