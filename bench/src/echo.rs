//! `sozu-bench echo`: the UDP echo backend.
//!
//! Several UDP sockets, one epoll loop (mio); each readable socket is
//! drained with `recvmmsg` batches and every datagram is sent back to its
//! sender with one `sendmmsg` per batch. It prints the bound addresses on
//! its first stdout line (`listening A,B,...`) so a runner can use port 0,
//! and runs until killed or for `--duration` seconds. It binds loopback
//! addresses only and never interprets the payload.

use std::io::{self, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

/// Largest datagram echoed intact; larger ones are truncated by the kernel.
const MAX_DATAGRAM: usize = 2048;

/// Socket buffer size asked for (the kernel clamps it to rmem_max).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Options of `sozu-bench echo`.
#[derive(Args, Debug, Clone)]
pub(crate) struct EchoArgs {
    /// Number of sockets when --ports is not given (each on a free port).
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
    /// Address to bind (loopback only).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Explicit ports, comma separated (overrides --sockets).
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Datagrams per recvmmsg/sendmmsg call.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

/// Preallocated recvmmsg/sendmmsg state; pointers inside `headers` point
/// into the other vectors, which are never resized after construction.
struct Batch {
    buffers: Vec<[u8; MAX_DATAGRAM]>,
    iovecs: Vec<libc::iovec>,
    addresses: Vec<libc::sockaddr_storage>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(size: usize) -> Box<Batch> {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zeroed_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above (pointers null, lengths 0, until `new` fills them).
        let zeroed_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut batch = Box::new(Batch {
            buffers: vec![[0u8; MAX_DATAGRAM]; size],
            iovecs: Vec::with_capacity(size),
            addresses: vec![zeroed_addr; size],
            headers: vec![zeroed_hdr; size],
        });
        for i in 0..size {
            let iov = libc::iovec {
                iov_base: batch.buffers[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            batch.iovecs.push(iov);
        }
        for i in 0..size {
            let addr: *mut libc::sockaddr_storage = &mut batch.addresses[i];
            let iov: *mut libc::iovec = &mut batch.iovecs[i];
            let hdr = &mut batch.headers[i].msg_hdr;
            hdr.msg_name = addr.cast();
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
        }
        batch
    }

    /// Prepares every slot for receiving.
    fn reset_for_recv(&mut self) {
        for i in 0..self.headers.len() {
            self.iovecs[i].iov_len = MAX_DATAGRAM;
            self.headers[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            self.headers[i].msg_len = 0;
        }
    }
}

/// Counters of one echo run.
#[derive(Debug, Default)]
struct EchoCounters {
    received: u64,
    echoed: u64,
    dropped: u64,
}

fn set_buffer(fd: libc::c_int, force: libc::c_int, plain: libc::c_int) {
    let size = SOCKET_BUFFER;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, pointer to a live c_int of the given length.
    unsafe {
        let p = (&size as *const libc::c_int).cast();
        if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
            // Not privileged: the plain option is clamped to the sysctl max.
            libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
        }
    }
}

/// Drains one socket: recvmmsg a batch, sendmmsg it back, until empty.
fn echo_socket(fd: libc::c_int, batch: &mut Batch, counters: &mut EchoCounters) -> io::Result<()> {
    let size = batch.headers.len() as libc::c_uint;
    loop {
        batch.reset_for_recv();
        // SAFETY: headers point into buffers/iovecs/addresses owned by
        // `batch`, all sized `size` and alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                batch.headers.as_mut_ptr(),
                size,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(()),
                // An ICMP error queued on the socket: reported once, go on.
                ErrorKind::ConnectionRefused => continue,
                _ => Err(e),
            };
        }
        let n = n as usize;
        counters.received += n as u64;
        for i in 0..n {
            batch.iovecs[i].iov_len = batch.headers[i].msg_len as usize;
        }
        let mut offset = 0usize;
        while offset < n {
            // SAFETY: as above; `offset < n <= size`.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    batch.headers.as_mut_ptr().add(offset),
                    (n - offset) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent <= 0 {
                // Full send buffer or a refused peer: drop this datagram.
                counters.dropped += 1;
                offset += 1;
            } else {
                counters.echoed += sent as u64;
                offset += sent as usize;
            }
        }
        if n < size as usize {
            return Ok(());
        }
    }
}

/// Runs the echo backend until killed or `--duration` elapses.
#[allow(clippy::disallowed_methods)] // I/O shell: bounded by a deadline
pub(crate) fn run(args: &EchoArgs) -> anyhow::Result<()> {
    if !args.bind.is_loopback() {
        bail!("--bind {} is not a loopback address", args.bind);
    }
    if args.batch == 0 || args.batch > 1024 {
        bail!("--batch {} must be within 1..=1024", args.batch);
    }
    let ports: Vec<u16> = if args.ports.is_empty() {
        vec![0; args.sockets.max(1)]
    } else {
        args.ports.clone()
    };
    let poll = Poll::new()?;
    let mut sockets = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let addr = SocketAddr::new(args.bind, *port);
        let std_socket =
            std::net::UdpSocket::bind(addr).with_context(|| format!("binding echo on {addr}"))?;
        std_socket.set_nonblocking(true)?;
        set_buffer(
            std_socket.as_raw_fd(),
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
        );
        set_buffer(
            std_socket.as_raw_fd(),
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
        );
        let mut socket = UdpSocket::from_std(std_socket);
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        sockets.push(socket);
    }
    let addresses: Vec<String> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.to_string()))
        .collect::<io::Result<_>>()?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening {}", addresses.join(","))?;
        out.flush()?;
    }
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut batch = Batch::new(args.batch);
    let mut counters = EchoCounters::default();
    let mut events = Events::with_capacity(64);
    let mut poll = poll;
    loop {
        let wait = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break;
                }
                Some((d - now).min(Duration::from_millis(100)))
            }
            None => None,
        };
        match poll.poll(&mut events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
        for event in events.iter() {
            let fd = sockets[event.token().0].as_raw_fd();
            echo_socket(fd, &mut batch, &mut counters).context("echoing")?;
        }
    }
    eprintln!(
        "echo: received {} echoed {} dropped {}",
        counters.received, counters.echoed, counters.dropped
    );
    Ok(())
}
