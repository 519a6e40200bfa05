//! The syslog listeners' settings (`[syslog]` in the gateway's TOML), apart from the listeners so
//! the configuration reads them without reaching the code that serves.

use std::net::SocketAddr;

use logpipe_common::event::{MAX_MESSAGE_BYTES, MAX_NAME_BYTES};
use serde::{Deserialize, Serialize};

/// The listeners and how they take messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogSettings {
    /// `host:port` of the TCP listener (`127.0.0.1:5514`); unset: no TCP listener.
    pub tcp_addr: Option<String>,
    /// `host:port` of the UDP listener; unset: no UDP listener.
    pub udp_addr: Option<String>,
    /// Service of a message that names no app (RFC 5424 `-`, RFC 3164 without a tag).
    pub service: String,
    /// Longest message kept whole; a longer one keeps this many bytes, marked truncated.
    pub max_message_bytes: usize,
    /// Most messages produced at once (one limiter charge, one wait for Kafka's acknowledgement).
    pub batch_max_events: usize,
    /// TCP connections open at once, and per peer address; more are closed at accept.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// Datagrams queued between the socket and the producer; more are dropped and counted.
    pub udp_queue_datagrams: usize,
    /// The UDP socket's receive buffer (`SO_RCVBUF`; the kernel may cap it at `rmem_max`).
    pub udp_recv_buffer_bytes: usize,
    /// Listen on an address other than loopback. Syslog carries no key: anyone who reaches the
    /// port may send, within their address's limit. Off, so no open door is made by accident.
    pub allow_remote: bool,
}

impl Default for SyslogSettings {
    fn default() -> Self {
        SyslogSettings {
            tcp_addr: None,
            udp_addr: None,
            service: "syslog".into(),
            max_message_bytes: 16 * 1024,
            batch_max_events: 1000,
            max_connections: 1024,
            max_connections_per_peer: 64,
            udp_queue_datagrams: 32 * 1024,
            udp_recv_buffer_bytes: 8 * 1024 * 1024,
            allow_remote: false,
        }
    }
}

impl SyslogSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.service.trim().is_empty() || self.service.len() > MAX_NAME_BYTES {
            return Err(format!(
                "syslog.service must be 1 to {MAX_NAME_BYTES} bytes"
            ));
        }
        if !(480..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            // RFC 3164 and 5424 both expect at least 480 bytes to be taken.
            return Err(format!(
                "syslog.max_message_bytes must be 480 to {MAX_MESSAGE_BYTES} (an event's message \
                 limit)"
            ));
        }
        for (field, n) in [
            ("syslog.batch_max_events", self.batch_max_events),
            ("syslog.max_connections", self.max_connections),
            (
                "syslog.max_connections_per_peer",
                self.max_connections_per_peer,
            ),
            ("syslog.udp_queue_datagrams", self.udp_queue_datagrams),
        ] {
            if n == 0 {
                return Err(format!("{field} must be at least 1"));
            }
        }
        for addr in [&self.tcp_addr, &self.udp_addr].into_iter().flatten() {
            let parsed: SocketAddr = addr
                .parse()
                .map_err(|_| format!("syslog address {addr:?} is not ip:port"))?;
            if !parsed.ip().is_loopback() && !self.allow_remote {
                return Err(format!(
                    "syslog would listen on {addr}, not a loopback address, and syslog carries \
                     no key: anyone reaching it could send. Set syslog.allow_remote = true \
                     (LOGPIPE_SYSLOG_ALLOW_REMOTE=true) where a firewall decides who reaches it"
                ));
            }
        }
        Ok(())
    }
}
