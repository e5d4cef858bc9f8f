//! HTTP/1.1 message body framing (RFC 9112 §6–7): how many of the bytes
//! following a head belong to its body, so bodies stream through bounded
//! buffers unchanged and the next message on the connection starts where
//! this one ends.
//!
//! Pure: no sockets, no clock, no allocation. Chunked bodies are passed
//! through as they are (sizes, extensions and trailers included); the
//! tracker only follows the chunk boundaries. Bad framing is an error, never
//! a panic, and a chunk-size line or trailer line has a bounded length.

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (GET without length, HEAD answers, 1xx / 204 / 304).
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// Why a body's framing is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A chunk size that is not hexadecimal or overflows.
    #[error("invalid chunk size")]
    ChunkSize,
    /// A chunk-size line, extension or trailer line over the limit.
    #[error("chunk metadata line too long")]
    LineTooLong,
    /// CR or LF missing where the grammar needs them.
    #[error("missing CRLF in chunked body")]
    MissingCrlf,
}

/// Longest chunk-size line (extensions included) or trailer line accepted.
pub const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a size.
    Size {
        value: u64,
        digits: u32,
    },
    /// After the size: extensions until CR.
    Extension {
        size: u64,
        len: usize,
    },
    /// CR seen after a size line.
    SizeLf {
        size: u64,
    },
    /// Data bytes left in the current chunk.
    Data(u64),
    /// Expecting the CR after a chunk's data.
    DataCr,
    /// Expecting the LF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer line.
    Trailer {
        len: usize,
    },
    /// CR seen at the end of a trailer line.
    TrailerLf,
    /// CR of the final empty line seen.
    FinalLf,
    Done,
}

/// Follows one body's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTracker {
    state: Tracker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracker {
    Remaining(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

impl BodyTracker {
    /// A tracker for a body of this kind.
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => Tracker::Done,
            BodyKind::Length(n) => Tracker::Remaining(n),
            BodyKind::Chunked => Tracker::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            }),
            BodyKind::UntilClose => Tracker::UntilClose,
        };
        BodyTracker { state }
    }

    /// True when the body is complete (never for [`BodyKind::UntilClose`]:
    /// the sender's close ends it).
    pub fn is_done(&self) -> bool {
        self.state == Tracker::Done
    }

    /// True for a body that ends only when its sender closes.
    pub fn is_until_close(&self) -> bool {
        self.state == Tracker::UntilClose
    }

    /// Consumes the body bytes at the start of `input`; returns how many
    /// belong to the body (the rest is the next message).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        match &mut self.state {
            Tracker::Done => Ok(0),
            Tracker::UntilClose => Ok(input.len()),
            Tracker::Remaining(n) => {
                let take = (*n).min(input.len() as u64);
                *n -= take;
                if *n == 0 {
                    self.state = Tracker::Done;
                }
                Ok(take as usize)
            }
            Tracker::Chunked(chunk) => {
                let mut chunk_state = *chunk;
                let used = feed_chunked(&mut chunk_state, input)?;
                self.state = if chunk_state == Chunk::Done {
                    Tracker::Done
                } else {
                    Tracker::Chunked(chunk_state)
                };
                Ok(used)
            }
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

fn feed_chunked(state: &mut Chunk, input: &[u8]) -> Result<usize, FramingError> {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        match *state {
            Chunk::Done => return Ok(i),
            Chunk::Data(n) => {
                let take = n.min((input.len() - i) as u64);
                i += take as usize;
                *state = if n == take {
                    Chunk::DataCr
                } else {
                    Chunk::Data(n - take)
                };
                continue;
            }
            Chunk::Size { value, digits } => {
                if let Some(d) = hex(b) {
                    if digits >= 15 {
                        return Err(FramingError::ChunkSize);
                    }
                    *state = Chunk::Size {
                        value: value * 16 + d,
                        digits: digits + 1,
                    };
                } else if digits == 0 {
                    return Err(FramingError::ChunkSize);
                } else if b == b'\r' {
                    *state = Chunk::SizeLf { size: value };
                } else if b == b';' || b == b' ' || b == b'\t' {
                    *state = Chunk::Extension {
                        size: value,
                        len: 1,
                    };
                } else {
                    return Err(FramingError::ChunkSize);
                }
            }
            Chunk::Extension { size, len } => {
                if b == b'\r' {
                    *state = Chunk::SizeLf { size };
                } else if b == b'\n' {
                    return Err(FramingError::MissingCrlf);
                } else if len >= MAX_CHUNK_LINE {
                    return Err(FramingError::LineTooLong);
                } else {
                    *state = Chunk::Extension { size, len: len + 1 };
                }
            }
            Chunk::SizeLf { size } => {
                if b != b'\n' {
                    return Err(FramingError::MissingCrlf);
                }
                *state = if size == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::DataCr => {
                if b != b'\r' {
                    return Err(FramingError::MissingCrlf);
                }
                *state = Chunk::DataLf;
            }
            Chunk::DataLf => {
                if b != b'\n' {
                    return Err(FramingError::MissingCrlf);
                }
                *state = Chunk::Size {
                    value: 0,
                    digits: 0,
                };
            }
            Chunk::TrailerStart => {
                *state = if b == b'\r' {
                    Chunk::FinalLf
                } else if b == b'\n' {
                    return Err(FramingError::MissingCrlf);
                } else {
                    Chunk::Trailer { len: 1 }
                };
            }
            Chunk::Trailer { len } => {
                if b == b'\r' {
                    *state = Chunk::TrailerLf;
                } else if b == b'\n' {
                    return Err(FramingError::MissingCrlf);
                } else if len >= MAX_CHUNK_LINE {
                    return Err(FramingError::LineTooLong);
                } else {
                    *state = Chunk::Trailer { len: len + 1 };
                }
            }
            Chunk::TrailerLf => {
                if b != b'\n' {
                    return Err(FramingError::MissingCrlf);
                }
                *state = Chunk::TrailerStart;
            }
            Chunk::FinalLf => {
                if b != b'\n' {
                    return Err(FramingError::MissingCrlf);
                }
                *state = Chunk::Done;
                return Ok(i + 1);
            }
        }
        i += 1;
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn feed_all(kind: BodyKind, input: &[u8], split: usize) -> Result<(usize, bool), FramingError> {
        let mut t = BodyTracker::new(kind);
        let mut used = 0;
        for part in input.chunks(split.max(1)) {
            let n = t.feed(part)?;
            used += n;
            if n < part.len() {
                break;
            }
        }
        Ok((used, t.is_done()))
    }

    #[test]
    fn content_length_stops_at_the_length() {
        assert_eq!(
            feed_all(BodyKind::Length(5), b"helloGET /", 3),
            Ok((5, true))
        );
        assert_eq!(feed_all(BodyKind::Length(5), b"hel", 3), Ok((3, false)));
        assert_eq!(feed_all(BodyKind::Empty, b"GET /", 3), Ok((0, true)));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers_ends_exactly() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for split in 1..input.len() {
            assert_eq!(
                feed_all(BodyKind::Chunked, &input, split),
                Ok((body.len(), true)),
                "split {split}"
            );
        }
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        assert_eq!(
            feed_all(BodyKind::Chunked, b"x\r\n", 8),
            Err(FramingError::ChunkSize)
        );
        assert_eq!(
            feed_all(BodyKind::Chunked, b"\r\n", 8),
            Err(FramingError::ChunkSize)
        );
        assert_eq!(
            feed_all(BodyKind::Chunked, b"1\nx", 8),
            Err(FramingError::ChunkSize)
        );
        assert_eq!(
            feed_all(BodyKind::Chunked, b"1\r\nxy", 8),
            Err(FramingError::MissingCrlf)
        );
        assert_eq!(
            feed_all(BodyKind::Chunked, b"ffffffffffffffff1\r\n", 8),
            Err(FramingError::ChunkSize)
        );
        let long = [b'a'; MAX_CHUNK_LINE + 8];
        let mut line = b"1;".to_vec();
        line.extend_from_slice(&long);
        assert_eq!(
            feed_all(BodyKind::Chunked, &line, 64),
            Err(FramingError::LineTooLong)
        );
    }

    /// Any body encoded in random chunk sizes, fed in random splits, is
    /// recognised to its exact end.
    #[test]
    fn random_chunkings_end_where_the_encoding_ends() {
        fn prop(data: Vec<u8>, sizes: Vec<u8>, split: u8) -> TestResult {
            let mut encoded = Vec::new();
            let mut rest = &data[..];
            let mut sizes = sizes.into_iter().cycle();
            while !rest.is_empty() {
                let n = (sizes.next().unwrap_or(7) as usize).clamp(1, rest.len());
                encoded.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                encoded.extend_from_slice(&rest[..n]);
                encoded.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            encoded.extend_from_slice(b"0\r\n\r\n");
            let len = encoded.len();
            encoded.extend_from_slice(b"NEXT");
            let got = feed_all(BodyKind::Chunked, &encoded, usize::from(split) + 1);
            TestResult::from_bool(got == Ok((len, true)))
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(Vec<u8>, Vec<u8>, u8) -> TestResult);
    }
}
