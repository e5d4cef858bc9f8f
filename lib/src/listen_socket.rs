//! The listening sockets the master binds for its workers (see
//! `doc/architecture.md`, "Listening sockets"): binding is part of
//! accepting a listener, and nobody but our workers may serve its address.
//!
//! * UDP: a group of `workers` sockets bound with `SO_REUSEPORT` (socket `k`
//!   goes to worker `k`), after a probe without `SO_REUSEPORT` that fails if
//!   any socket at all holds the address. A classic BPF program attached to
//!   the group picks the socket by a hash of the source address and port,
//!   always below `workers`: a stranger that joins the group later (same
//!   uid, `SO_REUSEPORT`) lands at an index the program never returns.
//! * TCP and HTTP: one listening socket without `SO_REUSEPORT`, shared by
//!   every worker (they accept from the same queue); nothing can join it.
//!
//! Owns only socket calls; the caller keeps the sockets. Every socket is
//! non-blocking and close-on-exec.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel keeps per stream listener.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Options of a UDP listener socket from its `UdpListenerConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerSocketOptions {
    /// `SO_RCVBUF` in bytes (`None` = kernel default).
    pub recv_buffer_size: Option<usize>,
    /// `SO_SNDBUF` in bytes (`None` = kernel default).
    pub send_buffer_size: Option<usize>,
}

/// Why a listening socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another socket (another process, or one of ours) holds the address.
    #[error("{proto} address {address} is already in use")]
    InUse {
        /// `UDP`, `TCP` or `HTTP`.
        proto: &'static str,
        /// The address asked for.
        address: SocketAddr,
    },
    /// Any other failure of a socket call.
    #[error("cannot bind {proto} address {address}: {operation}")]
    Io {
        /// `UDP`, `TCP` or `HTTP`.
        proto: &'static str,
        /// The address asked for.
        address: SocketAddr,
        /// The socket call that failed.
        operation: &'static str,
        /// Its error.
        #[source]
        source: io::Error,
    },
}

/// Binds the `workers` sockets of a UDP listener at `address` (see the
/// module documentation). Fails with [`ListenError::InUse`] when anything
/// holds the address.
pub fn bind_udp_group(
    address: SocketAddr,
    workers: usize,
    options: ListenerSocketOptions,
) -> Result<Vec<OwnedFd>, ListenError> {
    let workers = workers.max(1);
    let io_error = |operation: &'static str| {
        move |source: io::Error| ListenError::Io {
            proto: "UDP",
            address,
            operation,
            source,
        }
    };
    let in_use = |error: io::Error| {
        if error.raw_os_error() == Some(libc::EADDRINUSE) {
            ListenError::InUse {
                proto: "UDP",
                address,
            }
        } else {
            io_error("bind")(error)
        }
    };
    // The probe: neither SO_REUSEADDR nor SO_REUSEPORT, so it conflicts with
    // every socket bound there, whatever that socket's options (a second
    // master of the same user included).
    let probe = udp_socket(address).map_err(io_error("socket"))?;
    probe.bind(&address.into()).map_err(in_use)?;
    // A port-0 request becomes one concrete port for the whole group.
    let address = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(address);
    drop(probe);
    let mut group = Vec::with_capacity(workers);
    for index in 0..workers {
        let socket = udp_socket(address).map_err(io_error("socket"))?;
        socket
            .set_reuse_port(true)
            .map_err(io_error("SO_REUSEPORT"))?;
        apply_udp_options(&socket, options, address).map_err(io_error("socket options"))?;
        socket.bind(&address.into()).map_err(in_use)?;
        if index == 0 {
            // The group exists once its first member is bound; the program
            // then serves every member, present and future.
            attach_reuseport_program(socket.as_raw_fd(), workers, &BTreeSet::new())
                .map_err(io_error("SO_ATTACH_REUSEPORT_CBPF"))?;
        }
        group.push(OwnedFd::from(socket));
    }
    // Closes the window between the probe and the group's first bind: a
    // same-user SO_REUSEPORT socket bound in it would sit at index 0 of the
    // group. Any socket at this address that is not ours refuses the bind.
    match foreign_udp_sockets(address, &group) {
        Ok(0) => {}
        Ok(_) => {
            return Err(ListenError::InUse {
                proto: "UDP",
                address,
            })
        }
        // /proc unreadable (a restricted mount): the probe stands alone.
        Err(error) => tracing::debug!(%address, %error, "cannot list the UDP sockets"),
    }
    Ok(group)
}

/// How many UDP sockets bound exactly to `address` are not in `ours`
/// (`/proc/net/udp` or `udp6`, this network namespace).
pub fn foreign_udp_sockets(address: SocketAddr, ours: &[OwnedFd]) -> io::Result<usize> {
    let mut inodes = std::collections::HashSet::new();
    for fd in ours {
        // SAFETY: `stat` is a plain out-buffer, `fd` is open for the call.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        inodes.insert(stat.st_ino.to_string());
    }
    let (path, local) = match address {
        SocketAddr::V4(v4) => (
            "/proc/net/udp",
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(v4.ip().octets()),
                v4.port()
            ),
        ),
        SocketAddr::V6(v6) => {
            let o = v6.ip().octets();
            let mut hex = String::with_capacity(37);
            for word in o.chunks_exact(4) {
                let word = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
                hex.push_str(&format!("{word:08X}"));
            }
            ("/proc/net/udp6", format!("{hex}:{:04X}", v6.port()))
        }
    };
    let table = std::fs::read_to_string(path)?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 9 && fields[1] == local).then(|| fields[9])
        })
        .filter(|inode| !inodes.contains(*inode))
        .count())
}

/// Binds the one listening socket of a TCP or HTTP listener at `address`:
/// `SO_REUSEADDR` (a port with connections in TIME_WAIT is free) but no
/// `SO_REUSEPORT`, IPv6-only for IPv6, non-blocking, listening.
pub fn bind_stream(address: SocketAddr) -> Result<OwnedFd, ListenError> {
    let io_error = |operation: &'static str| {
        move |source: io::Error| ListenError::Io {
            proto: "TCP",
            address,
            operation,
            source,
        }
    };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(io_error("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(io_error("SO_REUSEADDR"))?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(io_error("IPV6_V6ONLY"))?;
    }
    socket.bind(&address.into()).map_err(|error| {
        if error.raw_os_error() == Some(libc::EADDRINUSE) {
            ListenError::InUse {
                proto: "TCP",
                address,
            }
        } else {
            io_error("bind")(error)
        }
    })?;
    socket.listen(LISTEN_BACKLOG).map_err(io_error("listen"))?;
    Ok(OwnedFd::from(socket))
}

/// The error of a worker told to serve a listener whose socket the master
/// did not pass (a worker run by a master never binds one itself).
pub fn not_passed(address: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("the master passed no listening socket for {address}"),
    )
}

fn udp_socket(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn apply_udp_options(
    socket: &Socket,
    options: ListenerSocketOptions,
    address: SocketAddr,
) -> io::Result<()> {
    apply_buffer_sizes(socket, options, address)
}

/// One kernel socket buffer: `SO_RCVBUF` or `SO_SNDBUF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffer {
    Receive,
    Send,
}

impl Buffer {
    /// The option, the privileged option that ignores the sysctl cap, and
    /// that cap's name.
    fn options(self) -> (libc::c_int, libc::c_int, &'static str) {
        match self {
            Buffer::Receive => (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, "net.core.rmem_max"),
            Buffer::Send => (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, "net.core.wmem_max"),
        }
    }
}

/// Sets the listener socket's `recv_buffer_size` / `send_buffer_size`
/// (`SO_RCVBUF` / `SO_SNDBUF`), shared by the master (which binds) and a
/// worker (which re-applies them on the socket it adopts, or binds alone).
///
/// Linux doubles the value asked for (the other half is its bookkeeping)
/// and caps it at `net.core.rmem_max` / `wmem_max` unless the process has
/// `CAP_NET_ADMIN` (`SO_RCVBUFFORCE` / `SO_SNDBUFFORCE`). So: a socket that
/// already has the size (the master set it) is left alone; otherwise the
/// size is set, read back, forced when the kernel capped it, and, if it is
/// still capped, a warning (from the master and from each worker) names
/// the listener, the size asked for, the size in effect and the sysctl to
/// raise. A refused option is an error; a cap is not. (A size below the
/// kernel's minimum is raised to it, silently.)
pub(crate) fn apply_buffer_sizes(
    socket: &Socket,
    options: ListenerSocketOptions,
    address: SocketAddr,
) -> io::Result<()> {
    if let Some(size) = options.recv_buffer_size {
        apply_buffer_size(socket, Buffer::Receive, size, address)?;
    }
    if let Some(size) = options.send_buffer_size {
        apply_buffer_size(socket, Buffer::Send, size, address)?;
    }
    Ok(())
}

fn apply_buffer_size(
    socket: &Socket,
    buffer: Buffer,
    size: usize,
    address: SocketAddr,
) -> io::Result<()> {
    let (option, force, sysctl) = buffer.options();
    let fd = socket.as_raw_fd();
    // What the kernel reports for a size it granted in full.
    let granted = size.saturating_mul(2);
    if get_int_option(fd, option)? == granted {
        // Already set (by the master, or forced past the cap): setting it
        // again without the privilege would lower it to the cap.
        return Ok(());
    }
    set_int_option(fd, option, size)?;
    if get_int_option(fd, option)? >= granted {
        return Ok(());
    }
    // Capped by the sysctl: allowed past it with CAP_NET_ADMIN only.
    let forced = set_int_option(fd, force, size).is_ok();
    let effective = get_int_option(fd, option)? / 2;
    if effective < size {
        tracing::warn!(
            listener = %address,
            option = if buffer == Buffer::Receive { "recv_buffer_size" } else { "send_buffer_size" },
            asked = size,
            effective,
            forced,
            "UDP listener buffer capped by the kernel: raise {sysctl} (or run with CAP_NET_ADMIN)"
        );
    }
    Ok(())
}

fn set_int_option(fd: RawFd, option: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int_option(fd: RawFd, option: libc::c_int) -> io::Result<usize> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out-pointers of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(usize::try_from(value).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

// ----- the reuseport program -----

/// Multipliers of the source hash (Fibonacci hashing, then the murmur3
/// finaliser's constant).
const MIX_1: u32 = 0x9E37_79B1;
const MIX_2: u32 = 0x85EB_CA6B;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ST: u16 = 0x02;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_MEM: u16 = 0x60;
const BPF_MUL: u16 = 0x20;
const BPF_RSH: u16 = 0x70;
const BPF_XOR: u16 = 0xa0;
const BPF_MOD: u16 = 0x90;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
const BPF_X: u16 = 0x08;
const BPF_A: u16 = 0x10;
const BPF_TAX: u16 = 0x00;
/// `SKF_NET_OFF`: loads relative to the network header (the program's own
/// data starts after the UDP or TCP header).
const NET: u32 = libc::SKF_NET_OFF as u32;
/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

fn op(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program: `mix(source address, source port) % workers`. A load
/// outside the packet ends a classic BPF program with 0, also a valid
/// index; so every path returns an index below `workers`.
fn reuseport_program(workers: u32, down: &BTreeSet<u32>) -> Vec<libc::sock_filter> {
    let mul = |k| op(BPF_ALU | BPF_MUL | BPF_K, k);
    let xor_x = op(BPF_ALU | BPF_XOR | BPF_X, 0);
    let load_word = |offset: u32| op(BPF_LD | BPF_W | BPF_ABS, NET.wrapping_add(offset));
    let load_port = |offset: u32| op(BPF_LD | BPF_H | BPF_ABS, NET.wrapping_add(offset));
    let tax = op(BPF_MISC | BPF_TAX, 0);
    // IPv4: source address at +12, source port at +20 (no IP options).
    let ipv4 = [load_word(12), mul(MIX_1), tax, load_port(20), xor_x];
    // IPv6: the four words of the source address at +8, port at +40; the
    // running hash waits in scratch word 0 while the next word is loaded.
    let mut ipv6 = vec![load_word(8), mul(MIX_1)];
    for offset in [12, 16, 20] {
        ipv6.extend([
            op(BPF_ST, 0),
            load_word(offset),
            op(BPF_LDX | BPF_W | BPF_MEM, 0),
            xor_x,
            mul(MIX_1),
        ]);
    }
    ipv6.extend([tax, load_port(40), xor_x]);
    let mut program = vec![
        // The IP version nibble (an IPv6 socket is IPv6-only, but a wrong
        // guess only costs balance, never correctness).
        op(BPF_LD | BPF_B | BPF_ABS, NET),
        op(BPF_ALU | BPF_RSH | BPF_K, 4),
        // Jump offsets count from the next instruction.
        jump(BPF_JMP | BPF_JEQ | BPF_K, 6, ipv4.len() as u8 + 1, 0),
    ];
    program.extend(ipv4);
    program.push(op(BPF_JMP | BPF_JA, ipv6.len() as u32));
    program.extend(ipv6);
    program.extend([mul(MIX_2), tax, op(BPF_ALU | BPF_RSH | BPF_K, 16), xor_x]);
    program.extend(steering_tail(workers.max(1), down));
    program
}

/// The end of the program, with the final hash in A: `hash % workers`,
/// unless that slot is `down` (no worker reads it: a slot whose worker
/// cannot start), then `live[(hash >> 8) % live.len()]`. Sources of live
/// slots keep their socket whatever is down.
fn steering_tail(workers: u32, down: &BTreeSet<u32>) -> Vec<libc::sock_filter> {
    let down: Vec<u32> = down.iter().copied().filter(|d| *d < workers).collect();
    let live: Vec<u32> = (0..workers).filter(|s| !down.contains(s)).collect();
    if down.is_empty() || live.is_empty() {
        return vec![
            op(BPF_ALU | BPF_MOD | BPF_K, workers),
            op(BPF_RET | BPF_A, 0),
        ];
    }
    let mut tail = vec![
        // The hash waits in scratch word 1 while its slot is checked.
        op(BPF_ST, 1),
        op(BPF_ALU | BPF_MOD | BPF_K, workers),
    ];
    let count = down.len();
    for (j, slot) in down.iter().enumerate() {
        // To the remapping: past the compares left and the `ret A`.
        let skip = u8::try_from(count - j).unwrap_or(u8::MAX);
        tail.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *slot, skip, 0));
    }
    tail.push(op(BPF_RET | BPF_A, 0));
    tail.extend([
        op(BPF_LD | BPF_W | BPF_MEM, 1),
        op(BPF_ALU | BPF_RSH | BPF_K, 8),
        op(BPF_ALU | BPF_MOD | BPF_K, live.len() as u32),
    ]);
    let (last, rest) = live.split_last().unwrap_or((&0, &[]));
    for (i, slot) in rest.iter().enumerate() {
        tail.push(jump(BPF_JMP | BPF_JEQ | BPF_K, i as u32, 0, 1));
        tail.push(op(BPF_RET | BPF_K, *slot));
    }
    tail.push(op(BPF_RET | BPF_K, *last));
    tail
}

/// What the program computes, for tests and documentation: the index of
/// the socket serving datagrams (or connections) from `source` while the
/// slots in `down` are steered around.
pub fn reuseport_index(source: SocketAddr, workers: u32, down: &BTreeSet<u32>) -> u32 {
    let mix = |h: u32, word: u32| (h ^ word).wrapping_mul(MIX_1);
    let h = match source.ip() {
        IpAddr::V4(ip) => u32::from_be_bytes(ip.octets()).wrapping_mul(MIX_1),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let word = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            let h = word(0).wrapping_mul(MIX_1);
            let h = mix(h, word(4));
            let h = mix(h, word(8));
            mix(h, word(12))
        }
    };
    let h = (h ^ u32::from(source.port())).wrapping_mul(MIX_2);
    let h = h ^ (h >> 16);
    let workers = workers.max(1);
    let slot = h % workers;
    let live: Vec<u32> = (0..workers).filter(|s| !down.contains(s)).collect();
    if live.is_empty() || !down.contains(&slot) {
        return slot;
    }
    live[((h >> 8) % live.len() as u32) as usize]
}

/// Replaces the program of the UDP group `fd` belongs to: sources whose
/// slot is in `down` go to the live slots instead (their datagrams would
/// otherwise wait in a socket nobody reads); with nothing down, every
/// source has its own slot again.
pub fn steer_udp_group(fd: BorrowedFd<'_>, workers: usize, down: &BTreeSet<u32>) -> io::Result<()> {
    attach_reuseport_program(fd.as_raw_fd(), workers, down)
}

fn attach_reuseport_program(fd: RawFd, workers: usize, down: &BTreeSet<u32>) -> io::Result<()> {
    let workers = u32::try_from(workers).unwrap_or(u32::MAX);
    let mut program = reuseport_program(workers, down);
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the
    // kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests;
