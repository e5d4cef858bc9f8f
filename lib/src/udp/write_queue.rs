//! Sending with bounded write queues: the connected upstream socket of a
//! flow with its queue of backend-bound datagrams, the listener's overflow
//! queue of client-bound ones, the write interest each needs only while
//! its queue is not empty, and the sends that fall back to the queues.
//!
//! Copies a datagram only when it has to wait (back-pressure); a send that
//! goes through never allocates. It never decides anything about flows.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use mio::{Interest, Registry, Token};

use super::listener::{IoContext, MAX_LISTENER_QUEUE, MAX_UPSTREAM_QUEUE};
use super::metrics::{ListenerMetrics, ShellDrop};
use super::mmsg::{send_connected, send_to_from, SendBatch};

/// The connected upstream socket of one flow and its write queue.
#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) socket: mio::net::UdpSocket,
    pub(super) token: Token,
    pub(super) queue: VecDeque<Vec<u8>>,
    /// Registered for writability too: only while `queue` is not empty
    /// (a UDP socket is writable after every send, so an always-on write
    /// interest would wake the loop once per datagram for nothing).
    pub(super) write_interest: bool,
}

impl Upstream {
    /// A socket just registered readable under `token`, nothing queued.
    pub(super) fn new(socket: mio::net::UdpSocket, token: Token) -> Self {
        Upstream {
            socket,
            token,
            queue: VecDeque::new(),
            write_interest: false,
        }
    }
}

/// A client-bound datagram waiting for the listener socket.
#[derive(Debug)]
pub(super) struct QueuedReturn {
    pub(super) dst: SocketAddr,
    pub(super) local: Option<IpAddr>,
    pub(super) payload: Vec<u8>,
}

/// What became of a datagram for a backend.
pub(super) enum UpstreamSend {
    Sent,
    Dropped(ShellDrop),
    Refused,
}

/// Sends `[header, payload]` on the flow's upstream socket, or queues it
/// (bounded) if the socket would block or older datagrams still wait.
pub(super) fn send_upstream(
    up: Option<&mut Upstream>,
    header: Option<&[u8]>,
    payload: &[u8],
    registry: &Registry,
) -> UpstreamSend {
    let Some(up) = up else {
        return UpstreamSend::Dropped(ShellDrop::NoUpstream);
    };
    let queue = |up: &mut Upstream| {
        if up.queue.len() >= MAX_UPSTREAM_QUEUE {
            return UpstreamSend::Dropped(ShellDrop::QueueFull);
        }
        let mut datagram = Vec::with_capacity(header.map_or(0, <[u8]>::len) + payload.len());
        if let Some(h) = header {
            datagram.extend_from_slice(h);
        }
        datagram.extend_from_slice(payload);
        up.queue.push_back(datagram);
        set_write_interest(up, true, registry);
        UpstreamSend::Sent
    };
    if !up.queue.is_empty() {
        return queue(up);
    }
    let fd = up.socket.as_raw_fd();
    let result = match header {
        Some(h) => send_connected(fd, &[IoSlice::new(h), IoSlice::new(payload)]),
        None => send_connected(fd, &[IoSlice::new(payload)]),
    };
    match result {
        Ok(_) => UpstreamSend::Sent,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => queue(up),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => UpstreamSend::Refused,
        Err(error) => {
            tracing::debug!(%error, "upstream send error");
            UpstreamSend::Dropped(ShellDrop::SendError)
        }
    }
}

/// Adds or removes the write interest of an upstream socket (only when it
/// changes: when a queue forms or empties).
pub(super) fn set_write_interest(up: &mut Upstream, wanted: bool, registry: &Registry) {
    if up.write_interest == wanted {
        return;
    }
    let interest = if wanted {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    match registry.reregister(&mut up.socket, up.token, interest) {
        Ok(()) => up.write_interest = wanted,
        Err(error) => tracing::debug!(%error, "upstream interest change"),
    }
}

/// A listener's registration: readable while read, writable while
/// client-bound datagrams wait (a send-only listener is registered
/// writable, as mio needs some interest).
pub(super) fn listener_interest(reading: bool, waiting: bool) -> Interest {
    match (reading, waiting) {
        (true, false) => Interest::READABLE,
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, _) => Interest::WRITABLE,
    }
}

/// Sends the overflow queue, then the batch with `sendmmsg`; what the
/// socket does not take joins the (bounded) overflow queue.
pub(super) fn flush_batch(
    batch: &mut SendBatch,
    overflow: &mut VecDeque<QueuedReturn>,
    socket: Option<&mio::net::UdpSocket>,
    metrics: &ListenerMetrics,
    ctx: &mut IoContext<'_>,
) {
    let Some(socket) = socket else {
        batch.clear();
        overflow.clear();
        return;
    };
    let fd = socket.as_raw_fd();
    while let Some(queued) = overflow.front() {
        match send_to_from(
            fd,
            &[IoSlice::new(&queued.payload)],
            queued.dst,
            queued.local,
        ) {
            Ok(_) => {
                overflow.pop_front();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => {
                tracing::debug!(dst = %queued.dst, %error, "listener send error");
                overflow.pop_front();
                metrics.shell_dropped(ctx.metrics, ShellDrop::SendError);
            }
        }
    }
    if batch.is_empty() {
        return;
    }
    let mut sent = 0;
    if overflow.is_empty() {
        while sent < batch.len() {
            match batch.send_from(fd, sent) {
                Ok(0) => break, // would block
                Ok(n) => sent += n,
                Err(error) => {
                    // The first datagram of the rest failed: drop it, go on.
                    tracing::debug!(%error, "listener sendmmsg error");
                    metrics.shell_dropped(ctx.metrics, ShellDrop::SendError);
                    sent += 1;
                }
            }
        }
    }
    queue_unsent(batch, sent, overflow, metrics, ctx.metrics);
    batch.clear();
}

/// Queues the batch's datagrams from `first` on (the socket did not take
/// them) behind the listener's overflow queue, up to
/// [`MAX_LISTENER_QUEUE`]; the newer ones are dropped, counted `queue_full`.
fn queue_unsent(
    batch: &SendBatch,
    first: usize,
    overflow: &mut VecDeque<QueuedReturn>,
    metrics: &ListenerMetrics,
    registry: &mut crate::metrics::MetricsRegistry,
) {
    for i in first..batch.len() {
        let Some((payload, dst, local)) = batch.committed(i) else {
            continue;
        };
        if overflow.len() >= MAX_LISTENER_QUEUE {
            metrics.shell_dropped(registry, ShellDrop::QueueFull);
            continue;
        }
        overflow.push_back(QueuedReturn {
            dst,
            local,
            payload: payload.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills the listener's overflow queue to [`MAX_LISTENER_QUEUE`], as
    /// when `sendmmsg` stops taking datagrams (a socket that would block
    /// cannot be made on loopback, so this starts where `flush_batch` does
    /// after the socket refused a whole batch): order kept, the newer ones
    /// dropped and counted `queue_full`, each exactly once.
    #[test]
    fn the_listener_overflow_queue_stops_at_its_bound_and_counts_the_rest() {
        let mut registry = crate::metrics::MetricsRegistry::new();
        let metrics = ListenerMetrics::register(&mut registry, "127.0.0.1:5353".parse().unwrap());
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut overflow = VecDeque::new();
        let mut batch = SendBatch::new(64);
        let total = MAX_LISTENER_QUEUE + 100;
        let mut next = 0;
        while next < total {
            while next < total && !batch.is_full() {
                let payload = format!("r{next}");
                let slot = batch.slot().unwrap();
                slot[..payload.len()].copy_from_slice(payload.as_bytes());
                batch.commit(payload.len(), client, None);
                next += 1;
            }
            queue_unsent(&batch, 0, &mut overflow, &metrics, &mut registry);
            batch.clear();
        }
        assert_eq!(overflow.len(), MAX_LISTENER_QUEUE);
        assert_eq!(
            overflow.front().map(|q| q.payload.as_slice()),
            Some(&b"r0"[..])
        );
        let last = format!("r{}", MAX_LISTENER_QUEUE - 1);
        assert_eq!(
            overflow.back().map(|q| q.payload.as_slice()),
            Some(last.as_bytes())
        );
        assert_eq!(
            metrics.shell_drop_count(&registry, ShellDrop::QueueFull),
            100
        );
    }

    /// Fills a flow's write queue to [`MAX_UPSTREAM_QUEUE`]: once a
    /// datagram waits, later ones queue behind it (order kept) up to the
    /// bound; the next is dropped (`queue_full`), the queued ones kept.
    #[test]
    fn the_upstream_write_queue_stops_at_its_bound_and_drops_the_newest() {
        let poll = mio::Poll::new().unwrap();
        let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.connect(target.local_addr().unwrap()).unwrap();
        let mut up = Upstream {
            socket,
            token: Token(7),
            queue: VecDeque::new(),
            write_interest: false,
        };
        poll.registry()
            .register(&mut up.socket, up.token, Interest::READABLE)
            .unwrap();
        // As if a send had met EWOULDBLOCK: one datagram waits.
        up.queue.push_back(b"waiting".to_vec());
        for i in 1..MAX_UPSTREAM_QUEUE {
            let payload = format!("d{i}");
            let sent = send_upstream(Some(&mut up), None, payload.as_bytes(), poll.registry());
            assert!(matches!(sent, UpstreamSend::Sent), "datagram {i}");
        }
        assert_eq!(up.queue.len(), MAX_UPSTREAM_QUEUE);
        assert!(up.write_interest, "a waiting queue wants writability");
        let over = send_upstream(
            Some(&mut up),
            Some(b"hdr"),
            b"one too many",
            poll.registry(),
        );
        assert!(matches!(over, UpstreamSend::Dropped(ShellDrop::QueueFull)));
        assert_eq!(up.queue.len(), MAX_UPSTREAM_QUEUE);
        assert_eq!(up.queue.front().map(Vec::as_slice), Some(&b"waiting"[..]));
        let last = format!("d{}", MAX_UPSTREAM_QUEUE - 1);
        assert_eq!(up.queue.back().map(Vec::as_slice), Some(last.as_bytes()));
        // Nothing was sent while a datagram waited (order kept).
        target.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            target.recv(&mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
    }
}
