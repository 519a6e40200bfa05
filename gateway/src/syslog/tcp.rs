//! The syslog TCP listener: one task per connection reads, frames ([`super::framing`]) and
//! delivers in batches, and reads no more until its batch is in Kafka. So a spent limit or a
//! broker outage fills the connection's window and the sender waits: backpressure, not loss.
//! Connections are capped in total and per peer address, so one sender cannot take every slot.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use logpipe_common::permits::{Refused, StreamPermits};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::framing::{Frame, Framer};
use super::Delivery;
use crate::telemetry;

/// Accepts until shutdown, then waits for every connection to deliver what it read.
pub async fn serve(listener: TcpListener, delivery: Delivery) {
    let settings = delivery.settings();
    let permits = Arc::new(StreamPermits::new(
        settings.max_connections,
        settings.max_connections_per_peer,
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = delivery.shutdown.cancelled() => break,
        };
        // Reap finished connections so the set does not grow with every one ever made.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait a moment instead of spinning.
                tracing::warn!(error = %e, "syslog TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match permits.try_acquire(&peer.ip().to_string()) {
            Ok(p) => p,
            Err(refused) => {
                let reason = match refused {
                    Refused::Total(_) => "total",
                    Refused::PerClient(_) => "per_peer",
                };
                telemetry::syslog_connection_refused(reason);
                tracing::warn!(%peer, reason, "syslog TCP connection refused: too many open");
                continue;
            }
        };
        let d = delivery.clone();
        connections.spawn(async move {
            telemetry::syslog_connections(1.0);
            if let Err(e) = connection(stream, peer, &d).await {
                tracing::debug!(%peer, error = %e, "syslog TCP connection ended");
            }
            telemetry::syslog_connections(-1.0);
            drop(permit);
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Reads one connection to its end (or shutdown), delivering each batch before reading on.
async fn connection(mut stream: TcpStream, peer: SocketAddr, d: &Delivery) -> std::io::Result<()> {
    let settings = d.settings();
    let (max, batch_max) = (settings.max_message_bytes, settings.batch_max_events);
    let mut framer = Framer::new(max);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut batch: Vec<Frame> = Vec::new();
    loop {
        let read = tokio::select! {
            r = stream.read_buf(&mut buf) => r,
            // Shutdown: what was read is delivered, nothing more is read.
            _ = d.shutdown.cancelled() => Ok(0),
        };
        let ended = match read {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                deliver_all(d, peer, &mut framer, &mut buf, &mut batch, batch_max).await;
                return Err(e);
            }
        };
        deliver_all(d, peer, &mut framer, &mut buf, &mut batch, batch_max).await;
        if ended {
            match framer.finish(&mut buf) {
                Ok(last) => {
                    batch.extend(last);
                    deliver(d, peer, &mut batch).await;
                }
                Err(cut) => {
                    telemetry::syslog_messages("tcp", "refused", 1);
                    tracing::warn!(%peer, error = %cut, "syslog TCP message cut short");
                }
            }
            return Ok(());
        }
        // Room for the next read; the framer keeps at most one message here.
        buf.reserve(64 * 1024);
    }
}

/// Delivers every whole frame in `buf`, `batch_max` at a time.
async fn deliver_all(
    d: &Delivery,
    peer: SocketAddr,
    framer: &mut Framer,
    buf: &mut BytesMut,
    batch: &mut Vec<Frame>,
    batch_max: usize,
) {
    loop {
        while batch.len() < batch_max {
            match framer.next(buf) {
                Some(f) => batch.push(f),
                None => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        let full = batch.len() >= batch_max;
        deliver(d, peer, batch).await;
        if !full {
            return;
        }
    }
}

async fn deliver(d: &Delivery, peer: SocketAddr, batch: &mut Vec<Frame>) {
    if batch.is_empty() {
        return;
    }
    let span = d.batch_span(peer, batch.len());
    async {
        let events = d.events(peer.ip(), batch);
        d.deliver_waiting(peer.ip(), &events).await;
    }
    .instrument(span)
    .await;
    batch.clear();
}
