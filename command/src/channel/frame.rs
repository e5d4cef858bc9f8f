//! Sans-io framing: the bounded buffers that turn a byte stream into frames
//! (8-byte little-endian length that counts itself, then a protobuf message)
//! and messages into queued frames.
//!
//! Owns the incoming and outgoing byte buffers and the size limits; it never
//! touches a socket (its twin, [`super::Channel`], does the I/O). Every size
//! check happens on the declared length before any allocation, so a peer can
//! never make either buffer grow beyond `max_buffer_size`.

use prost::Message;

use super::ChannelError;

/// Size of the length prefix that starts every frame (and counts itself).
pub const FRAME_HEADER_LEN: usize = 8;

/// Smallest maximum a channel accepts: a header and a few bytes of message.
pub const MIN_MAX_BUFFER_SIZE: usize = 64;

/// A read-side failure after which the byte stream cannot be trusted: the
/// reader keeps it and returns it again on every later read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FatalRead {
    TooLarge { len: u64, max: usize },
    TooShort { len: u64 },
    PeerClosed,
    PeerClosedMidFrame { buffered: usize },
}

impl FatalRead {
    pub(crate) fn to_error(self) -> ChannelError {
        match self {
            FatalRead::TooLarge { len, max } => ChannelError::FrameTooLarge { len, max },
            FatalRead::TooShort { len } => ChannelError::FrameTooShort { len },
            FatalRead::PeerClosed => ChannelError::PeerClosed,
            FatalRead::PeerClosedMidFrame { buffered } => {
                ChannelError::PeerClosedMidFrame { buffered }
            }
        }
    }
}

/// Incoming side: bytes received but not yet parsed into a message.
///
/// Holds at most one partial frame plus whatever complete frames arrived in
/// the same read; its allocation never exceeds `max_buffer_size`.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Allocated, zero-initialised storage; `buf.len()` is the capacity in use.
    buf: Vec<u8>,
    /// First unparsed byte.
    start: usize,
    /// One past the last received byte.
    end: usize,
    /// Size the buffer shrinks back to once empty.
    initial_size: usize,
    max_buffer_size: usize,
    fatal: Option<FatalRead>,
}

impl FrameReader {
    pub(crate) fn new(buffer_size: usize, max_buffer_size: usize) -> Self {
        let max_buffer_size = max_buffer_size.max(MIN_MAX_BUFFER_SIZE);
        let initial_size = buffer_size.clamp(FRAME_HEADER_LEN, max_buffer_size);
        FrameReader {
            buf: vec![0; initial_size],
            start: 0,
            end: 0,
            initial_size,
            max_buffer_size,
            fatal: None,
        }
    }

    /// Bytes received and not yet consumed by a returned frame.
    pub(crate) fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Parses the next complete frame, if one is buffered.
    ///
    /// A frame whose bytes do not decode is consumed (skipped) and reported as
    /// [`ChannelError::Decode`]: the stream stays in sync, the next call
    /// parses the following frame. A declared length below 8 or above the
    /// maximum leaves the stream unsynchronisable: the reader is poisoned.
    pub(crate) fn next_frame<Rx: Message + Default>(&mut self) -> Result<Option<Rx>, ChannelError> {
        if let Some(fatal) = self.fatal {
            return Err(fatal.to_error());
        }
        let Some(len) = self.declared_len()? else {
            return Ok(None);
        };
        if self.buffered() < len {
            return Ok(None);
        }
        let body = &self.buf[self.start + FRAME_HEADER_LEN..self.start + len];
        let decoded = Rx::decode(body);
        self.start += len;
        if self.start == self.end {
            self.reset_empty();
        }
        decoded
            .map(Some)
            .map_err(|source| ChannelError::Decode { len, source })
    }

    /// The validated length of the frame at the front, once its header is in.
    fn declared_len(&mut self) -> Result<Option<usize>, ChannelError> {
        if self.buffered() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&self.buf[self.start..self.start + FRAME_HEADER_LEN]);
        let len = u64::from_le_bytes(header);
        if len < FRAME_HEADER_LEN as u64 {
            return Err(self.poison(FatalRead::TooShort { len }));
        }
        if len > self.max_buffer_size as u64 {
            return Err(self.poison(FatalRead::TooLarge {
                len,
                max: self.max_buffer_size,
            }));
        }
        // len <= max_buffer_size, which is a usize: the cast is lossless.
        Ok(Some(len as usize))
    }

    pub(crate) fn poison(&mut self, fatal: FatalRead) -> ChannelError {
        self.fatal = Some(fatal);
        fatal.to_error()
    }

    /// Records the end of the stream: clean if nothing is buffered.
    pub(crate) fn end_of_stream(&mut self) -> ChannelError {
        let fatal = if self.buffered() == 0 {
            FatalRead::PeerClosed
        } else {
            FatalRead::PeerClosedMidFrame {
                buffered: self.buffered(),
            }
        };
        self.poison(fatal)
    }

    /// Free space to receive into, sized for the frame in progress.
    ///
    /// Call only when [`Self::next_frame`] returned `Ok(None)`: the buffer then
    /// holds less than one frame, so after compaction there is always room
    /// and the allocation stays within `max_buffer_size`.
    pub(crate) fn spare(&mut self) -> Result<&mut [u8], ChannelError> {
        if let Some(fatal) = self.fatal {
            return Err(fatal.to_error());
        }
        let needed = self.declared_len()?.unwrap_or(FRAME_HEADER_LEN);
        let target = needed.max(self.initial_size).min(self.max_buffer_size);
        if self.start + target > self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.start + target {
            self.buf.resize(self.start + target, 0);
        }
        debug_assert!(
            self.buf.len() <= self.max_buffer_size,
            "reader buffer over its maximum"
        );
        debug_assert!(
            self.end < self.buf.len(),
            "no room although no complete frame is buffered"
        );
        Ok(&mut self.buf[self.end..])
    }

    /// Marks `n` bytes of [`Self::spare`] as received.
    pub(crate) fn commit(&mut self, n: usize) {
        debug_assert!(
            self.end + n <= self.buf.len(),
            "committed more than the spare space"
        );
        self.end = (self.end + n).min(self.buf.len());
    }

    fn reset_empty(&mut self) {
        self.start = 0;
        self.end = 0;
        // A large frame grew the buffer; give the memory back once it is used.
        if self.buf.len() > self.initial_size {
            self.buf.truncate(self.initial_size);
            self.buf.shrink_to_fit();
        }
    }
}

/// Outgoing side: encoded frames waiting for the socket to accept them.
#[derive(Debug)]
pub(crate) struct FrameWriter {
    buf: Vec<u8>,
    /// First byte not yet written to the socket.
    start: usize,
    initial_size: usize,
    max_buffer_size: usize,
}

impl FrameWriter {
    pub(crate) fn new(buffer_size: usize, max_buffer_size: usize) -> Self {
        let max_buffer_size = max_buffer_size.max(MIN_MAX_BUFFER_SIZE);
        let initial_size = buffer_size.clamp(FRAME_HEADER_LEN, max_buffer_size);
        FrameWriter {
            buf: Vec::with_capacity(initial_size),
            start: 0,
            initial_size,
            max_buffer_size,
        }
    }

    /// Raises (never lowers) the largest frame and queue this writer sends.
    pub(crate) fn raise_max(&mut self, max_buffer_size: usize) {
        self.max_buffer_size = self.max_buffer_size.max(max_buffer_size);
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The length of `message`'s frame, or a refusal if no frame that
    /// large is ever sent, whatever is queued.
    pub(crate) fn frame_len<Tx: Message>(&self, message: &Tx) -> Result<usize, ChannelError> {
        let len = message.encoded_len() + FRAME_HEADER_LEN;
        if len > self.max_buffer_size {
            return Err(ChannelError::OutgoingFrameTooLarge {
                len,
                max: self.max_buffer_size,
            });
        }
        Ok(len)
    }

    /// Encodes `message` as one frame at the end of the queue, or refuses it
    /// (queue unchanged) if the frame or the queue would exceed the maximum.
    pub(crate) fn queue<Tx: Message>(&mut self, message: &Tx) -> Result<(), ChannelError> {
        let len = self.frame_len(message)?;
        if self.pending() + len > self.max_buffer_size {
            return Err(ChannelError::OutgoingBufferFull {
                queued: self.pending(),
                frame: len,
                max: self.max_buffer_size,
            });
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mark = self.buf.len();
        self.buf.extend_from_slice(&(len as u64).to_le_bytes());
        if let Err(source) = message.encode(&mut self.buf) {
            self.buf.truncate(mark);
            return Err(ChannelError::Encode { source });
        }
        debug_assert_eq!(
            self.buf.len() - mark,
            len,
            "encoded_len disagrees with encode"
        );
        Ok(())
    }

    /// The queued bytes, oldest first.
    pub(crate) fn unsent(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` queued bytes as written.
    pub(crate) fn advance(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > self.initial_size {
                self.buf.shrink_to(self.initial_size);
            }
        }
    }
}
