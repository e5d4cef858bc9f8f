//! Batched datagram I/O on raw fds: `recvmmsg` into preallocated buffers with
//! the packet-info control message, `sendmmsg` of queued returns with their
//! source address, and single `sendmsg`s.
//!
//! Owns its buffers and reuses them on every call: receiving or sending a
//! datagram never allocates. The headers (`mmsghdr`, `iovec`, control
//! buffers) live on the stack of each call so no raw pointer outlives it. It
//! never interprets payloads nor decides anything about flows.

use std::io::{self, IoSlice};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Most datagrams moved by one `recvmmsg` / `sendmmsg`.
pub(crate) const MAX_BATCH: usize = 32;

/// Room for one `IP_PKTINFO` or `IPV6_PKTINFO` control message.
const CONTROL_LEN: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct ControlBuf([u8; CONTROL_LEN]);

impl ControlBuf {
    const ZERO: ControlBuf = ControlBuf([0; CONTROL_LEN]);
}

/// One received datagram, borrowed from the batch.
#[derive(Clone, Copy)]
pub struct Received<'a> {
    /// The sender.
    pub src: SocketAddr,
    /// The address it was sent to, when packet info is enabled.
    pub local: Option<IpAddr>,
    /// The bytes (at most the buffer length; a longer datagram was truncated
    /// by the kernel and shows as `buffer_len` bytes).
    pub payload: &'a [u8],
}

impl std::fmt::Debug for Received<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("src", &self.src)
            .field("local", &self.local)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Preallocated buffers for `recvmmsg`.
#[derive(Debug)]
pub struct RecvBatch {
    buffer_len: usize,
    buffers: Vec<u8>,
    sources: Vec<Option<SocketAddr>>,
    locals: Vec<Option<IpAddr>>,
    lens: Vec<usize>,
    received: usize,
}

impl RecvBatch {
    /// A batch of [`MAX_BATCH`] buffers of `buffer_len` bytes each.
    pub fn new(buffer_len: usize) -> Self {
        let buffer_len = buffer_len.max(1);
        RecvBatch {
            buffer_len,
            buffers: vec![0; buffer_len * MAX_BATCH],
            sources: vec![None; MAX_BATCH],
            locals: vec![None; MAX_BATCH],
            lens: vec![0; MAX_BATCH],
            received: 0,
        }
    }

    /// The length of each buffer.
    pub fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// Grows the buffers to at least `len` bytes each (a listener with a
    /// larger `max_rx_datagram_size` arrived); never shrinks.
    pub fn ensure_buffer_len(&mut self, len: usize) {
        if len > self.buffer_len {
            *self = RecvBatch::new(len);
        }
    }

    /// Receives up to `max` datagrams (at most [`MAX_BATCH`]) from `fd`
    /// without blocking. `Ok(0)` is never returned for a non-empty wait:
    /// `WouldBlock` is an error, as from the socket.
    pub fn recv(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let count = max.clamp(1, MAX_BATCH);
        // SAFETY: zeroed sockaddr_storage / mmsghdr / iovec are valid values.
        let mut addrs: [libc::sockaddr_storage; MAX_BATCH] = unsafe { mem::zeroed() };
        let mut controls = [ControlBuf::ZERO; MAX_BATCH];
        // SAFETY: a plain C struct of integers and pointers, for which all
        // zero bytes is a valid (empty) value.
        let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
        // SAFETY: a plain C struct of integers and pointers, for which all
        // zero bytes is a valid (empty) value.
        let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        let base = self.buffers.as_mut_ptr();
        for i in 0..count {
            // SAFETY: slot i lies within `buffers` (MAX_BATCH slots).
            iovecs[i].iov_base = unsafe { base.add(i * self.buffer_len) }.cast();
            iovecs[i].iov_len = self.buffer_len;
            let hdr = &mut headers[i].msg_hdr;
            hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = controls[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = CONTROL_LEN as _;
        }
        // SAFETY: every header points into live stack arrays or `buffers`.
        let received = retry_interrupted(|| unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            ) as isize
        });
        let n = match received {
            Ok(n) => n,
            Err(error) => {
                self.received = 0;
                return Err(error);
            }
        };
        for i in 0..n {
            self.sources[i] = sockaddr_to_std(&addrs[i]);
            self.lens[i] = (headers[i].msg_len as usize).min(self.buffer_len);
            self.locals[i] = parse_packet_info(&headers[i].msg_hdr);
        }
        self.received = n;
        Ok(n)
    }

    /// The `i`th datagram of the last `recv` (`None` past the count, or if
    /// its source address was not IPv4 / IPv6).
    pub fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.received {
            return None;
        }
        let src = self.sources[i]?;
        let start = i * self.buffer_len;
        Some(Received {
            src,
            local: self.locals[i],
            payload: &self.buffers[start..start + self.lens[i]],
        })
    }
}

impl RecvBatch {
    /// The bytes of the `i`th datagram of the last `recv`, writable (a
    /// `DNS_ID` query's ID is rewritten in place before it is sent).
    pub fn payload_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if i >= self.received {
            return None;
        }
        let start = i * self.buffer_len;
        Some(&mut self.buffers[start..start + self.lens[i]])
    }
}

/// Client-bound datagrams waiting to leave through one listener socket with
/// one `sendmmsg`: receive a backend datagram straight into
/// [`SendBatch::slot`], then [`SendBatch::commit`] it.
#[derive(Debug)]
pub(crate) struct SendBatch {
    buffer_len: usize,
    buffers: Vec<u8>,
    lens: Vec<usize>,
    dsts: Vec<Option<(SocketAddr, Option<IpAddr>)>>,
    len: usize,
    /// First slot of the datagrams of the last [`Self::recv_pending`].
    pending_base: usize,
    /// How many datagrams the last [`Self::recv_pending`] received.
    pending: usize,
}

impl SendBatch {
    /// [`MAX_BATCH`] slots of `buffer_len` bytes each.
    pub(crate) fn new(buffer_len: usize) -> Self {
        let buffer_len = buffer_len.max(1);
        SendBatch {
            buffer_len,
            buffers: vec![0; buffer_len * MAX_BATCH],
            lens: vec![0; MAX_BATCH],
            dsts: vec![None; MAX_BATCH],
            len: 0,
            pending_base: 0,
            pending: 0,
        }
    }

    /// The length of each slot.
    pub(crate) fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// Committed datagrams not sent yet.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is committed.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no slot is free: send before receiving more.
    pub(crate) fn is_full(&self) -> bool {
        self.len == MAX_BATCH
    }

    #[cfg(test)]
    /// The next free slot (`None` when full).
    pub(crate) fn slot(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let start = self.len * self.buffer_len;
        Some(&mut self.buffers[start..start + self.buffer_len])
    }

    #[cfg(test)]
    /// Commits the first `len` bytes of the slot returned by
    /// [`Self::slot`] for `dst`, from `local` (packet info) if given.
    pub(crate) fn commit(&mut self, len: usize, dst: SocketAddr, local: Option<IpAddr>) {
        if self.is_full() {
            return;
        }
        self.lens[self.len] = len.min(self.buffer_len);
        self.dsts[self.len] = Some((dst, local));
        self.len += 1;
    }

    /// The committed datagram `i`: its bytes, destination and source.
    pub(crate) fn committed(&self, i: usize) -> Option<(&[u8], SocketAddr, Option<IpAddr>)> {
        if i >= self.len {
            return None;
        }
        let (dst, local) = self.dsts[i]?;
        let start = i * self.buffer_len;
        Some((&self.buffers[start..start + self.lens[i]], dst, local))
    }

    /// Free slots.
    pub(crate) fn free(&self) -> usize {
        MAX_BATCH - self.len
    }

    /// Receives up to `max` datagrams (at most the free slots) from the
    /// connected socket `fd` straight into the free slots with one
    /// `recvmmsg`, without blocking. They are pending until
    /// [`Self::commit_pending`]: see [`Self::pending`]. A datagram longer than
    /// a slot shows as a full slot (so the caller sees it is too long).
    ///
    /// Fewer than asked means the socket was drained (or an error follows,
    /// reported by the next call); nothing waiting is `WouldBlock`.
    pub(crate) fn recv_pending(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        self.pending = 0;
        self.pending_base = self.len;
        let count = max.min(self.free());
        if count == 0 {
            return Ok(0);
        }
        // SAFETY: zeroed mmsghdr / iovec are valid values.
        let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
        // SAFETY: a plain C struct of integers and pointers, for which all
        // zero bytes is a valid (empty) value.
        let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        let base = self.buffers.as_mut_ptr();
        for i in 0..count {
            // SAFETY: slot `len + i` < MAX_BATCH lies within `buffers`.
            iovecs[i].iov_base = unsafe { base.add((self.len + i) * self.buffer_len) }.cast();
            iovecs[i].iov_len = self.buffer_len;
            headers[i].msg_hdr.msg_iov = &mut iovecs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points into live stack arrays or `buffers`.
        let n = retry_interrupted(|| unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            ) as isize
        })?;
        for (i, header) in headers.iter().enumerate().take(n) {
            // With MSG_TRUNC `msg_len` is the datagram's real length.
            self.lens[self.len + i] = (header.msg_len as usize).min(self.buffer_len);
        }
        self.pending = n;
        Ok(n)
    }

    /// The `i`th datagram of the last [`Self::recv_pending`] (`None` past
    /// its count).
    pub(crate) fn pending(&self, i: usize) -> Option<&[u8]> {
        if i >= self.pending {
            return None;
        }
        let slot = self.pending_base + i;
        let start = slot * self.buffer_len;
        Some(&self.buffers[start..start + self.lens[slot]])
    }

    /// The `i`th datagram of the last [`Self::recv_pending`], writable (a
    /// `DNS_ID` answer gets its original ID back in place).
    pub(crate) fn pending_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if i >= self.pending {
            return None;
        }
        let slot = self.pending_base + i;
        let start = slot * self.buffer_len;
        Some(&mut self.buffers[start..start + self.lens[slot]])
    }

    /// Commits the `i`th pending datagram for `dst`, from `local` if given.
    /// Pending datagrams must be committed (or skipped) in order; a skipped
    /// one leaves no gap (the next committed one moves down).
    pub(crate) fn commit_pending(&mut self, i: usize, dst: SocketAddr, local: Option<IpAddr>) {
        if i >= self.pending {
            return;
        }
        let slot = self.pending_base + i;
        if slot < self.len {
            return; // committed already
        }
        let len = self.lens[slot];
        if slot != self.len {
            let from = slot * self.buffer_len;
            self.buffers
                .copy_within(from..from + len, self.len * self.buffer_len);
        }
        self.lens[self.len] = len;
        self.dsts[self.len] = Some((dst, local));
        self.len += 1;
    }

    /// Forgets every committed datagram.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.pending = 0;
        self.pending_base = 0;
    }

    /// Sends the committed datagrams from index `start` with `sendmmsg`
    /// and returns how many left; the caller decides what to do with the
    /// rest (see [`Self::committed`]) and then [`Self::clear`]s.
    /// `WouldBlock` before the first one is `Ok(0)`; an error means the
    /// datagram at `start` was refused.
    pub(crate) fn send_from(&mut self, fd: RawFd, start: usize) -> io::Result<usize> {
        if start >= self.len {
            return Ok(0);
        }
        let count = self.len - start;
        if count == 1 {
            // One reply (the usual turn at a moderate rate): `sendto` or
            // `sendmsg` costs the kernel less than a `sendmmsg` of one.
            if let Some((payload, dst, local)) = self.committed(start) {
                return match send_to_from(fd, &[IoSlice::new(payload)], dst, local) {
                    Ok(_) => Ok(1),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(error) => Err(error),
                };
            }
        }
        // SAFETY: zeroed sockaddr_storage / mmsghdr / iovec are valid values.
        let mut addrs: [libc::sockaddr_storage; MAX_BATCH] = unsafe { mem::zeroed() };
        let mut controls = [ControlBuf::ZERO; MAX_BATCH];
        // SAFETY: a plain C struct of integers and pointers, for which all
        // zero bytes is a valid (empty) value.
        let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
        // SAFETY: a plain C struct of integers and pointers, for which all
        // zero bytes is a valid (empty) value.
        let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        let base = self.buffers.as_mut_ptr();
        for i in 0..count {
            let slot = start + i;
            let Some((dst, local)) = self.dsts[slot] else {
                continue;
            };
            // SAFETY: the slot lies within `buffers`.
            iovecs[i].iov_base = unsafe { base.add(slot * self.buffer_len) }.cast();
            iovecs[i].iov_len = self.lens[slot];
            let namelen = std_to_sockaddr(dst, &mut addrs[i]);
            let hdr = &mut headers[i].msg_hdr;
            hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = namelen;
            hdr.msg_iov = &mut iovecs[i];
            hdr.msg_iovlen = 1;
            set_source_control(hdr, &mut controls[i], dst, local);
        }
        // SAFETY: every header points into live stack arrays or `buffers`.
        let sent = retry_interrupted(|| unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            ) as isize
        });
        match sent {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }
}

/// Runs a system call again while a signal interrupts it (`EINTR`): its
/// non-negative result, else the error it set.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let rc = call();
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Sends one datagram made of `parts` to `dst` on an unconnected socket,
/// from `local` when given (packet info). One part without a source goes
/// with `sendto` (no message header to copy).
pub(crate) fn send_to_from(
    fd: RawFd,
    parts: &[IoSlice<'_>],
    dst: SocketAddr,
    local: Option<IpAddr>,
) -> io::Result<usize> {
    // SAFETY: zeroed sockaddr_storage / msghdr are valid values.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    if let ([only], None) = (parts, local) {
        let namelen = std_to_sockaddr(dst, &mut addr);
        // SAFETY: `only` is valid for its length and `addr` for `namelen`.
        return retry_interrupted(|| unsafe {
            libc::sendto(
                fd,
                only.as_ptr().cast(),
                only.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                (&addr as *const libc::sockaddr_storage).cast(),
                namelen,
            )
        });
    }
    let mut control = ControlBuf::ZERO;
    // SAFETY: a plain C struct of integers and pointers, for which all
    // zero bytes is a valid (empty) value.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_namelen = std_to_sockaddr(dst, &mut addr);
    hdr.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    // IoSlice is ABI-compatible with iovec on Unix.
    hdr.msg_iov = parts.as_ptr() as *mut libc::iovec;
    hdr.msg_iovlen = parts.len() as _;
    set_source_control(&mut hdr, &mut control, dst, local);
    // SAFETY: the header points at live locals and `parts`.
    retry_interrupted(|| unsafe {
        libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    })
}

/// Sends one datagram made of `parts` on a connected socket. One part goes
/// with `send`, which skips the message-header copy `sendmsg` makes; on an
/// established round-trip flow that is every datagram.
pub(crate) fn send_connected(fd: RawFd, parts: &[IoSlice<'_>]) -> io::Result<usize> {
    if let [only] = parts {
        return send_one(fd, only);
    }
    // SAFETY: a zeroed msghdr is valid.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = parts.as_ptr() as *mut libc::iovec;
    hdr.msg_iovlen = parts.len() as _;
    // SAFETY: the header points at `parts`, alive for the call.
    retry_interrupted(|| unsafe {
        libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    })
}

/// `send` of one buffer on a connected socket, retried on `EINTR`.
fn send_one(fd: RawFd, payload: &[u8]) -> io::Result<usize> {
    // SAFETY: `payload` is valid for `payload.len()` bytes.
    retry_interrupted(|| unsafe {
        libc::send(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// Sends up to `count` datagrams (at most [`MAX_BATCH`]) on a connected
/// socket with one `sendmmsg`; datagram `i` is `part(i)`: an optional header
/// and a payload, sent as two iovecs of one datagram (no copy). Returns how
/// many left; an error means the first one was refused.
///
/// A batch of one (a round-trip flow's usual turn) goes with `send` or
/// `sendmsg` instead: `sendmmsg` would copy and fill a header array for it.
pub(crate) fn send_connected_batch<'a>(
    fd: RawFd,
    count: usize,
    part: impl Fn(usize) -> (Option<&'a [u8]>, &'a [u8]),
) -> io::Result<usize> {
    let count = count.min(MAX_BATCH);
    if count == 0 {
        return Ok(0);
    }
    if count == 1 {
        let sent = match part(0) {
            (None, payload) => send_one(fd, payload),
            (Some(header), payload) => {
                send_connected(fd, &[IoSlice::new(header), IoSlice::new(payload)])
            }
        };
        return sent.map(|_| 1);
    }
    // SAFETY: zeroed mmsghdr / iovec are valid values.
    let mut iovecs: [libc::iovec; 2 * MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: a plain C struct of integers and pointers, for which all
    // zero bytes is a valid (empty) value.
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    let slots = iovecs.chunks_exact_mut(2).zip(headers.iter_mut());
    for (i, (pair, mmsg)) in slots.enumerate().take(count) {
        let (header, payload) = part(i);
        let mut used = 0;
        if let Some(h) = header {
            pair[0] = libc::iovec {
                iov_base: h.as_ptr() as *mut libc::c_void,
                iov_len: h.len(),
            };
            used = 1;
        }
        pair[used] = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        mmsg.msg_hdr.msg_iov = pair.as_mut_ptr();
        mmsg.msg_hdr.msg_iovlen = used + 1;
    }
    // SAFETY: every header points at the stack iovecs, which point at
    // slices alive for `'a` (the kernel only reads them).
    retry_interrupted(|| unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        ) as isize
    })
}

/// Receives one datagram on a connected socket into `buf`; returns its full
/// length (may exceed `buf.len()`: `MSG_TRUNC` reports the real size, so a
/// datagram over the limit is noticed).
pub(crate) fn recv_connected(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    retry_interrupted(|| unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    })
}

/// Attaches an `IP_PKTINFO` / `IPV6_PKTINFO` control message choosing the
/// source address, when `local` is given and matches `dst`'s family.
fn set_source_control(
    hdr: &mut libc::msghdr,
    control: &mut ControlBuf,
    dst: SocketAddr,
    local: Option<IpAddr>,
) {
    let (level, kind, data_len) = match (dst, local) {
        (SocketAddr::V4(_), Some(IpAddr::V4(_))) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            mem::size_of::<libc::in_pktinfo>(),
        ),
        (SocketAddr::V6(_), Some(IpAddr::V6(_))) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            mem::size_of::<libc::in6_pktinfo>(),
        ),
        _ => return,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    if space > CONTROL_LEN {
        return;
    }
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = space as _;
    // SAFETY: the control buffer is aligned, zeroed and large enough for one
    // message of `data_len` bytes (checked above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(hdr);
        if cmsg.is_null() {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            return;
        }
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        let data = libc::CMSG_DATA(cmsg);
        match local {
            Some(IpAddr::V4(ip)) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(data.cast::<libc::in_pktinfo>(), info);
            }
            Some(IpAddr::V6(ip)) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(data.cast::<libc::in6_pktinfo>(), info);
            }
            None => {}
        }
    }
}

/// The destination address from a received `IP_PKTINFO` / `IPV6_PKTINFO`.
fn parse_packet_info(hdr: &libc::msghdr) -> Option<IpAddr> {
    if hdr.msg_control.is_null() || hdr.msg_controllen == 0 {
        return None;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of
    // well-formed control messages; the CMSG macros stay within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let level = (*cmsg).cmsg_level;
            let kind = (*cmsg).cmsg_type;
            let data = libc::CMSG_DATA(cmsg);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                return Some(IpAddr::V4(Ipv4Addr::from(
                    info.ipi_addr.s_addr.to_ne_bytes(),
                )));
            }
            if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// A backend socket (reads time out after 5 s) and an upstream socket
    /// connected to it, as a flow has.
    fn backend_and_connected_upstream() -> (UdpSocket, UdpSocket) {
        let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
        backend
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        upstream.connect(backend.local_addr().unwrap()).unwrap();
        (backend, upstream)
    }

    fn wait_recv(batch: &mut RecvBatch, fd: RawFd) -> usize {
        for _ in 0..1000 {
            match batch.recv(fd, MAX_BATCH) {
                Ok(n) => return n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        panic!("nothing received");
    }

    #[test]
    fn recvmmsg_reads_several_datagrams_with_their_sources_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0u8..5 {
            tx.send_to(&[i; 3], rx.local_addr().unwrap()).unwrap();
        }
        let mut batch = RecvBatch::new(16);
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let n = wait_recv(&mut batch, rx.as_raw_fd());
            for i in 0..n {
                let d = batch.get(i).unwrap();
                assert_eq!(d.src, tx.local_addr().unwrap());
                seen.push(d.payload.to_vec());
            }
        }
        let expected: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i; 3]).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn recv_pending_reads_a_connected_burst_in_one_call_and_skipped_datagrams_leave_no_gap() {
        let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        upstream.connect(backend.local_addr().unwrap()).unwrap();
        upstream.set_nonblocking(true).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = client.local_addr().unwrap();
        for i in 0u8..4 {
            backend
                .send_to(&[i; 5], upstream.local_addr().unwrap())
                .unwrap();
        }
        // A datagram longer than a slot shows as a full slot.
        backend
            .send_to(&[9; 40], upstream.local_addr().unwrap())
            .unwrap();
        let mut batch = SendBatch::new(16);
        let mut received = 0;
        for _ in 0..1000 {
            match batch.recv_pending(upstream.as_raw_fd(), 8) {
                Ok(n) => {
                    for i in 0..n {
                        let payload = batch.pending(i).unwrap().to_vec();
                        // Skip datagram 1: the next ones move down.
                        if payload != [1; 5] {
                            batch.commit_pending(i, dst, None);
                        }
                        if payload.len() == 16 {
                            assert_eq!(payload, vec![9; 16]);
                        }
                    }
                    received += n;
                    if received == 5 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        assert_eq!(received, 5);
        assert_eq!(batch.len(), 4);
        let kept: Vec<Vec<u8>> = (0..4)
            .map(|i| batch.committed(i).unwrap().0.to_vec())
            .collect();
        assert_eq!(kept, vec![vec![0; 5], vec![2; 5], vec![3; 5], vec![9; 16]]);
        assert!(batch.recv_pending(upstream.as_raw_fd(), 8).is_err());
    }

    #[test]
    fn send_connected_batch_sends_header_and_payload_as_one_datagram_each_in_order() {
        let (backend, upstream) = backend_and_connected_upstream();
        let payloads: Vec<Vec<u8>> = (0u8..3).map(|i| vec![i; 4]).collect();
        let header = b"HDR".to_vec();
        let sent = send_connected_batch(upstream.as_raw_fd(), 3, |i| {
            ((i != 1).then_some(&header[..]), &payloads[i][..])
        })
        .unwrap();
        assert_eq!(sent, 3);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = backend.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        assert_eq!(
            got,
            vec![
                b"HDR\0\0\0\0".to_vec(),
                vec![1; 4],
                b"HDR\x02\x02\x02\x02".to_vec()
            ]
        );
    }

    #[test]
    fn a_batch_of_one_is_one_whole_datagram_with_or_without_a_header() {
        let (backend, upstream) = backend_and_connected_upstream();
        let fd = upstream.as_raw_fd();
        assert_eq!(
            send_connected_batch(fd, 1, |_| (None, &b"plain"[..])).unwrap(),
            1
        );
        let header = b"HDR".to_vec();
        let sent = send_connected_batch(fd, 1, |_| (Some(&header[..]), &b"body"[..])).unwrap();
        assert_eq!(sent, 1);
        let mut buf = [0u8; 64];
        let n = backend.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"plain");
        let n = backend.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"HDRbody");
        // A refusal (ICMP port unreachable once the backend is gone) is
        // reported as an error, not as a datagram sent.
        let gone = backend.local_addr().unwrap();
        drop(backend);
        let lonely = UdpSocket::bind("127.0.0.1:0").unwrap();
        lonely.connect(gone).unwrap();
        let mut refused = false;
        for _ in 0..100 {
            if let Err(e) = send_connected_batch(lonely.as_raw_fd(), 1, |_| (None, &b"x"[..])) {
                assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
                refused = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            refused,
            "a send to a closed port never reported ECONNREFUSED"
        );
    }

    #[test]
    fn one_committed_reply_reaches_its_destination_with_the_listeners_address() {
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut batch = SendBatch::new(16);
        let slot = batch.slot().unwrap();
        slot[..5].copy_from_slice(b"reply");
        batch.commit(5, client.local_addr().unwrap(), None);
        assert_eq!(batch.send_from(listener.as_raw_fd(), 0).unwrap(), 1);
        let mut buf = [0u8; 64];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"reply");
        assert_eq!(from, listener.local_addr().unwrap());
    }

    #[test]
    fn oversized_datagram_fills_the_buffer_so_the_caller_sees_it_is_too_long() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7; 100], rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new(11);
        assert_eq!(wait_recv(&mut batch, rx.as_raw_fd()), 1);
        assert_eq!(batch.get(0).unwrap().payload.len(), 11);
    }

    #[test]
    fn packet_info_reports_the_destination_on_a_wildcard_socket_and_replies_leave_from_it() {
        let listener =
            crate::udp::socket::bind_listener("0.0.0.0:0".parse().unwrap(), Default::default())
                .unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        // 127.0.0.2 is loopback too: the reply must come from it.
        client.send_to(b"ping", ("127.0.0.2", port)).unwrap();
        let mut batch = RecvBatch::new(64);
        assert_eq!(wait_recv(&mut batch, listener.as_raw_fd()), 1);
        let d = batch.get(0).unwrap();
        assert_eq!(d.local, Some("127.0.0.2".parse().unwrap()));
        let (src, local) = (d.src, d.local);
        let mut out = SendBatch::new(64);
        out.slot().unwrap()[..4].copy_from_slice(b"pong");
        out.commit(4, src, local);
        assert_eq!(out.send_from(listener.as_raw_fd(), 0).unwrap(), 1);
        let mut buf = [0u8; 16];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 2], port)));
    }
}
