//! Syslog over the network: a TCP listener ([`tcp`], RFC 6587 framing from [`framing`]) and a UDP
//! listener ([`udp`]), off by default. Both feed the same intake as HTTP ingest: each message is
//! parsed as RFC 5424 or 3164 into a validated `LogEvent`, charged to its sender's ingest limit
//! (by peer address, the bucket an anonymous HTTP client of that address uses), produced, and
//! counted once Kafka acknowledged it.
//!
//! Syslog has no answer to refuse with, so what HTTP would refuse is kept instead: a message that
//! is not syslog, or whose timestamp is out of range, is stored as its text at the receive time
//! with the reason in `attributes["syslog.parse_error"]`; a message over `max_message_bytes`
//! keeps its head, marked `syslog.truncated`. TCP never drops: a spent limit or a broker that does
//! not acknowledge stops the reading of that connection (the sender's queue holds the rest). UDP
//! cannot push back, so what it cannot take is dropped and counted, by reason.

pub mod framing;
pub mod settings;
pub mod tcp;
pub mod udp;

pub use settings::SyslogSettings;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::Utc;
use logpipe_common::event::{EventError, Level, LogEvent};
use logpipe_common::formats::{parse_syslog, LineContext};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ingest::{ParseContext, ProduceError};
use crate::ratelimit::RouteClass;
use crate::state::AppState;
use crate::telemetry;
use framing::Frame;

/// Which listener a message came through (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// The bound listeners, started by [`Listeners::run`].
pub struct Listeners {
    tcp: Option<tokio::net::TcpListener>,
    udp: Option<tokio::net::UdpSocket>,
}

impl Listeners {
    /// Binds what the settings turn on (nothing by default).
    pub async fn bind(settings: &SyslogSettings) -> std::io::Result<Listeners> {
        let tcp = match &settings.tcp_addr {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await?),
            None => None,
        };
        let udp = match &settings.udp_addr {
            Some(a) => Some(udp::bind(a, settings.udp_recv_buffer_bytes)?),
            None => None,
        };
        Ok(Listeners { tcp, udp })
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The transports that are on, as metric labels.
    pub fn transports(&self) -> Vec<&'static str> {
        let mut t = Vec::new();
        if self.tcp.is_some() {
            t.push(Transport::Tcp.as_str());
        }
        if self.udp.is_some() {
            t.push(Transport::Udp.as_str());
        }
        t
    }

    /// Serves until `shutdown`, then delivers what was read (within a deadline) and returns.
    pub async fn run(self, state: AppState, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = self.tcp {
            let d = Delivery::new(state.clone(), Transport::Tcp, shutdown.clone());
            tracing::info!(addr = ?l.local_addr().ok(), "syslog TCP listening");
            tasks.spawn(tcp::serve(l, d));
        }
        if let Some(s) = self.udp {
            let d = Delivery::new(state, Transport::Udp, shutdown);
            tracing::info!(addr = ?s.local_addr().ok(), "syslog UDP listening");
            tasks.spawn(udp::serve(s, d));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// How long delivery keeps trying after shutdown began, before what it holds is counted lost.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Messages to Kafka, for one listener: events from frames, the sender's limit, the producer.
#[derive(Clone)]
pub struct Delivery {
    state: AppState,
    transport: Transport,
    shutdown: CancellationToken,
}

impl Delivery {
    pub fn new(state: AppState, transport: Transport, shutdown: CancellationToken) -> Delivery {
        Delivery {
            state,
            transport,
            shutdown,
        }
    }

    pub fn settings(&self) -> &SyslogSettings {
        &self.state.config.syslog
    }

    /// The frames of one sender as events (blank ones are none), counting what cannot be one.
    pub fn events(&self, peer: IpAddr, frames: &[Frame]) -> Vec<LogEvent> {
        let span = tracing::Span::current();
        let trace_id =
            logpipe_common::telemetry::traceparent_of(&span).map(|t| t[3..35].to_owned());
        let ingest = &self.state.config.ingest;
        let ctx = ParseContext {
            received_at: Utc::now(),
            max_events: usize::MAX,
            max_future_secs: ingest.max_future_secs,
            max_event_bytes: ingest.max_event_bytes,
            default_service: &self.settings().service,
            id_seed: None,
            tenant: None,
            trace_id,
        };
        let t = self.transport.as_str();
        let mut events = Vec::with_capacity(frames.len());
        for frame in frames {
            match frame_event(&ctx, peer, frame) {
                Ok(Some(e)) => {
                    if e.attributes.contains_key("syslog.parse_error") {
                        telemetry::syslog_unparsed(t);
                    }
                    if frame.truncated {
                        telemetry::syslog_truncated(t);
                    }
                    events.push(e);
                }
                Ok(None) => {}
                Err(e) => {
                    telemetry::syslog_messages(t, "refused", 1);
                    tracing::warn!(%peer, transport = t, error = %e, "syslog message refused");
                }
            }
        }
        events
    }

    /// Charges `n` events to the peer's ingest limit: all of them, or none (with the wait).
    pub async fn charge(&self, peer: IpAddr, n: usize) -> Result<(), Duration> {
        let limiter = &self.state.limiter;
        if !limiter.enabled() || n == 0 {
            return Ok(());
        }
        let limit = limiter.limit(RouteClass::Ingest).limit.max(1) as usize;
        // A batch over a whole window's limit is charged in parts (each part waits its turn).
        let identity = format!("ip:{peer}");
        let mut left = n;
        while left > 0 {
            let part = left.min(limit);
            let d = limiter
                .check(RouteClass::Ingest, &identity, part as u32)
                .await;
            if !d.allowed {
                telemetry::rate_limited(self.route());
                return Err(Duration::from_secs(d.reset_secs.max(1)));
            }
            left -= part;
        }
        Ok(())
    }

    /// The route-like name of this listener for the limiter's metric.
    fn route(&self) -> &'static str {
        match self.transport {
            Transport::Tcp => "syslog/tcp",
            Transport::Udp => "syslog/udp",
        }
    }

    /// Produces the events and waits for Kafka's acknowledgement, in the batch's trace.
    pub async fn produce(&self, events: &[LogEvent]) -> Result<(), ProduceError> {
        let s = &self.state;
        let publish = logpipe_common::telemetry::publish_span(
            &s.config.kafka.raw_topic,
            events.len() as u64,
            tracing::Span::current().id(),
        );
        let tp = logpipe_common::telemetry::traceparent_of(&publish);
        s.producer
            .produce_all(events, tp.as_deref())
            .instrument(publish)
            .await
    }

    /// Delivers one sender's batch, waiting out its limit and Kafka's outages: TCP's way (the
    /// connection is not read meanwhile).
    pub async fn deliver_waiting(&self, peer: IpAddr, events: &[LogEvent]) -> bool {
        let mut deadline = None;
        loop {
            match self.charge(peer, events.len()).await {
                Ok(()) => return self.produce_retrying(peer, events).await,
                Err(wait) => {
                    telemetry::syslog_backpressure(self.transport.as_str(), "rate_limited", wait);
                    if self.given_up(&mut deadline, peer, events.len()) {
                        return false;
                    }
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    /// Produces a charged batch, resending it until Kafka acknowledges (the events keep their
    /// ids, so a resend stores each once). After shutdown it keeps trying for a few seconds, then
    /// counts the batch as undelivered.
    pub async fn produce_retrying(&self, peer: IpAddr, events: &[LogEvent]) -> bool {
        if events.is_empty() {
            return true;
        }
        let t = self.transport.as_str();
        let mut backoff = Duration::from_millis(100);
        let mut deadline = None;
        loop {
            match self.produce(events).await {
                Ok(()) => {
                    telemetry::syslog_messages(t, "accepted", events.len());
                    return true;
                }
                Err(e @ ProduceError::TooLarge { .. }) => {
                    // A resend cannot help; `max_message_bytes` keeps this from happening unless
                    // the broker takes records smaller than one message.
                    telemetry::syslog_messages(t, "refused", events.len());
                    tracing::error!(%peer, error = %e, "syslog batch refused by Kafka for its size");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(%peer, transport = t, error = %e, "syslog batch not acknowledged; retrying");
                    telemetry::syslog_backpressure(t, "kafka", backoff);
                }
            }
            if self.given_up(&mut deadline, peer, events.len()) {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// After shutdown began, a batch gets [`DRAIN_DEADLINE`] more; then it is counted undelivered.
    fn given_up(
        &self,
        deadline: &mut Option<tokio::time::Instant>,
        peer: IpAddr,
        n: usize,
    ) -> bool {
        if !self.shutdown.is_cancelled() {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now < *deadline.get_or_insert(now + DRAIN_DEADLINE) {
            return false;
        }
        telemetry::syslog_messages(self.transport.as_str(), "undelivered", n);
        tracing::error!(
            %peer,
            transport = self.transport.as_str(),
            events = n,
            "syslog messages read but not delivered before shutdown"
        );
        true
    }

    /// The span one batch is received in (the trace its events carry to their rows).
    pub fn batch_span(&self, peer: SocketAddr, messages: usize) -> tracing::Span {
        tracing::info_span!(
            "syslog.receive",
            otel.name = %format!("syslog {}", self.transport.as_str()),
            otel.kind = "server",
            network.transport = self.transport.as_str(),
            client.address = %peer.ip(),
            client.port = peer.port(),
            messages,
        )
    }
}

/// One message as an event: parsed as syslog when it is, else its text with the reason; `None`
/// for a blank one; an error only when not even its text can be an event.
pub fn frame_event(
    ctx: &ParseContext<'_>,
    peer: IpAddr,
    frame: &Frame,
) -> Result<Option<LogEvent>, EventError> {
    // NUL is the one character an event may not hold: shown as U+FFFD like invalid UTF-8.
    let text = String::from_utf8_lossy(&frame.bytes).replace('\0', "\u{fffd}");
    let text = text.trim_end_matches(['\r', '\n', '\u{fffd}']);
    if text.trim().is_empty() {
        return Ok(None);
    }
    let line = LineContext {
        event_id: "pending".into(),
        default_service: ctx.default_service,
        received_at: ctx.received_at,
    };
    let marked = |mut e: LogEvent| {
        if e.host.is_empty() {
            e.host = peer.to_string();
        }
        e.attributes
            .insert("syslog.source_ip".into(), Value::from(peer.to_string()));
        if frame.truncated {
            e.attributes
                .insert("syslog.truncated".into(), Value::Bool(true));
        }
        e
    };
    let parsed = parse_syslog(text, &line).and_then(|e| ctx.finish(0, marked(e), false));
    let why = match parsed {
        Ok(e) => return Ok(Some(e)),
        Err(why) => why,
    };
    let mut raw = LogEvent {
        event_id: String::new(),
        timestamp: ctx.received_at,
        level: Level::Info,
        service: ctx.default_service.to_owned(),
        component: "syslog".into(),
        host: String::new(),
        message: text.to_owned(),
        trace_id: None,
        span_id: None,
        attributes: Default::default(),
    };
    // The reason quotes the message; a few hundred bytes of it say enough.
    let mut reason = why.to_string();
    if reason.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| reason.is_char_boundary(i))
            .unwrap_or(0);
        reason.truncate(cut);
        reason.push('…');
    }
    raw.attributes
        .insert("syslog.parse_error".into(), Value::from(reason));
    ctx.finish(0, marked(raw), false).map(Some)
}

#[cfg(test)]
mod tests;
