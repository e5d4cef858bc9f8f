//! Fuzzes the command channel's read side: arbitrary bytes written into a
//! real Unix socket pair, in arbitrary chunks, read back by
//! [`Channel::try_read_message`] as the master reads a command client.
//!
//! Oracles: no panic; the reader's buffer never holds more than the
//! channel's maximum; the sequence of messages, decode errors and fatal
//! errors equals what an independent reference decoder (written here from
//! the framing rule: 8-byte little-endian length counting itself, then a
//! protobuf body) derives from the whole stream, whatever the chunking; every
//! decoded order is then dispatched onto a [`ConfigState`], as the master
//! does, and must not panic it (its invariants are checked in debug builds).
//!
//! Input layout: byte 0 picks the maximum frame size, byte 1 the initial
//! buffer size, bytes 2–3 seed the chunk sizes, the rest is the stream.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;

use prost::Message;
use sozu_command_lib::channel::{Channel, ChannelError, FRAME_HEADER_LEN, MIN_MAX_BUFFER_SIZE};
use sozu_command_lib::command::{Request, Response};
use sozu_command_lib::state::ConfigState;

/// Maximum frame sizes tried (the default command maximum is 163840).
const MAX_SIZES: [usize; 6] = [0, 64, 100, 512, 4096, 163_840];
/// Initial buffer sizes tried.
const INITIAL_SIZES: [usize; 4] = [0, 8, 64, 16_384];
/// Writes without progress before the harness calls it a hang.
const STALL_LIMIT: usize = 10_000;

/// What one read produced, for comparison with the reference decoder.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(Box<Request>),
    Decode { len: usize },
    TooLarge { len: u64 },
    TooShort { len: u64 },
    PeerClosed,
    PeerClosedMidFrame { buffered: usize },
}

impl Event {
    fn is_fatal(&self) -> bool {
        !matches!(self, Event::Message(_) | Event::Decode { .. })
    }
}

/// The parameters and stream an input encodes.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub max_buffer_size: usize,
    pub initial_size: usize,
    pub chunk_seed: u16,
    pub stream: &'a [u8],
}

impl<'a> Plan<'a> {
    /// Splits a fuzz input into parameters and stream; `None` if too short.
    pub fn from_bytes(data: &'a [u8]) -> Option<Plan<'a>> {
        let (head, stream) = data.split_first_chunk::<4>()?;
        Some(Plan {
            max_buffer_size: MAX_SIZES[usize::from(head[0]) % MAX_SIZES.len()],
            initial_size: INITIAL_SIZES[usize::from(head[1]) % INITIAL_SIZES.len()],
            chunk_seed: u16::from_le_bytes([head[2], head[3]]),
            stream,
        })
    }
}

/// The fuzz entry point.
pub fn run(data: &[u8]) {
    if let Some(plan) = Plan::from_bytes(data) {
        check(&plan);
    }
}

/// Runs one plan through the real channel and the reference decoder and
/// panics if they disagree or the buffer bound is broken.
pub fn check(plan: &Plan<'_>) {
    let effective_max = plan.max_buffer_size.max(MIN_MAX_BUFFER_SIZE);
    let expected = reference_decode(plan.stream, effective_max);
    let got = channel_decode(plan, effective_max);
    assert_eq!(
        got, expected,
        "channel and reference decoder disagree (max {effective_max}, initial {}, seed {})",
        plan.initial_size, plan.chunk_seed
    );
    let mut state = ConfigState::new();
    for event in &got {
        if let Event::Message(request) = event {
            // Refusals are fine; a panic is the finding.
            let _ = state.dispatch(request);
        }
    }
}

/// The framing rule applied to the whole stream at once, then the end of
/// the stream.
pub fn reference_decode(stream: &[u8], max: usize) -> Vec<Event> {
    let mut events = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &stream[pos..];
        let Some(header) = rest.first_chunk::<FRAME_HEADER_LEN>() else {
            break;
        };
        let len = u64::from_le_bytes(*header);
        if len < FRAME_HEADER_LEN as u64 {
            events.push(Event::TooShort { len });
            return events;
        }
        if len > max as u64 {
            events.push(Event::TooLarge { len });
            return events;
        }
        let len = len as usize;
        if rest.len() < len {
            break;
        }
        match Request::decode(&rest[FRAME_HEADER_LEN..len]) {
            Ok(request) => events.push(Event::Message(Box::new(request))),
            Err(_) => events.push(Event::Decode { len }),
        }
        pos += len;
    }
    let buffered = stream.len() - pos;
    events.push(if buffered == 0 {
        Event::PeerClosed
    } else {
        Event::PeerClosedMidFrame { buffered }
    });
    events
}

/// Feeds the stream through a socket pair in pseudo-random chunks, reading
/// after every write, then closes the writer and reads to the end.
fn channel_decode(plan: &Plan<'_>, effective_max: usize) -> Vec<Event> {
    let (mut writer, reader) = UnixStream::pair().expect("socketpair");
    writer.set_nonblocking(true).expect("nonblocking writer");
    let mut channel: Channel<Response, Request> =
        Channel::new(reader, plan.initial_size, plan.max_buffer_size);
    let mut events = Vec::new();
    let mut chunks = ChunkSizes::new(plan.chunk_seed);
    let mut pos = 0;
    let mut stalls = 0;
    while pos < plan.stream.len() && !events.last().is_some_and(Event::is_fatal) {
        let end = (pos + chunks.next()).min(plan.stream.len());
        match writer.write(&plan.stream[pos..end]) {
            Ok(n) => {
                pos += n;
                stalls = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                stalls += 1;
                assert!(
                    stalls < STALL_LIMIT,
                    "the reader stopped draining the socket with {} bytes buffered",
                    channel.buffered_bytes()
                );
            }
            Err(e) => panic!("writing the stream failed: {e}"),
        }
        drain(&mut channel, &mut events, effective_max);
    }
    drop(writer);
    if !events.last().is_some_and(Event::is_fatal) {
        drain(&mut channel, &mut events, effective_max);
    }
    assert!(
        events.last().is_some_and(Event::is_fatal),
        "the end of the stream was not reported: {:?}",
        events.last()
    );
    // A fatal read error is sticky: the next read reports it again.
    let again = read_event(&mut channel);
    assert_eq!(
        again.as_ref(),
        events.last(),
        "a fatal read error is not sticky"
    );
    events
}

/// Reads until the socket is empty or the stream is unusable.
fn drain(channel: &mut Channel<Response, Request>, events: &mut Vec<Event>, max: usize) {
    loop {
        let event = read_event(channel);
        assert!(
            channel.buffered_bytes() <= max,
            "{} bytes buffered over the maximum of {max}",
            channel.buffered_bytes()
        );
        match event {
            None => return,
            Some(event) => {
                let fatal = event.is_fatal();
                events.push(event);
                if fatal {
                    return;
                }
            }
        }
    }
}

fn read_event(channel: &mut Channel<Response, Request>) -> Option<Event> {
    match channel.try_read_message() {
        Ok(Some(request)) => Some(Event::Message(Box::new(request))),
        Ok(None) => None,
        Err(ChannelError::Decode { len, .. }) => Some(Event::Decode { len }),
        Err(ChannelError::FrameTooLarge { len, .. }) => Some(Event::TooLarge { len }),
        Err(ChannelError::FrameTooShort { len }) => Some(Event::TooShort { len }),
        Err(ChannelError::PeerClosed) => Some(Event::PeerClosed),
        Err(ChannelError::PeerClosedMidFrame { buffered }) => {
            Some(Event::PeerClosedMidFrame { buffered })
        }
        Err(other) => panic!("unexpected read error: {other}"),
    }
}

/// Deterministic chunk sizes from a seed: mostly small, sometimes large, so
/// headers and bodies are split at every position.
struct ChunkSizes(u32);

impl ChunkSizes {
    fn new(seed: u16) -> Self {
        ChunkSizes(u32::from(seed) | 1)
    }

    fn next(&mut self) -> usize {
        // xorshift32: cheap and good enough to vary split points.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        match self.0 % 8 {
            0..=3 => 1 + (self.0 as usize >> 3) % 9,
            4..=6 => 1 + (self.0 as usize >> 3) % 200,
            _ => 1 + (self.0 as usize >> 3) % 70_000,
        }
    }
}

/// Builds a fuzz input from parameters and a stream (for seeds and tests).
pub fn encode_input(max_index: u8, initial_index: u8, chunk_seed: u16, stream: &[u8]) -> Vec<u8> {
    let mut input = vec![max_index, initial_index];
    input.extend_from_slice(&chunk_seed.to_le_bytes());
    input.extend_from_slice(stream);
    input
}

/// One frame: the length prefix (counting itself) and the encoded body.
pub fn frame(request: &Request) -> Vec<u8> {
    let body = request.encode_to_vec();
    let mut bytes = ((body.len() + FRAME_HEADER_LEN) as u64)
        .to_le_bytes()
        .to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// A sample order built from `seed` bytes: real orders of several kinds,
/// so the state behind the channel sees adds, removes and queries.
pub fn sample_request(kind: u8, seed: &[u8]) -> Request {
    use sozu_command_lib::command::request::RequestType;
    use sozu_command_lib::command::{AddBackend, Cluster, Status, UdpListenerConfig};
    let text = String::from_utf8_lossy(seed).into_owned();
    let port = seed
        .first_chunk::<2>()
        .map_or(0, |b| u16::from_le_bytes(*b));
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port)).into();
    let request_type = match kind % 6 {
        0 => RequestType::Status(Status::default()),
        1 => RequestType::AddCluster(Cluster {
            cluster_id: text,
            ..Default::default()
        }),
        2 => RequestType::RemoveCluster(text),
        3 => RequestType::AddBackend(AddBackend {
            cluster_id: text.clone(),
            backend_id: text,
            address,
            ..Default::default()
        }),
        4 => RequestType::AddUdpListener(UdpListenerConfig {
            address,
            max_flows: u32::from(port),
            ..Default::default()
        }),
        _ => RequestType::SaveState(text),
    };
    Request {
        request_type: Some(request_type),
    }
}

/// Builds a stream from parts, so generated inputs reach past the first
/// header: `(kind, number, bytes)` is a valid frame of a sample order
/// (kind 0), a frame whose body is `bytes` (1), `bytes` verbatim (2), or a
/// bare header declaring `number` bytes (3).
pub fn stream_from_parts(parts: &[(u8, u16, Vec<u8>)]) -> Vec<u8> {
    let mut stream = Vec::new();
    for (kind, number, bytes) in parts {
        match kind % 4 {
            0 => stream.extend(frame(&sample_request(*kind / 4, bytes))),
            1 => {
                stream.extend(((bytes.len() + FRAME_HEADER_LEN) as u64).to_le_bytes());
                stream.extend(bytes);
            }
            2 => stream.extend(bytes),
            _ => stream.extend(u64::from(*number).to_le_bytes()),
        }
    }
    stream
}
