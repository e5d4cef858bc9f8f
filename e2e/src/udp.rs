//! Mock UDP peers: [`UdpBackend`] (an echo server on its own thread that can
//! go silent and come back, counts what it receives and parses PROXY v2
//! headers), [`UdpClient`] (send, receive with a bounded timeout) and
//! [`SteadyTraffic`] (a client thread sending one request at a time and
//! counting lost replies).
//!
//! A backend answers `"<name>|<payload>"` so a test knows which backend a
//! reply came from; health probes (the configured probe payload) are answered
//! but counted apart from traffic.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::proxy_protocol::{self, ProxyHeader};
use crate::wait::{poll_until, wait_until};

/// Default bound on waiting for one reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// One datagram a backend received (health probes excluded).
#[derive(Debug, Clone)]
pub struct Received {
    /// The sozu upstream socket it came from.
    pub from: SocketAddr,
    /// The payload after any PROXY header.
    pub payload: Vec<u8>,
    /// The PROXY v2 header, if the datagram started with one.
    pub proxy: Option<ProxyHeader>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    silent: AtomicBool,
    replies_per_datagram: AtomicUsize,
    probes: AtomicUsize,
    received: Mutex<Vec<Received>>,
}

/// A UDP echo backend on a loopback port, served by its own thread until
/// dropped.
#[derive(Debug)]
pub struct UdpBackend {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    /// An echo backend on `ip` (ephemeral port) answering `"<name>|<payload>"`;
    /// datagrams equal to `probe_payload` are answered with the payload and
    /// counted as probes.
    pub fn start(name: &str, ip: IpAddr, probe_payload: Option<&str>) -> Self {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind a backend socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set the backend read timeout");
        let addr = socket.local_addr().expect("backend address");
        let shared = Arc::new(Shared {
            replies_per_datagram: AtomicUsize::new(1),
            ..Shared::default()
        });
        let thread_shared = Arc::clone(&shared);
        let prefix = format!("{name}|").into_bytes();
        let probe = probe_payload.map(|p| p.as_bytes().to_vec());
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || serve(socket, thread_shared, prefix, probe))
            .expect("spawn a backend thread");
        UdpBackend {
            name: name.to_owned(),
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// An IPv4 loopback echo backend without health probes.
    pub fn v4(name: &str) -> Self {
        Self::start(name, crate::ports::V4, None)
    }

    /// Its name (the reply prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering (datagrams and probes are still received and
    /// counted), or answers again.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::SeqCst);
    }

    /// How many replies each datagram gets (default 1).
    pub fn set_replies_per_datagram(&self, n: usize) {
        self.shared.replies_per_datagram.store(n, Ordering::SeqCst);
    }

    /// Traffic datagrams received so far (probes excluded).
    pub fn datagrams(&self) -> usize {
        self.lock().len()
    }

    /// Health probes received so far.
    pub fn probes(&self) -> usize {
        self.shared.probes.load(Ordering::SeqCst)
    }

    /// A copy of every traffic datagram received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().clone()
    }

    /// Waits until at least `n` traffic datagrams were received.
    pub fn wait_datagrams(&self, n: usize, timeout: Duration) -> Vec<Received> {
        wait_until(
            &format!("backend {} to receive {n} datagrams", self.name),
            timeout,
            || {
                let received = self.lock();
                (received.len() >= n).then(|| received.clone())
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: UdpSocket, shared: Arc<Shared>, prefix: Vec<u8>, probe: Option<Vec<u8>>) {
    let mut buf = vec![0u8; 70_000];
    while !shared.stop.load(Ordering::SeqCst) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // ECONNREFUSED from an earlier send to a closed peer, etc.
            Err(_) => continue,
        };
        let (header, payload) = proxy_protocol::split(&buf[..len]);
        let silent = shared.silent.load(Ordering::SeqCst);
        if header.is_none() && probe.as_deref() == Some(payload) {
            shared.probes.fetch_add(1, Ordering::SeqCst);
            if !silent {
                let _ = socket.send_to(payload, from);
            }
            continue;
        }
        let mut reply = prefix.clone();
        reply.extend_from_slice(payload);
        shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Received {
                from,
                payload: payload.to_vec(),
                proxy: header,
            });
        if !silent {
            for _ in 0..shared.replies_per_datagram.load(Ordering::SeqCst) {
                let _ = socket.send_to(&reply, from);
            }
        }
    }
}

/// Splits a backend reply `"<name>|<payload>"`.
pub fn parse_reply(reply: &[u8]) -> (String, Vec<u8>) {
    match reply.iter().position(|&b| b == b'|') {
        Some(i) => (
            String::from_utf8_lossy(&reply[..i]).into_owned(),
            reply[i + 1..].to_vec(),
        ),
        None => (String::new(), reply.to_vec()),
    }
}

/// A UDP client socket on loopback talking to one address.
#[derive(Debug)]
pub struct UdpClient {
    socket: UdpSocket,
    target: SocketAddr,
}

impl UdpClient {
    /// A client on the loopback address of `target`'s family.
    pub fn new(target: SocketAddr) -> Self {
        let ip = if target.is_ipv4() {
            crate::ports::V4
        } else {
            crate::ports::V6
        };
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind a client socket");
        UdpClient { socket, target }
    }

    /// Its source address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("client address")
    }

    /// Sends one datagram to the target.
    pub fn send(&self, payload: &[u8]) {
        // ECONNREFUSED here reports an ICMP error from an earlier datagram;
        // the datagram itself is sent on the next try.
        for _ in 0..3 {
            match self.socket.send_to(payload, self.target) {
                Ok(_) => return,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("send to {}: {e}", self.target),
            }
        }
        panic!("send to {}: refused three times", self.target);
    }

    /// The next datagram from the target within `timeout`, if any.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        let deadline = crate::wait::Deadline::after(timeout);
        loop {
            let left = deadline.remaining();
            if left.is_zero() {
                return None;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("set the client read timeout");
            match self.socket.recv_from(&mut buf) {
                Ok((len, from)) if from == self.target => return Some(buf[..len].to_vec()),
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                // An ICMP error for an earlier send, or a signal delivered
                // to the test process mid-call: keep waiting.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("receive from {}: {e} ({:?})", self.target, e.kind()),
            }
        }
    }

    /// Sends `payload` and waits [`REPLY_TIMEOUT`] for one reply.
    pub fn request(&self, payload: &[u8]) -> Option<Vec<u8>> {
        self.send(payload);
        self.recv_timeout(REPLY_TIMEOUT)
    }

    /// Sends `payload`, expects a reply echoing it, returns the name of the
    /// backend that answered.
    pub fn expect_echo(&self, payload: &[u8]) -> String {
        let reply = self.request(payload).unwrap_or_else(|| {
            panic!(
                "no reply within {REPLY_TIMEOUT:?} to {:?} sent from {} to {}",
                String::from_utf8_lossy(payload),
                self.local_addr(),
                self.target
            )
        });
        let (backend, echoed) = parse_reply(&reply);
        assert_eq!(
            echoed, payload,
            "reply from {backend} does not echo the request"
        );
        backend
    }

    /// Sends `payload` until a reply comes back (bounded): for the first
    /// request after a configuration change that workers apply
    /// asynchronously. Returns the backend name.
    pub fn echo_eventually(&self, payload: &[u8], timeout: Duration) -> String {
        wait_until(&format!("a reply through {}", self.target), timeout, || {
            self.send(payload);
            let reply = self.recv_timeout(Duration::from_millis(300))?;
            let (backend, echoed) = parse_reply(&reply);
            (echoed == payload).then_some(backend)
        })
    }

    /// Asserts nothing arrives for `window` (a bounded negative check).
    /// A slow proxy passes it by accident: pair it with a positive signal
    /// (a counter that must move, or a datagram that must arrive after).
    pub fn expect_silence(&self, window: Duration) {
        if let Some(reply) = self.recv_timeout(window) {
            panic!(
                "expected no datagram within {window:?}, got {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
    }
}

/// What a [`SteadyTraffic`] run saw.
#[derive(Debug, Clone, Default)]
pub struct TrafficReport {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered within the reply timeout.
    pub answered: u64,
    /// Sequence numbers of requests that got no reply.
    pub lost: Vec<u64>,
    /// Replies per backend name.
    pub by_backend: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct TrafficShared {
    stop: AtomicBool,
    sent: AtomicU64,
    answered: AtomicU64,
    lost: AtomicU64,
}

/// A client thread sending `"<tag>-<seq>"` one at a time from one source
/// port (one sticky flow), waiting up to [`REPLY_TIMEOUT`] for each reply,
/// every `interval`.
#[derive(Debug)]
pub struct SteadyTraffic {
    tag: String,
    interval: Duration,
    shared: Arc<TrafficShared>,
    local: SocketAddr,
    thread: Option<JoinHandle<TrafficReport>>,
}

impl SteadyTraffic {
    /// Starts sending to `target` from one source port.
    pub fn start(target: SocketAddr, tag: &str, interval: Duration) -> Self {
        Self::spawn(target, tag, interval, false)
    }

    /// Starts sending to `target`, each request from a new source port (a
    /// new flow each time, like DNS clients).
    pub fn start_fresh_sources(target: SocketAddr, tag: &str, interval: Duration) -> Self {
        Self::spawn(target, tag, interval, true)
    }

    fn spawn(target: SocketAddr, tag: &str, interval: Duration, fresh: bool) -> Self {
        let client = UdpClient::new(target);
        let local = client.local_addr();
        let shared = Arc::new(TrafficShared::default());
        let thread_shared = Arc::clone(&shared);
        let tag = tag.to_owned();
        let thread_tag = tag.clone();
        let thread = std::thread::Builder::new()
            .name(format!("traffic-{tag}"))
            .spawn(move || run_traffic(client, thread_shared, thread_tag, interval, fresh))
            .expect("spawn a traffic thread");
        SteadyTraffic {
            tag: tag.clone(),
            interval,
            shared,
            local,
            thread: Some(thread),
        }
    }

    /// The client's source address (its flow key).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// Requests sent so far (answered or not).
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests than now have been sent and settled
    /// (answered or timed out), whatever their fate: lets traffic run
    /// across an event without failing on loss (checked at the end).
    pub fn wait_more_settled(&self, n: u64) {
        // Each request settles within its reply timeout plus the pacing.
        let timeout = (REPLY_TIMEOUT + self.interval) * n as u32 + Duration::from_secs(5);
        let start = self.answered() + self.lost();
        if poll_until(timeout, || {
            (self.answered() + self.lost() >= start + n).then_some(())
        })
        .is_none()
        {
            panic!(
                "traffic {} stalled: not {n} more requests in {timeout:?}",
                self.tag
            );
        }
    }

    /// Requests lost so far.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests than now have been answered.
    pub fn wait_more_answers(&self, n: u64, timeout: Duration) {
        let start = self.answered();
        if poll_until(timeout, || (self.answered() >= start + n).then_some(())).is_none() {
            panic!(
                "traffic {} from {}: fewer than {n} answers within {timeout:?} ({} lost so far)",
                self.tag,
                self.local,
                self.lost()
            );
        }
    }

    /// Stops the thread and returns what it saw.
    pub fn stop(mut self) -> TrafficReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().expect("traffic thread panicked"))
            .unwrap_or_default()
    }
}

impl Drop for SteadyTraffic {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_traffic(
    mut client: UdpClient,
    shared: Arc<TrafficShared>,
    tag: String,
    interval: Duration,
    fresh: bool,
) -> TrafficReport {
    let mut report = TrafficReport::default();
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        if fresh && seq > 0 {
            client = UdpClient::new(client.target);
        }
        let payload = format!("{tag}-{seq}").into_bytes();
        client.send(&payload);
        report.sent += 1;
        shared.sent.fetch_add(1, Ordering::SeqCst);
        let deadline = crate::wait::Deadline::after(REPLY_TIMEOUT);
        let mut answered = false;
        while !deadline.is_past() {
            let Some(reply) = client.recv_timeout(deadline.remaining()) else {
                break;
            };
            let (backend, echoed) = parse_reply(&reply);
            // A late reply to an earlier request is skipped.
            if echoed == payload {
                *report.by_backend.entry(backend).or_default() += 1;
                answered = true;
                break;
            }
        }
        if answered {
            report.answered += 1;
            shared.answered.fetch_add(1, Ordering::SeqCst);
        } else {
            report.lost.push(seq);
            shared.lost.fetch_add(1, Ordering::SeqCst);
        }
        seq += 1;
        std::thread::sleep(interval);
    }
    report
}
