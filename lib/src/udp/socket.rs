//! Opening the UDP shell's sockets: listener sockets (adopted from the
//! master, which binds them: `crate::listen_socket`; bound here with
//! SO_REUSEPORT only by a worker run without a master, as in tests), connected per-flow upstream
//! sockets, and the `IP_PKTINFO` / `IPV6_RECVPKTINFO` switch that lets a
//! wildcard listener answer from the address the client sent to.
//!
//! Also registers upstream sockets (per flow, one-way, `DNS_ID`) with the
//! event loop under a fresh token ([`register_readable`]), the one place
//! that pairs a token with a registration.
//!
//! It never reads or writes datagrams (see `super::mmsg`) and never keeps
//! state: every function returns an owned socket or token.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::UdpToken;
use crate::token_table::TokenTable;

pub(crate) use crate::listen_socket::ListenerSocketOptions;

/// Binds a non-blocking listener socket at `addr` with `SO_REUSEPORT`, for
/// a worker run without a master (a master binds the listening sockets
/// itself, see `crate::listen_socket`), `IPV6_V6ONLY` for IPv6 addresses (an IPv4 and an IPv6 listener may
/// share a port), the configured buffer sizes, and packet info on a wildcard
/// address.
pub(crate) fn bind_listener(
    addr: SocketAddr,
    options: ListenerSocketOptions,
) -> io::Result<StdUdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    apply_buffer_sizes(&socket, options, addr)?;
    if addr.ip().is_unspecified() {
        enable_packet_info(socket.as_raw_fd(), addr)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Takes over a listener socket passed by the master: checks it is a UDP
/// socket bound to `addr`, makes it non-blocking and re-applies the buffer
/// sizes and packet info (idempotent). The fd is closed on error.
pub(crate) fn adopt_listener(
    fd: OwnedFd,
    addr: SocketAddr,
    options: ListenerSocketOptions,
) -> io::Result<StdUdpSocket> {
    let socket = Socket::from(fd);
    if socket.r#type()? != Type::DGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the socket passed for {addr} is not a datagram socket"),
        ));
    }
    let local = socket.local_addr()?.as_socket();
    if local != Some(addr) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the socket passed for {addr} is bound to {local:?}"),
        ));
    }
    socket.set_nonblocking(true)?;
    apply_buffer_sizes(&socket, options, addr)?;
    if addr.ip().is_unspecified() {
        enable_packet_info(socket.as_raw_fd(), addr)?;
    }
    Ok(socket.into())
}

/// The configured buffer sizes (see `crate::listen_socket`: read back, and
/// a warning when the kernel capped them).
fn apply_buffer_sizes(
    socket: &Socket,
    options: ListenerSocketOptions,
    addr: SocketAddr,
) -> io::Result<()> {
    crate::listen_socket::apply_buffer_sizes(socket, options, addr)
}

/// Asks the kernel to attach the destination address of each received
/// datagram (`IP_PKTINFO` / `IPV6_RECVPKTINFO`), so replies can leave from
/// it: on a wildcard listener of a multi-homed host, a reply from another
/// address would be discarded by the client.
fn enable_packet_info(fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = match addr {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    };
    // SAFETY: `on` outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a non-blocking UDP socket on an ephemeral port, connected to the
/// backend `addr`: its own source port demultiplexes the backend's replies,
/// and the connection makes the kernel report ICMP port-unreachable as
/// `ECONNREFUSED` and filter other senders out. With a `source`, the socket
/// is first bound to `source:0`: its port then comes from that address's
/// own share of the ephemeral range.
pub(crate) fn open_upstream(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> io::Result<mio::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    // Without a source, no explicit `bind`: `connect` binds an unbound
    // socket to an ephemeral port and the route's source address itself
    // (one system call less per flow).
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect(&addr.into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

/// Registers an upstream socket readable (writability is asked for only
/// while a queue waits) under a fresh token owned by `owner`. If mio
/// refuses, the token is forgotten again and the error returned: no token
/// ever names a socket the loop does not watch.
pub(crate) fn register_readable(
    registry: &Registry,
    tokens: &mut dyn TokenTable<UdpToken>,
    socket: &mut mio::net::UdpSocket,
    owner: UdpToken,
) -> io::Result<Token> {
    let token = tokens.insert(owner);
    if let Err(error) = registry.register(socket, token, Interest::READABLE) {
        tokens.remove(token);
        return Err(error);
    }
    Ok(token)
}

/// The configured `upstream_source_addresses`, used in turn by one
/// listener's upstream sockets (each address brings its own ephemeral port
/// range, so a worker can hold more flows than one range allows).
#[derive(Debug, Clone, Default)]
pub struct SourceAddresses {
    addresses: Arc<[IpAddr]>,
    next: usize,
}

impl SourceAddresses {
    /// The addresses, in the configured order.
    pub fn new(addresses: &[IpAddr]) -> Self {
        SourceAddresses {
            addresses: addresses.into(),
            next: 0,
        }
    }

    /// How many port ranges these addresses bring to flows of either
    /// family: the number of addresses of the family with fewer of them
    /// (when both are listed), since a flow can only use its own family's
    /// addresses; 0 when none is configured.
    pub fn port_ranges(&self) -> u64 {
        let v4 = self.addresses.iter().filter(|a| a.is_ipv4()).count() as u64;
        let v6 = self.addresses.len() as u64 - v4;
        match (v4, v6) {
            (0, n) | (n, 0) => n,
            (a, b) => a.min(b),
        }
    }

    /// Opens an upstream socket to `backend` bound to the next address of
    /// its family, in turn; an address whose ports are all taken
    /// (`EADDRINUSE`) or that is gone (`EADDRNOTAVAIL`) is skipped for this
    /// flow. Without an address of that family, the kernel picks one.
    pub fn open(&mut self, backend: SocketAddr) -> io::Result<mio::net::UdpSocket> {
        let count = self.addresses.len();
        let mut last_error = None;
        for step in 0..count {
            let index = (self.next + step) % count;
            let ip = self.addresses[index];
            if ip.is_ipv4() != backend.is_ipv4() {
                continue;
            }
            match open_upstream(backend, Some(ip)) {
                Ok(socket) => {
                    self.next = index + 1;
                    return Ok(socket);
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
                    ) =>
                {
                    tracing::debug!(source = %ip, %backend, error = %e, "upstream source address skipped");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        match last_error {
            Some(e) => Err(e),
            None => open_upstream(backend, None),
        }
    }
}

/// Whether an error means the process or the system ran out of file
/// descriptors (or socket buffers): the flow is aborted and counted, the
/// worker goes on.
pub(crate) fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new
/// soft limit (the base of the automatic `max_flows`).
pub(crate) fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid in-pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "could not raise the file-descriptor limit"
            );
        }
    }
    Ok(limit.rlim_cur)
}

/// Where the kernel keeps the range of ephemeral ports that `connect` on an
/// unbound socket draws from (IPv4 and IPv6 alike).
pub(crate) const PORT_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The number of ports in the host's ephemeral range (`hi − lo + 1`), read
/// from [`PORT_RANGE_PATH`]: every flow's upstream socket takes one.
pub(crate) fn ephemeral_port_count() -> io::Result<u64> {
    let text = std::fs::read_to_string(PORT_RANGE_PATH)?;
    parse_port_range(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{PORT_RANGE_PATH}: unexpected content {text:?}"),
        )
    })
}

/// Parses `"lo\thi\n"` into `hi − lo + 1`.
pub(crate) fn parse_port_range(text: &str) -> Option<u64> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let lo = fields.next()?.ok()?;
    let hi = fields.next()?.ok()?;
    if fields.next().is_some() || hi < lo {
        return None;
    }
    Some(u64::from(hi - lo) + 1)
}
