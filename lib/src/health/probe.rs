//! The socket side of one health probe, on mio.
//!
//! Owns one non-blocking socket per probe in flight: a connected UDP socket
//! that has sent the payload (any reply = success, ECONNREFUSED = failure),
//! or a TCP connect in progress (writable without SO_ERROR = success). It
//! never decides health nor measures time: the pure `HealthChecker` does,
//! and fails a probe that stays silent past its deadline.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

use super::checker::{Probe, ProbeKind};

/// The result of a probe as seen on its socket.
#[derive(Debug)]
pub(crate) enum ProbeOutcome {
    /// The backend answered (UDP reply, or TCP handshake complete).
    Success,
    /// The backend refused or the socket failed.
    Failure(io::Error),
}

#[derive(Debug)]
enum ProbeIo {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// One probe in flight.
#[derive(Debug)]
pub(crate) struct ProbeSocket {
    io: ProbeIo,
}

impl ProbeSocket {
    /// Opens the probe's socket and starts it (sends the UDP payload, or
    /// starts the TCP connect). An error here is a failed probe (e.g. EMFILE,
    /// or an immediately refused connect).
    pub(crate) fn open(probe: &Probe) -> io::Result<Self> {
        let io = match &probe.kind {
            ProbeKind::Udp { payload } => {
                let local: SocketAddr = match probe.addr {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(local)?;
                // Connected, so the kernel reports ICMP port-unreachable as
                // ECONNREFUSED on this socket and filters other senders out.
                socket.connect(probe.addr)?;
                socket.send(payload)?;
                ProbeIo::Udp(socket)
            }
            ProbeKind::Tcp => ProbeIo::Tcp(TcpStream::connect(probe.addr)?),
        };
        Ok(ProbeSocket { io })
    }

    /// Registers the socket (readable for UDP, writable for TCP; errors wake
    /// either).
    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match &mut self.io {
            ProbeIo::Udp(s) => registry.register(s, token, Interest::READABLE),
            ProbeIo::Tcp(s) => registry.register(s, token, Interest::WRITABLE),
        }
    }

    /// Removes the socket from the poll (before dropping it).
    pub(crate) fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match &mut self.io {
            ProbeIo::Udp(s) => registry.deregister(s),
            ProbeIo::Tcp(s) => registry.deregister(s),
        }
    }

    /// Checks the socket after a readiness event: `None` while the probe is
    /// still pending (spurious wake-up, connect in progress).
    pub(crate) fn poll_outcome(&mut self) -> Option<ProbeOutcome> {
        match &mut self.io {
            ProbeIo::Udp(s) => {
                // Any reply counts, so a truncated read is fine.
                let mut buf = [0u8; 64];
                match s.recv(&mut buf) {
                    Ok(_) => Some(ProbeOutcome::Success),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                    Err(e) => Some(ProbeOutcome::Failure(e)),
                }
            }
            ProbeIo::Tcp(s) => match s.take_error() {
                Ok(Some(e)) | Err(e) => Some(ProbeOutcome::Failure(e)),
                Ok(None) => match s.peer_addr() {
                    Ok(_) => Some(ProbeOutcome::Success),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
                    Err(e) => Some(ProbeOutcome::Failure(e)),
                },
            },
        }
    }
}
