//! The syslog UDP listener: one datagram is one message (RFC 5426). A receiving task only copies
//! datagrams into a bounded queue, so the socket is drained as fast as the kernel fills it; a
//! delivering task takes them in batches, by sender. One sender may hold at most a quarter of the
//! queue, so a flood from one address leaves room for the others. UDP cannot push back, so every
//! message not delivered is counted by why: `peer_share` (its sender holds its quarter),
//! `queue_full` (the producer fell behind everyone), `rate_limited` (the sender's limit), and the
//! kernel's own drops on this socket (`syslog_udp_kernel_drops`, read from `/proc/net/udp`), so
//! sent = stored + counted, always.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::framing::Frame;
use super::Delivery;
use crate::telemetry;

/// Binds with a receive buffer of `recv_buffer_bytes` (the kernel caps it at `net.core.rmem_max`).
pub fn bind(addr: &str, recv_buffer_bytes: usize) -> std::io::Result<UdpSocket> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not ip:port"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer_bytes) {
        tracing::warn!(error = %e, "could not size the syslog UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Receives and delivers until shutdown, then delivers what is queued and returns.
pub async fn serve(socket: UdpSocket, d: Delivery) {
    let settings = d.settings().clone();
    let (tx, rx) = mpsc::channel(settings.udp_queue_datagrams);
    let kernel = KernelDrops::of(&socket);
    let shares = Arc::new(Shares::new(settings.udp_queue_datagrams));
    let receiver = tokio::spawn(receive(
        Arc::new(socket),
        tx,
        settings.max_message_bytes,
        shares.clone(),
        d.clone(),
    ));
    work(rx, &d, settings.batch_max_events, &shares, kernel).await;
    let _ = receiver.await;
}

/// Datagrams queued per sender, so one sender cannot fill the queue.
struct Shares {
    per_peer: usize,
    queued: Mutex<HashMap<IpAddr, usize>>,
}

impl Shares {
    fn new(queue: usize) -> Shares {
        Shares {
            per_peer: (queue / 4).max(1),
            queued: Mutex::default(),
        }
    }

    /// Takes a slot for `peer`; false when it holds its share already.
    fn take(&self, peer: IpAddr) -> bool {
        let mut q = self.queued.lock().expect("shares lock");
        let n = q.entry(peer).or_insert(0);
        if *n >= self.per_peer {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, peers: impl Iterator<Item = IpAddr>) {
        let mut q = self.queued.lock().expect("shares lock");
        for peer in peers {
            if let Some(n) = q.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    // Only senders with something queued are kept: the map cannot grow with
                    // every address ever seen.
                    q.remove(&peer);
                }
            }
        }
    }
}

async fn receive(
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<(SocketAddr, Frame)>,
    max: usize,
    shares: Arc<Shares>,
    d: Delivery,
) {
    // One byte over the limit: a datagram that fills it was longer (Linux cuts it silently).
    let mut buf = vec![0u8; max + 1];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = d.shutdown.cancelled() => return,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                // An ICMP error from an earlier send and the like: the socket is still good.
                tracing::debug!(error = %e, "syslog UDP receive error");
                continue;
            }
        };
        let frame = Frame {
            bytes: Bytes::copy_from_slice(&buf[..n.min(max)]),
            truncated: n > max,
        };
        if !shares.take(peer.ip()) {
            telemetry::syslog_udp_dropped("peer_share", 1);
            continue;
        }
        match tx.try_send((peer, frame)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                shares.give_back(std::iter::once(peer.ip()));
                telemetry::syslog_udp_dropped("queue_full", 1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Takes the queue in batches until the receiver is gone and the queue is empty.
async fn work(
    mut rx: mpsc::Receiver<(SocketAddr, Frame)>,
    d: &Delivery,
    batch_max: usize,
    shares: &Shares,
    kernel: Option<KernelDrops>,
) {
    let mut batch = Vec::with_capacity(batch_max);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, batch_max) => {
                if n == 0 {
                    break;
                }
                shares.give_back(batch.iter().map(|(peer, _)| peer.ip()));
            }
            _ = tick.tick() => {
                if let Some(k) = &kernel { k.publish() }
                continue;
            }
        }
        deliver(d, &mut batch).await;
    }
    if let Some(k) = &kernel {
        k.publish();
    }
}

/// One batch, by sender: each sender's part charged to its own limit (over it: dropped, counted).
async fn deliver(d: &Delivery, batch: &mut Vec<(SocketAddr, Frame)>) {
    let mut by_peer: BTreeMap<IpAddr, (SocketAddr, Vec<Frame>)> = BTreeMap::new();
    for (peer, frame) in batch.drain(..) {
        by_peer
            .entry(peer.ip())
            .or_insert_with(|| (peer, Vec::new()))
            .1
            .push(frame);
    }
    for (ip, (peer, frames)) in by_peer {
        let span = d.batch_span(peer, frames.len());
        async {
            let events = d.events(ip, &frames);
            if d.charge(ip, events.len()).await.is_err() {
                telemetry::syslog_udp_dropped("rate_limited", events.len());
                return;
            }
            d.produce_retrying(ip, &events).await;
        }
        .instrument(span)
        .await;
    }
}

/// The kernel's count of datagrams it dropped on this socket (its receive buffer was full), from
/// the `drops` column of `/proc/net/udp` (or `udp6`), found by the socket's inode.
struct KernelDrops {
    inode: u64,
    v6: bool,
}

impl KernelDrops {
    fn of(socket: &UdpSocket) -> Option<KernelDrops> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let fd = socket.as_raw_fd();
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?.ino();
        let v6 = socket.local_addr().ok()?.is_ipv6();
        Some(KernelDrops { inode, v6 })
    }

    fn read(&self) -> Option<u64> {
        let table = std::fs::read_to_string(if self.v6 {
            "/proc/net/udp6"
        } else {
            "/proc/net/udp"
        })
        .ok()?;
        kernel_drops_in(&table, self.inode)
    }

    fn publish(&self) {
        if let Some(n) = self.read() {
            telemetry::syslog_udp_kernel_drops(n);
        }
    }
}

/// The `drops` column of the row whose inode is `inode` in a `/proc/net/udp` table.
fn kernel_drops_in(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let cols: Vec<&str> = row.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        (cols.get(9)?.parse::<u64>().ok()? == inode)
            .then(|| cols.get(12)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_drop_count_is_read_from_the_sockets_row() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  637: 0100007F:D431 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 48812 2 000000003b3dfe2a 0
  700: 0100007F:15AA 00000000:0000 07 00000000:00034000 00:00000000 00000000     0        0 51234 2 00000000c6a1b2d3 1377
";
        assert_eq!(kernel_drops_in(table, 51234), Some(1377));
        assert_eq!(kernel_drops_in(table, 48812), Some(0));
        assert_eq!(kernel_drops_in(table, 1), None);
    }

    #[tokio::test]
    async fn a_bound_socket_finds_its_own_row() {
        let socket = bind("127.0.0.1:0", 1 << 20).unwrap();
        let k = KernelDrops::of(&socket).expect("a socket has an inode");
        assert_eq!(k.read(), Some(0));
    }
}
