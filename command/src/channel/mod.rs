//! The framed channel the command socket and the master ↔ worker link speak:
//! an 8-byte little-endian length that counts itself, then a protobuf message
//! (`doc/protocol.md`).
//!
//! Owns one Unix stream socket and its two bounded buffers. It serves a
//! blocking caller (the CLI: [`Channel::write_message`],
//! [`Channel::read_message`], [`Channel::read_message_timeout`]) and a mio
//! event loop (master, worker: [`Channel::try_read_message`],
//! [`Channel::queue_message`], [`Channel::flush`], [`Channel::interest`]).
//! Every socket call uses `MSG_DONTWAIT`, so the non-blocking operations never
//! block whatever the socket's `O_NONBLOCK` flag, and the blocking ones wait
//! with `poll(2)`; writes use `MSG_NOSIGNAL`, so a closed peer is an error,
//! never a `SIGPIPE`.
//!
//! It must never panic on peer bytes nor let a peer grow a buffer beyond
//! `max_buffer_size`; the sans-io framing lives in [`frame`].

mod frame;
#[cfg(test)]
mod tests;

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd, RawFd},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{recv, send, MsgFlags},
};
use prost::Message;

use frame::{FrameReader, FrameWriter};
pub use frame::{FRAME_HEADER_LEN, MIN_MAX_BUFFER_SIZE};

/// Why a channel operation failed.
///
/// Read side: [`ChannelError::Decode`] is recoverable (the bad frame was
/// skipped, the next read returns the next frame). [`ChannelError::FrameTooLarge`],
/// [`ChannelError::FrameTooShort`], [`ChannelError::PeerClosed`] and
/// [`ChannelError::PeerClosedMidFrame`] make the channel unusable for reading:
/// every later read returns the same error, and the caller should close it
/// (the write side still works, e.g. to answer an error before closing).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer declared a frame longer than this channel's maximum; refused
    /// before allocating anything.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The frame's length, bytes.
        len: u64,
        /// The maximum, bytes.
        max: usize,
    },
    /// The peer declared a frame shorter than its own 8-byte length prefix.
    #[error("frame length {len} is below the 8-byte header")]
    FrameTooShort {
        /// The frame's length, bytes.
        len: u64,
    },
    /// A well-framed message did not decode; the frame was skipped.
    #[error("undecodable frame of {len} bytes")]
    Decode {
        /// The frame's length, bytes.
        len: usize,
        /// The cause.
        #[source]
        source: prost::DecodeError,
    },
    /// The peer closed the connection between frames.
    #[error("peer closed the channel")]
    PeerClosed,
    /// The peer closed the connection with a frame partially sent.
    #[error("peer closed the channel in the middle of a frame ({buffered} bytes received)")]
    PeerClosedMidFrame {
        /// Bytes of the frame received.
        buffered: usize,
    },
    /// A message to send encodes to a frame longer than the maximum.
    #[error("outgoing frame of {len} bytes exceeds the maximum of {max} bytes")]
    OutgoingFrameTooLarge {
        /// The frame's length, bytes.
        len: usize,
        /// The maximum, bytes.
        max: usize,
    },
    /// The outgoing queue would exceed the maximum: the peer is not reading.
    #[error("outgoing buffer full: {queued} bytes queued, {frame} more refused (max {max})")]
    OutgoingBufferFull {
        /// Bytes already queued.
        queued: usize,
        /// Bytes of the refused frame.
        frame: usize,
        /// The maximum, bytes.
        max: usize,
    },
    /// prost refused to encode the message.
    #[error("could not encode the message")]
    Encode {
        /// The cause.
        #[source]
        source: prost::EncodeError,
    },
    /// No complete message arrived in time (buffered bytes are kept).
    #[error("no message within {after:?}")]
    Timeout {
        /// How long it waited.
        after: Duration,
    },
    /// The socket failed.
    #[error("channel socket error during {operation}")]
    Io {
        /// The call that failed.
        operation: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ChannelError {
    fn io(operation: &'static str, errno: Errno) -> Self {
        ChannelError::Io {
            operation,
            source: io::Error::from(errno),
        }
    }
}

/// Outcome of [`Channel::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStatus {
    /// Every queued byte was written.
    Done,
    /// The socket is full; wait for WRITABLE and flush again.
    Pending,
}

/// Outcome of one receive attempt.
enum Fill {
    Received,
    WouldBlock,
}

/// Both ends of a socket pair: the first sends `A` and receives `B`, the
/// second the reverse.
pub type ChannelPair<A, B> = (Channel<A, B>, Channel<B, A>);

/// A framed, typed, bidirectional channel over a Unix stream socket: sends
/// `Tx` messages and receives `Rx` messages.
#[derive(Debug)]
pub struct Channel<Tx, Rx> {
    socket: mio::net::UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
    blocking: bool,
    _messages: PhantomData<fn(Tx) -> Rx>,
}

impl<Tx: Message, Rx: Message + Default> Channel<Tx, Rx> {
    /// Wraps a connected stream. `buffer_size` is the initial size of each
    /// buffer; `max_buffer_size` bounds both the largest frame accepted or
    /// sent and the outgoing queue (raised to [`MIN_MAX_BUFFER_SIZE`] if
    /// lower). The socket's blocking flag is left as it is.
    pub fn new(
        stream: std::os::unix::net::UnixStream,
        buffer_size: usize,
        max_buffer_size: usize,
    ) -> Self {
        let blocking = !is_nonblocking(stream.as_fd());
        Channel {
            socket: mio::net::UnixStream::from_std(stream),
            reader: FrameReader::new(buffer_size, max_buffer_size),
            writer: FrameWriter::new(buffer_size, max_buffer_size),
            blocking,
            _messages: PhantomData,
        }
    }

    /// Lets this side send frames up to `max` bytes (never lowers the
    /// maximum) while frames received stay bounded by the maximum given at
    /// creation: the master answers listings larger than what it accepts
    /// from a client.
    pub fn raise_outgoing_max(&mut self, max: usize) {
        self.writer.raise_max(max);
    }

    /// Refuses, as [`Self::queue_message`] would, a message too large for
    /// any frame this side sends, whatever is queued; queues nothing.
    pub fn check_frame_size(&self, message: &Tx) -> Result<(), ChannelError> {
        self.writer.frame_len(message).map(|_| ())
    }

    /// Wraps a stream accepted by a `mio::net::UnixListener`; same as
    /// [`Self::new`].
    pub fn from_mio(
        stream: mio::net::UnixStream,
        buffer_size: usize,
        max_buffer_size: usize,
    ) -> Self {
        Self::new(
            std::os::unix::net::UnixStream::from(stream),
            buffer_size,
            max_buffer_size,
        )
    }

    /// A connected pair of channels (`socketpair(2)`), e.g. master ↔ worker:
    /// the first sends `Tx` and receives `Rx`, the second the reverse.
    pub fn pair(
        buffer_size: usize,
        max_buffer_size: usize,
    ) -> Result<ChannelPair<Tx, Rx>, ChannelError>
    where
        Tx: Default,
    {
        let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|source| ChannelError::Io {
            operation: "socketpair",
            source,
        })?;
        Ok((
            Channel::new(a, buffer_size, max_buffer_size),
            Channel::new(b, buffer_size, max_buffer_size),
        ))
    }

    /// Sets or clears `O_NONBLOCK` on the socket. The channel's own calls do
    /// not depend on it (they pass `MSG_DONTWAIT`); it matters for a socket
    /// handed to another process or read by other code.
    pub fn set_blocking(&mut self, blocking: bool) -> Result<(), ChannelError> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let fd = self.socket.as_fd();
        let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| ChannelError::io("fcntl", e))?;
        let mut flags = OFlag::from_bits_truncate(flags);
        flags.set(OFlag::O_NONBLOCK, !blocking);
        fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| ChannelError::io("fcntl", e))?;
        self.blocking = blocking;
        Ok(())
    }

    /// Whether the socket is in blocking mode (`O_NONBLOCK` clear), as found
    /// at construction or set by [`Self::set_blocking`].
    pub fn is_blocking(&self) -> bool {
        self.blocking
    }

    /// The socket, to register with a mio `Registry`.
    pub fn source_mut(&mut self) -> &mut mio::net::UnixStream {
        &mut self.socket
    }

    /// Readiness the event loop should wait for: READABLE always, plus
    /// WRITABLE while queued bytes remain.
    pub fn interest(&self) -> mio::Interest {
        if self.wants_write() {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        }
    }

    /// True while queued bytes wait for [`Self::flush`].
    pub fn wants_write(&self) -> bool {
        self.writer.pending() > 0
    }

    /// Bytes queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.writer.pending()
    }

    /// Bytes received and not yet returned as a message.
    pub fn buffered_bytes(&self) -> usize {
        self.reader.buffered()
    }

    /// Appends `message` to the outgoing queue without writing. Refused
    /// (queue unchanged) if the frame or the queue would exceed the maximum.
    pub fn queue_message(&mut self, message: &Tx) -> Result<(), ChannelError> {
        self.writer.queue(message)
    }

    /// Writes queued bytes until the queue is empty or the socket is full.
    pub fn flush(&mut self) -> Result<FlushStatus, ChannelError> {
        let fd = self.socket.as_raw_fd();
        while self.writer.pending() > 0 {
            match send(
                fd,
                self.writer.unsent(),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => self.writer.advance(n),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(FlushStatus::Pending),
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(ChannelError::PeerClosed),
                Err(errno) => return Err(ChannelError::io("send", errno)),
            }
        }
        Ok(FlushStatus::Done)
    }

    /// Queues `message` and waits until every queued byte is written.
    pub fn write_message(&mut self, message: &Tx) -> Result<(), ChannelError> {
        self.queue_message(message)?;
        while self.flush()? == FlushStatus::Pending {
            self.wait_for(PollFlags::POLLOUT, None)?;
        }
        Ok(())
    }

    /// Like [`Self::write_message`], giving up after `timeout` with
    /// [`ChannelError::Timeout`] (unsent bytes stay queued).
    pub fn write_message_timeout(
        &mut self,
        message: &Tx,
        timeout: Duration,
    ) -> Result<(), ChannelError> {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        self.queue_message(message)?;
        while self.flush()? == FlushStatus::Pending {
            self.wait_for(PollFlags::POLLOUT, Some((now + timeout, timeout)))?;
        }
        Ok(())
    }

    /// Non-blocking read for an event loop: returns a buffered message if
    /// one is complete, otherwise receives until a message completes
    /// (`Ok(Some)`) or the socket has nothing more (`Ok(None)`). With
    /// edge-triggered readiness, call it until it returns `Ok(None)` (a
    /// [`ChannelError::Decode`] in between is recoverable: keep calling).
    pub fn try_read_message(&mut self) -> Result<Option<Rx>, ChannelError> {
        loop {
            if let Some(message) = self.reader.next_frame()? {
                return Ok(Some(message));
            }
            match self.fill()? {
                Fill::Received => {}
                Fill::WouldBlock => return Ok(None),
            }
        }
    }

    /// Waits for the next message, however long it takes.
    pub fn read_message(&mut self) -> Result<Rx, ChannelError> {
        self.read_until(None)
    }

    /// Waits at most `timeout` for the next message; on
    /// [`ChannelError::Timeout`] any partial frame stays buffered.
    pub fn read_message_timeout(&mut self, timeout: Duration) -> Result<Rx, ChannelError> {
        // Reading the clock is this I/O shell's job: the deadline bounds the wait.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        self.read_until(Some((now + timeout, timeout)))
    }

    fn read_until(&mut self, deadline: Option<(Instant, Duration)>) -> Result<Rx, ChannelError> {
        loop {
            if let Some(message) = self.reader.next_frame()? {
                return Ok(message);
            }
            match self.fill()? {
                Fill::Received => {}
                Fill::WouldBlock => self.wait_for(PollFlags::POLLIN, deadline)?,
            }
        }
    }

    /// One `recv` into the reader's spare space.
    fn fill(&mut self) -> Result<Fill, ChannelError> {
        let fd = self.socket.as_raw_fd();
        loop {
            let spare = self.reader.spare()?;
            match recv(fd, spare, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Err(self.reader.end_of_stream()),
                Ok(n) => {
                    self.reader.commit(n);
                    return Ok(Fill::Received);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(Fill::WouldBlock),
                Err(Errno::ECONNRESET) => return Err(self.reader.end_of_stream()),
                Err(errno) => return Err(ChannelError::io("recv", errno)),
            }
        }
    }

    /// Sleeps in `poll(2)` until the socket is ready for `events` (or hung
    /// up / in error, which the next `recv`/`send` reports) or the deadline.
    fn wait_for(
        &self,
        events: PollFlags,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<(), ChannelError> {
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some((at, after)) => {
                    #[allow(clippy::disallowed_methods)]
                    let now = Instant::now();
                    let remaining = at.saturating_duration_since(now);
                    if remaining.is_zero() {
                        return Err(ChannelError::Timeout { after });
                    }
                    // Round up so a sub-millisecond remainder still waits,
                    // and cap at poll's i32 milliseconds (we loop anyway).
                    let millis = remaining.as_micros().div_ceil(1000).min(i32::MAX as u128);
                    PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.socket.as_fd(), events)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue, // deadline check at the top of the loop
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(ChannelError::io("poll", errno)),
            }
        }
    }
}

/// Whether `O_NONBLOCK` is set; a socket whose flags cannot be read is
/// treated as blocking.
fn is_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(fd, FcntlArg::F_GETFL)
        .map(|flags| OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK))
        .unwrap_or(false)
}

impl<Tx, Rx> AsRawFd for Channel<Tx, Rx> {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl<Tx, Rx> AsFd for Channel<Tx, Rx> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
