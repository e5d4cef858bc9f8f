//! Socket plumbing shared by the TCP and HTTP proxies: listening sockets,
//! one connected peer ("side") with its cached readiness, non-blocking
//! backend connects with backend choice and retry.
//!
//! Owns only socket calls and the readiness cache. Readiness is edge
//! triggered: a side is `readable` from an event until a read would block,
//! so a relay that stopped reading because the other side's buffer was full
//! (backpressure) resumes by itself once there is room, without a new event.
//! Nothing here reads the clock (callers pass `now`) or decides a policy.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::backends::{BackendId, BackendMap, ClusterId};
use crate::load_balancing::mix64;

use super::tls::TlsFront;

pub(crate) use crate::listen_socket::LISTEN_BACKLOG;
/// Connections accepted per listener per wake-up, so one busy listener
/// cannot starve the others.
pub(crate) const ACCEPT_BUDGET: usize = 64;
/// Backends tried for one connection before giving up.
pub(crate) const MAX_CONNECT_ATTEMPTS: u32 = 3;

/// Binds a listening socket for a worker run without a master (a master
/// binds one itself and passes it, see `crate::listen_socket`):
/// SO_REUSEADDR, SO_REUSEPORT, IPv6-only for IPv6 addresses, non-blocking.
pub(crate) fn bind_listener(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Uses a listening socket passed by the master instead of binding; it
/// must already listen.
pub(crate) fn adopt_listener(fd: OwnedFd) -> io::Result<TcpListener> {
    // SAFETY: the fd is owned and moved into the listener.
    let std = unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
    std.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std))
}

/// One connected socket of a session and what is known about it.
#[derive(Debug)]
pub(crate) struct Side {
    /// The socket.
    pub stream: TcpStream,
    /// Its token in the loop's table.
    pub token: Token,
    /// A read may make progress (cleared when one would block).
    pub readable: bool,
    /// A write may make progress (cleared when one would block).
    pub writable: bool,
    /// The peer finished sending (a read returned 0).
    pub read_closed: bool,
    /// We shut our sending half down.
    pub write_closed: bool,
    /// Last read or write (of plaintext, on a TLS side: the handshake
    /// does not count, so its deadline runs from accept).
    pub last_activity: Instant,
    /// The TLS layer of an HTTPS client connection.
    pub tls: Option<Box<TlsFront>>,
}

/// The outcome of a read attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Bytes were read (maybe with more waiting).
    Read(usize),
    /// Nothing more now (would block, or no room).
    Idle,
    /// The peer closed its sending half.
    Closed,
}

impl Side {
    /// A side for a stream registered under `token`.
    pub(crate) fn new(stream: TcpStream, token: Token, now: Instant) -> Self {
        Side {
            stream,
            token,
            readable: true,
            writable: true,
            read_closed: false,
            write_closed: false,
            last_activity: now,
            tls: None,
        }
    }

    /// A client side that speaks TLS through `tls`.
    pub(crate) fn with_tls(stream: TcpStream, token: Token, now: Instant, tls: TlsFront) -> Self {
        let mut side = Side::new(stream, token, now);
        side.tls = Some(Box::new(tls));
        side
    }

    /// True on an HTTPS client connection.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn read_tls(&mut self, space: &mut [u8], now: Instant) -> io::Result<ReadOutcome> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(ReadOutcome::Idle);
        };
        if self.read_closed || space.is_empty() {
            return Ok(ReadOutcome::Idle);
        }
        let handshaking = tls.is_handshaking();
        let read = tls.read(
            &mut self.stream,
            &mut self.readable,
            &mut self.writable,
            space,
        )?;
        if handshaking && !tls.is_handshaking() {
            // The handshake's deadline is over; idle time counts from now.
            self.last_activity = now;
        }
        Ok(match read {
            Some(0) => {
                self.read_closed = true;
                self.last_activity = now;
                ReadOutcome::Closed
            }
            Some(n) => {
                self.last_activity = now;
                ReadOutcome::Read(n)
            }
            None => ReadOutcome::Idle,
        })
    }

    /// Registers the socket for reads and writes (edge triggered).
    pub(crate) fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(
            &mut self.stream,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Deregisters the socket (errors are logged: it is being dropped).
    pub(crate) fn deregister(&mut self, registry: &Registry) {
        if let Err(error) = registry.deregister(&mut self.stream) {
            tracing::debug!(%error, "deregistering a stream");
        }
    }

    /// Reads once into `space` if the side may be read.
    pub(crate) fn read_into(&mut self, space: &mut [u8], now: Instant) -> io::Result<ReadOutcome> {
        if self.tls.is_some() {
            return self.read_tls(space, now);
        }
        if !self.readable || self.read_closed || space.is_empty() {
            return Ok(ReadOutcome::Idle);
        }
        loop {
            match self.stream.read(space) {
                Ok(0) => {
                    self.read_closed = true;
                    self.last_activity = now;
                    return Ok(ReadOutcome::Closed);
                }
                Ok(n) => {
                    self.last_activity = now;
                    return Ok(ReadOutcome::Read(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(ReadOutcome::Idle);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes once from `data` if the side may be written; returns bytes
    /// written (0 when it would block or there is nothing to write).
    pub(crate) fn write_from(&mut self, data: &[u8], now: Instant) -> io::Result<usize> {
        if let Some(tls) = self.tls.as_mut() {
            if self.write_closed {
                return Ok(0);
            }
            let n = tls.write(&mut self.stream, &mut self.writable, data)?;
            if n > 0 {
                self.last_activity = now;
            }
            return Ok(n);
        }
        if !self.writable || data.is_empty() || self.write_closed {
            return Ok(0);
        }
        loop {
            match self.stream.write(data) {
                Ok(n) => {
                    self.last_activity = now;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Ok(0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Shuts our sending half (the peer reads EOF).
    pub(crate) fn shutdown_write(&mut self) {
        if !self.write_closed {
            self.write_closed = true;
            if let Some(tls) = self.tls.as_mut() {
                tls.shutdown(&mut self.stream, &mut self.writable);
                return;
            }
            if let Err(error) = self.stream.shutdown(Shutdown::Write) {
                tracing::debug!(%error, "shutdown(write)");
            }
        }
    }
}

/// Where a non-blocking connect stands.
#[derive(Debug)]
pub(crate) enum ConnectState {
    /// Still in progress.
    Pending,
    /// Established.
    Connected,
    /// Refused, unreachable, reset…
    Failed(io::Error),
}

/// Checks a connecting stream after a readiness event (mio's documented
/// way: a pending error, else whether it has a peer).
pub(crate) fn connect_state(stream: &TcpStream) -> ConnectState {
    match stream.take_error() {
        Ok(Some(error)) | Err(error) => return ConnectState::Failed(error),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => ConnectState::Connected,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectState::Pending,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => ConnectState::Pending,
        Err(e) => ConnectState::Failed(e),
    }
}

/// A backend connection being opened.
#[derive(Debug)]
pub(crate) struct Connecting {
    /// The backend chosen.
    pub backend: BackendId,
    /// Its address.
    pub address: SocketAddr,
    /// The connecting socket (not registered yet).
    pub stream: TcpStream,
    /// Attempts made so far for this connection, this one included.
    pub attempt: u32,
}

/// Why no backend connection could be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The cluster has no backend available.
    #[error("no backend available in cluster {cluster}")]
    NoBackend { cluster: ClusterId },
    /// Every attempt failed at once (e.g. EMFILE).
    #[error("connecting to backend {backend} at {address} failed")]
    Failed {
        backend: BackendId,
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Picks a backend of `cluster` and starts a non-blocking connect to it.
/// `attempt` numbers the tries of one connection (1 for the first); it
/// varies the affinity hash so consistent-hash policies try another backend
/// after a refusal, and round-robin moves on by itself. Immediate failures
/// are retried here up to [`MAX_CONNECT_ATTEMPTS`].
pub(crate) fn connect_backend(
    backends: &mut BackendMap,
    cluster: &ClusterId,
    affinity: u64,
    mut attempt: u32,
) -> Result<Connecting, ConnectError> {
    loop {
        let hash = if attempt <= 1 {
            affinity
        } else {
            mix64(affinity ^ u64::from(attempt))
        };
        let Some((backend, address)) = backends.select(cluster.as_str(), hash) else {
            return Err(ConnectError::NoBackend {
                cluster: cluster.clone(),
            });
        };
        match TcpStream::connect(address) {
            Ok(stream) => {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "TCP_NODELAY");
                }
                return Ok(Connecting {
                    backend,
                    address,
                    stream,
                    attempt,
                });
            }
            Err(source) => {
                tracing::debug!(cluster = %cluster, backend = %backend, %address, error = %source, "connect failed at once");
                backends.mark_suspect(cluster.as_str(), backend.as_str());
                if attempt >= MAX_CONNECT_ATTEMPTS {
                    return Err(ConnectError::Failed {
                        backend,
                        address,
                        source,
                    });
                }
                attempt += 1;
            }
        }
    }
}

/// Connects to one named backend of `cluster` (a sticky session's), if it
/// is up; `None` when it is gone, not up, or refuses at once (marked
/// suspect): the caller then balances as usual.
pub(crate) fn connect_preferred(
    backends: &mut BackendMap,
    cluster: &ClusterId,
    preferred: &BackendId,
) -> Option<Connecting> {
    let backend = backends
        .cluster(cluster.as_str())?
        .get(preferred.as_str())?;
    if backend.status() != crate::backends::BackendStatus::Up {
        return None;
    }
    let address = backend.address();
    match TcpStream::connect(address) {
        Ok(stream) => {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY");
            }
            Some(Connecting {
                backend: preferred.clone(),
                address,
                stream,
                attempt: 1,
            })
        }
        Err(error) => {
            tracing::debug!(cluster = %cluster, backend = %preferred, %address, %error, "sticky backend connect failed at once");
            backends.mark_suspect(cluster.as_str(), preferred.as_str());
            None
        }
    }
}
