//! A fixed-capacity byte buffer for stream relays (TCP sessions, HTTP
//! heads and bodies).
//!
//! Owns bytes read from one socket and not yet written to the other. Its
//! capacity never grows: a full buffer is the relay's backpressure signal
//! (the reader stops reading that socket until the writer drains it). It
//! never touches a socket itself and never allocates after construction.

/// A bounded byte buffer: `data()` is what was filled and not consumed yet.
#[derive(Clone)]
pub(crate) struct Buffer {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Buffer {
    /// An empty buffer of `capacity` bytes (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Buffer {
            bytes: vec![0; capacity.max(1)].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes filled and not consumed.
    pub(crate) fn data(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Number of bytes filled and not consumed.
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Its fixed capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// True when no byte can be added.
    pub(crate) fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    /// The free space to read into, after moving the waiting bytes to the
    /// front when that makes room. Empty when the buffer is full.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        if self.start > 0 && self.end == self.bytes.len() {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.bytes[self.end..]
    }

    /// Marks `n` bytes of [`space`](Self::space) as filled.
    pub(crate) fn fill(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.bytes.len(), "fill beyond space");
        self.end = (self.end + n).min(self.bytes.len());
    }

    /// Drops the first `n` waiting bytes (written out or parsed).
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len(), "consume beyond data");
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    #[cfg(test)]
    /// Copies as much of `input` as fits; returns how much was copied.
    pub(crate) fn push(&mut self, input: &[u8]) -> usize {
        let space = self.space();
        let n = space.len().min(input.len());
        space[..n].copy_from_slice(&input[..n]);
        self.fill(n);
        n
    }

    /// Forgets every waiting byte.
    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_to_capacity_then_refuses() {
        let mut b = Buffer::new(4);
        assert_eq!(b.push(b"abcdef"), 4);
        assert!(b.is_full());
        assert_eq!(b.push(b"x"), 0);
        assert_eq!(b.data(), b"abcd");
    }

    #[test]
    fn consuming_makes_room_by_compacting() {
        let mut b = Buffer::new(4);
        b.push(b"abcd");
        b.consume(3);
        assert_eq!(b.data(), b"d");
        assert_eq!(b.space().len(), 3);
        assert_eq!(b.push(b"efg"), 3);
        assert_eq!(b.data(), b"defg");
    }

    #[test]
    fn consuming_everything_resets_to_the_front() {
        let mut b = Buffer::new(3);
        b.push(b"ab");
        b.consume(2);
        assert!(b.is_empty());
        assert_eq!(b.space().len(), 3);
    }
}
