//! Fuzzes the TLS-to-HTTP hand-off of an HTTPS client connection: the
//! sans-io [`TlsTransport`] driven the way the worker's TLS front
//! (`lib/src/stream/tls.rs`) drives it, over an in-memory socket, with an
//! HTTP/1.1 session model on top (a bounded request buffer, heads parsed
//! by [`parse_request`], bodies delimited by a [`BodyTracker`], answers
//! written back through the transport).
//!
//! What reaches the server is steered by the input: raw bytes split
//! anywhere (garbage, oversized or truncated records, plain HTTP), or a real
//! in-memory rustls client (TLS 1.3 or 1.2, SNI or none) whose handshake
//! and records are delivered in input-sized pieces, with garbage injected
//! between them, bits flipped in them, oversized record headers, empty
//! records, close_notify or a bare EOF, while the server's answers reach
//! the client only when the input says so (a client that never reads).
//! The client's keys and randoms are fresh per run, so an input fixes the
//! structure (split points, positions of flipped bits), not the
//! ciphertext.
//!
//! Oracles: no panic; the socket bytes held before the transport takes
//! them never exceed one read chunk; the plaintext the transport holds for
//! the HTTP layer stays within [`MAX_PLAINTEXT_IN`] plus one record, and
//! the plaintext it accepts and has not sent stays within
//! [`MAX_PLAINTEXT_OUT`]; the plaintext the HTTP layer reads is always
//! exactly a prefix of what the client wrote (no byte forged, lost or
//! reordered, whatever was injected on the wire); a connection with bytes
//! waiting and room in the HTTP buffer never stalls (the transport takes
//! bytes, yields plaintext or fails); and once the socket reaches its end
//! the connection ends.
//!
//! Input layout: byte 0 picks the scenario (bit 0: a client, else raw
//! bytes; bit 1: finish the handshake first; bit 2: TLS 1.2 only; bit 3:
//! no SNI; bits 4–6: the HTTP buffer size); the rest is a script (see
//! [`run`]).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use sozu_command_lib::command::HttpsListenerConfig;
use sozu_lib::protocol::http::body::{BodyKind, BodyTracker};
use sozu_lib::protocol::http::head::{parse_request, ForwardInfo};
use sozu_lib::tls::certificate::load;
use sozu_lib::tls::testing::{client_config, self_signed, RecordingVerifier};
use sozu_lib::tls::transport::{MAX_PLAINTEXT_IN, MAX_PLAINTEXT_OUT};
use sozu_lib::tls::{CertificateStore, Plaintext, TlsPolicy, TlsTransport};

/// TLS bytes read from the socket at once (as the worker's TLS front).
const READ_CHUNK: usize = 16 * 1024 + 2048;
/// TLS bytes taken from the transport per poll (as the worker).
const TRANSMIT_CHUNK: usize = 8192;
/// Largest plaintext of one TLS record.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// The kernel's send buffer toward the client, in this model.
const SOCKET_OUT: usize = 32 * 1024;
/// Ceiling on the driver's own steps (each consumes input or makes progress).
const MAX_PUMPS: usize = 256;

/// Requests the script can send whole (so generated inputs reach the
/// parser with well-formed heads and bodies, pipelined or split).
const REQUESTS: [&[u8]; 6] = [
    b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /close HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5, 6\r\n\r\n",
    b"GARBAGE\r\n\r\n",
];

/// What one input did, for the replay tests' positive checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The server finished a handshake.
    pub handshake: bool,
    /// The transport refused the bytes (garbage, bad record, bad MAC…).
    pub tls_error: bool,
    /// Plaintext bytes the HTTP layer read.
    pub plaintext: usize,
    /// Request heads parsed.
    pub requests: usize,
    /// The status of the answer that closed the connection, if one did.
    pub closed_with: Option<u16>,
    /// Most plaintext the transport held accepted and unsent.
    pub out_peak: usize,
    /// Most received plaintext found waiting in the transport.
    pub held_peak: usize,
}

/// The fuzz entry point.
pub fn run(data: &[u8]) -> Outcome {
    let Some((&mode, script)) = data.split_first() else {
        return Outcome::default();
    };
    let capacity = 512usize << ((mode >> 4) & 0x7).min(5);
    let mut conn = Connection::new(capacity);
    let mut input = Script(script);
    if mode & 1 == 0 {
        // Raw bytes: each step, a length byte and that many bytes.
        while let Some(len) = input.byte() {
            let bytes = input.take(usize::from(len) * 4 + 1);
            conn.socket_in.extend(bytes);
            conn.pump();
        }
        conn.finish(None);
        return conn.outcome;
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = if mode & 4 != 0 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let name = if mode & 8 != 0 {
        "192.0.2.1"
    } else {
        "a.example.com"
    };
    let mut client = Client::new(versions, name);
    if mode & 2 != 0 {
        for _ in 0..8 {
            client.send_wire(&mut conn, usize::MAX);
            conn.pump();
            client.read_answers(&mut conn, usize::MAX);
            if !client.is_handshaking() {
                // The client's last flight (its Finished) goes out too.
                client.send_wire(&mut conn, usize::MAX);
                conn.pump();
                break;
            }
        }
    }
    while let Some(op) = input.byte() {
        let arg = input.byte().unwrap_or(0);
        match op % 10 {
            // Plaintext from the script, encrypted by the client.
            0 => {
                let bytes = input.take(usize::from(arg)).to_vec();
                client.write_plain(&bytes);
            }
            // A whole request, `arg / 8 + 1` times (pipelined).
            1 => {
                let request = REQUESTS[usize::from(arg) % REQUESTS.len()];
                for _ in 0..=(arg >> 3) {
                    client.write_plain(request);
                }
            }
            // Some of the client's records reach the socket.
            2 => client.send_wire(&mut conn, usize::from(arg) * 97 + 1),
            // Garbage between records.
            3 => {
                let bytes = input.take(usize::from(arg)).to_vec();
                client.send_wire(&mut conn, usize::MAX);
                conn.socket_in.extend(bytes);
            }
            // A bit flipped in the client's pending records.
            4 => client.flip(usize::from(arg) * 31 + usize::from(input.byte().unwrap_or(0))),
            // A record header announcing more than TLS allows, or an empty
            // application-data record.
            5 => {
                client.send_wire(&mut conn, usize::MAX);
                let header: [u8; 5] = if arg & 1 == 0 {
                    [0x17, 0x03, 0x03, 0xff, arg]
                } else {
                    [0x17, 0x03, 0x03, 0x00, 0x00]
                };
                conn.socket_in.extend(header);
                conn.socket_in
                    .extend(std::iter::repeat_n(arg, usize::from(arg)));
            }
            // The client reads some of what the server sent.
            6 => client.read_answers(&mut conn, usize::from(arg) * 256 + 1),
            // The HTTP layer stops reading until told to resume.
            7 => conn.paused = arg & 1 == 1,
            // Measure what the transport holds for the HTTP layer.
            8 => conn.check_plaintext_bound(),
            // close_notify, or the end of the socket.
            _ => {
                if arg & 1 == 0 {
                    client.close();
                    client.send_wire(&mut conn, usize::MAX);
                } else {
                    client.send_wire(&mut conn, usize::from(arg) * 13);
                    break;
                }
            }
        }
        conn.pump();
        conn.check_prefix(&client.plain);
        if conn.done {
            break;
        }
    }
    conn.paused = false;
    client.send_wire(&mut conn, usize::MAX);
    conn.finish(Some(&client.plain));
    conn.outcome
}

/// Reads the script as small numbers and byte runs.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// The server end: an in-memory socket, the TLS front's buffers and the
/// HTTP session model.
struct Connection {
    transport: TlsTransport,
    /// Bytes the client sent that the socket holds.
    socket_in: VecDeque<u8>,
    socket_eof: bool,
    /// Bytes sent toward the client, not read by it yet.
    socket_out: VecDeque<u8>,
    /// TLS bytes read, not taken by the transport yet.
    raw_in: Vec<u8>,
    raw_eof: bool,
    /// TLS bytes polled from the transport, not written yet.
    raw_out: Vec<u8>,
    /// Plaintext accepted by the transport, and TLS bytes polled out of
    /// it, in all: the difference bounds what it holds unsent.
    accepted_out: usize,
    polled_out: usize,
    /// Plaintext already taken out of the transport by a bound check.
    spill: VecDeque<u8>,
    /// The HTTP session's request buffer and its capacity.
    front_in: Vec<u8>,
    capacity: usize,
    /// The body being delimited, if a head was parsed.
    body: Option<BodyTracker>,
    /// Answer bytes not yet accepted by the transport.
    answer: Vec<u8>,
    /// Plaintext read in all, in order (compared with the client's).
    received: Vec<u8>,
    /// The HTTP layer does not read (a session waiting for its backend).
    paused: bool,
    /// The plaintext stream ended (close_notify or the socket's end).
    read_closed: bool,
    /// The connection ended (TLS error, end of stream, answer-and-close).
    done: bool,
    outcome: Outcome,
}

impl Connection {
    fn new(capacity: usize) -> Self {
        let transport =
            TlsTransport::new(server_config()).expect("the fuzz server config is valid");
        Connection {
            transport,
            socket_in: VecDeque::new(),
            socket_eof: false,
            socket_out: VecDeque::new(),
            raw_in: Vec::new(),
            raw_eof: false,
            raw_out: Vec::new(),
            accepted_out: 0,
            polled_out: 0,
            spill: VecDeque::new(),
            front_in: Vec::new(),
            capacity,
            body: None,
            answer: Vec::new(),
            received: Vec::new(),
            paused: false,
            read_closed: false,
            done: false,
            outcome: Outcome::default(),
        }
    }

    /// Moves TLS bytes from the transport toward the client (bounded by the
    /// socket's send buffer).
    fn flush(&mut self) {
        loop {
            if self.raw_out.is_empty() {
                let mut chunk = [0u8; TRANSMIT_CHUNK];
                let n = self.transport.poll_transmit(&mut chunk);
                if n == 0 {
                    return;
                }
                self.polled_out += n;
                self.raw_out.extend_from_slice(&chunk[..n]);
            }
            let room = SOCKET_OUT.saturating_sub(self.socket_out.len());
            if room == 0 {
                return;
            }
            let n = room.min(self.raw_out.len());
            self.socket_out.extend(self.raw_out.drain(..n));
        }
    }

    /// One read of plaintext, as the TLS front does it: `Some(n)` bytes,
    /// `Some(0)` at the end, `None` when nothing can be read now; `Err`
    /// when the transport refused the bytes.
    fn read(&mut self, space: &mut [u8]) -> Result<Option<usize>, ()> {
        if !self.spill.is_empty() {
            let n = space.len().min(self.spill.len());
            for (slot, byte) in space.iter_mut().zip(self.spill.drain(..n)) {
                *slot = byte;
            }
            return Ok(Some(n));
        }
        self.flush();
        for _ in 0..MAX_PUMPS {
            match self.transport.read_plaintext(space) {
                Plaintext::Data(n) => {
                    assert!(n <= space.len(), "more plaintext than the room given");
                    return Ok(Some(n));
                }
                Plaintext::Closed => return Ok(Some(0)),
                Plaintext::Nothing => {}
            }
            if !self.raw_in.is_empty() {
                let taken = self.transport.receive(&self.raw_in).map_err(|_| ())?;
                assert!(taken <= self.raw_in.len(), "took more than given");
                self.raw_in.drain(..taken);
                self.outcome.handshake |= !self.transport.is_handshaking();
                self.flush();
                if taken > 0 {
                    continue;
                }
                assert!(
                    space.is_empty(),
                    "stalled: {} socket bytes wait, the HTTP layer has room, \
                     and the transport neither takes them nor yields plaintext",
                    self.raw_in.len()
                );
                return Ok(None);
            }
            if self.raw_eof {
                return Ok(Some(0));
            }
            if self.socket_in.is_empty() {
                if self.socket_eof {
                    self.raw_eof = true;
                    self.transport.peer_eof();
                    continue;
                }
                return Ok(None);
            }
            let n = READ_CHUNK.min(self.socket_in.len());
            self.raw_in.extend(self.socket_in.drain(..n));
            assert!(
                self.raw_in.len() <= READ_CHUNK,
                "socket bytes held above one read"
            );
        }
        panic!("the TLS read loop made no decision in {MAX_PUMPS} rounds");
    }

    /// Runs the session until it can do nothing more now.
    fn pump(&mut self) {
        for _ in 0..MAX_PUMPS {
            if self.done {
                return;
            }
            let progress = self.write_answer() | self.read_requests();
            if !progress {
                return;
            }
        }
    }

    /// Plaintext answers into the transport, within its bound.
    fn write_answer(&mut self) -> bool {
        self.flush();
        if self.answer.is_empty() {
            return false;
        }
        let n = self.transport.send_plaintext(&self.answer);
        assert!(n <= self.answer.len(), "accepted more than given");
        self.accepted_out += n;
        // TLS bytes polled are at least the plaintext they carry.
        let unsent = self.accepted_out.saturating_sub(self.polled_out);
        self.outcome.out_peak = self.outcome.out_peak.max(unsent);
        assert!(
            unsent <= MAX_PLAINTEXT_OUT,
            "{unsent} plaintext bytes accepted and not sent"
        );
        self.answer.drain(..n);
        self.flush();
        n > 0
    }

    /// Reads plaintext into the request buffer and parses what it holds.
    fn read_requests(&mut self) -> bool {
        if self.paused || !self.answer.is_empty() {
            return false;
        }
        let mut progress = false;
        let room = self.capacity.saturating_sub(self.front_in.len());
        // The session reads nothing into a full buffer (see `parse`).
        if room > 0 && !self.read_closed {
            let mut space = vec![0u8; room];
            match self.read(&mut space) {
                Ok(Some(0)) => {
                    self.read_closed = true;
                    progress = true;
                }
                Ok(Some(n)) => {
                    self.received.extend_from_slice(&space[..n]);
                    self.outcome.plaintext += n;
                    self.front_in.extend_from_slice(&space[..n]);
                    progress = true;
                }
                Ok(None) => {}
                Err(()) => {
                    // The records before the bad one may have ended the
                    // handshake.
                    self.outcome.handshake |= !self.transport.is_handshaking();
                    self.flush();
                    self.done = true;
                    self.outcome.tls_error = true;
                    return true;
                }
            }
        }
        let parsed = self.parse();
        if self.read_closed && !parsed && self.answer.is_empty() {
            // What is buffered is served; an unfinished head or body at
            // the end of the stream is the client's abort.
            self.done = true;
            return true;
        }
        progress | parsed
    }

    /// Delimits heads and bodies in the request buffer.
    fn parse(&mut self) -> bool {
        let info = ForwardInfo {
            client: std::net::SocketAddr::from(([192, 0, 2, 7], 40_000)),
            listener: std::net::SocketAddr::from(([127, 0, 0, 1], 8443)),
            tls: true,
        };
        let mut progress = false;
        loop {
            if let Some(body) = self.body.as_mut() {
                let Ok(used) = body.feed(&self.front_in) else {
                    self.close_with(400);
                    return true;
                };
                assert!(used <= self.front_in.len(), "the body took more than given");
                self.front_in.drain(..used);
                progress |= used > 0;
                if !body.is_done() {
                    return progress;
                }
                self.body = None;
                self.answer.extend_from_slice(&answer(200));
                return true;
            }
            if self.front_in.is_empty() {
                return progress;
            }
            match parse_request(&self.front_in, &info) {
                Ok(Some(request)) => {
                    assert!(
                        request.head_len > 0 && request.head_len <= self.front_in.len(),
                        "head length outside the buffer"
                    );
                    self.front_in.drain(..request.head_len);
                    self.outcome.requests += 1;
                    if !request.keep_alive {
                        self.close_with(200);
                        return true;
                    }
                    match request.body {
                        BodyKind::Empty => self.answer.extend_from_slice(&answer(200)),
                        kind => self.body = Some(BodyTracker::new(kind)),
                    }
                    progress = true;
                }
                Ok(None) if self.front_in.len() >= self.capacity => {
                    self.close_with(431);
                    return true;
                }
                Ok(None) => return progress,
                Err(error) => {
                    self.close_with(error.status());
                    return true;
                }
            }
        }
    }

    /// Answers, then close_notify: the session reads nothing more.
    fn close_with(&mut self, status: u16) {
        self.outcome.closed_with = Some(status);
        self.answer.extend_from_slice(&answer(status));
        while !self.answer.is_empty() && self.write_answer() {}
        self.transport.close();
        self.flush();
        self.done = true;
    }

    /// Takes the plaintext the transport holds and checks its bound; the
    /// HTTP layer reads it later, in order.
    fn check_plaintext_bound(&mut self) {
        let mut held = 0;
        let mut chunk = vec![0u8; 4096];
        while let Plaintext::Data(n) = self.transport.read_plaintext(&mut chunk) {
            held += n;
            self.spill.extend(&chunk[..n]);
            assert!(
                held <= MAX_PLAINTEXT_IN + MAX_RECORD_PLAINTEXT,
                "the transport held {held} plaintext bytes"
            );
        }
        self.outcome.held_peak = self.outcome.held_peak.max(held);
    }

    /// The HTTP layer read nothing the client did not write.
    fn check_prefix(&self, sent: &[u8]) {
        assert!(
            self.received.len() <= sent.len() && sent[..self.received.len()] == self.received[..],
            "the HTTP layer read bytes the client did not send in that order"
        );
    }

    /// The socket ends; the connection must end too.
    fn finish(&mut self, sent: Option<&[u8]>) {
        self.socket_eof = true;
        self.paused = false;
        for _ in 0..MAX_PUMPS {
            if self.done {
                break;
            }
            // The client reads everything (a client that never reads is
            // the session's write timeout, not this layer's concern).
            self.socket_out.clear();
            self.pump();
        }
        assert!(self.done, "the connection outlived the end of its socket");
        if let Some(sent) = sent {
            self.check_prefix(sent);
        }
    }
}

/// An answer: a 1,500-byte body for a 200 (so a client that does not read
/// fills the transport's output bound), none for an error.
fn answer(status: u16) -> Vec<u8> {
    let body = if status == 200 { 1500 } else { 0 };
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {body}\r\n\r\n").into_bytes();
    out.resize(out.len() + body, b'x');
    out
}

/// The in-memory client.
struct Client {
    connection: Option<ClientConnection>,
    /// Encrypted bytes not yet on the socket.
    wire: Vec<u8>,
    /// Plaintext written, in order.
    plain: Vec<u8>,
    /// Reads nothing more from the server (after tampering with its own
    /// handshake).
    deaf: bool,
}

impl Client {
    fn new(versions: &[&'static rustls::SupportedProtocolVersion], name: &str) -> Self {
        let server_name = ServerName::try_from(name.to_owned()).expect("a literal server name");
        // Any certificate is accepted (the driver checks the hand-off, not
        // the certificate); the handshake's signatures are still verified.
        let config = client_config(
            Arc::new(RecordingVerifier::accept_any()),
            versions,
            &[b"http/1.1"],
        );
        let connection =
            ClientConnection::new(config, server_name).expect("the fuzz client config is valid");
        Client {
            connection: Some(connection),
            wire: Vec::new(),
            plain: Vec::new(),
            deaf: false,
        }
    }

    fn is_handshaking(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.is_handshaking())
    }

    fn write_plain(&mut self, bytes: &[u8]) {
        if let Some(c) = self.connection.as_mut() {
            // Before the handshake ends rustls buffers within its limit:
            // only what it took counts as sent.
            let n = c.writer().write(bytes).unwrap_or(0);
            self.plain.extend_from_slice(&bytes[..n]);
        }
    }

    /// Encrypts what is pending and puts up to `limit` bytes on the socket.
    fn send_wire(&mut self, conn: &mut Connection, limit: usize) {
        if let Some(c) = self.connection.as_mut() {
            while c.wants_write() {
                if c.write_tls(&mut self.wire).is_err() {
                    break;
                }
            }
        }
        let n = limit.min(self.wire.len());
        conn.socket_in.extend(self.wire.drain(..n));
    }

    fn flip(&mut self, at: usize) {
        if let Some(c) = self.connection.as_mut() {
            while c.wants_write() {
                if c.write_tls(&mut self.wire).is_err() {
                    break;
                }
            }
        }
        if !self.wire.is_empty() {
            let i = at % self.wire.len();
            self.wire[i] ^= 1 << (at % 8);
            // A flipped handshake byte dooms the handshake; the client
            // stops reading the server (rustls 0.23.48's TLS 1.2 client
            // trips its own debug assertion `!sent_fatal_alert` on some
            // such runs: a client-side matter, not the server's).
            self.deaf |= self.is_handshaking();
        }
    }

    /// Reads up to `limit` bytes of what the server sent; a client error
    /// ends the client (the server side goes on).
    fn read_answers(&mut self, conn: &mut Connection, limit: usize) {
        let n = limit.min(conn.socket_out.len());
        let bytes: Vec<u8> = conn.socket_out.drain(..n).collect();
        let Some(c) = self.connection.as_mut().filter(|_| !self.deaf) else {
            conn.flush();
            return;
        };
        let mut slice = &bytes[..];
        while !slice.is_empty() {
            let ok = c.read_tls(&mut slice).is_ok() && c.process_new_packets().is_ok();
            if !ok {
                self.connection = None;
                return;
            }
            let mut sink = [0u8; 4096];
            while matches!(c.reader().read(&mut sink), Ok(n) if n > 0) {}
        }
        conn.flush();
    }

    fn close(&mut self) {
        if let Some(c) = self.connection.as_mut() {
            c.send_close_notify();
        }
    }
}

/// The server's configuration: the worker's own policy (default listener
/// knobs) and store, one certificate for `a.example.com` that is also the
/// default (generated once per process).
fn server_config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let order = self_signed(&["a.example.com"]);
            let loaded = load(&order).expect("rcgen's certificate loads");
            let store = Arc::new(CertificateStore::new());
            store.add(loaded.clone());
            store.set_default(Some(loaded));
            let listener = HttpsListenerConfig {
                address: std::net::SocketAddr::from(([127, 0, 0, 1], 8443)).into(),
                ..Default::default()
            };
            TlsPolicy::from_listener(&listener)
                .expect("the default listener knobs")
                .server_config(store)
                .expect("a server config")
        })
        .clone()
}

/// Hostile inputs kept as a corpus (written by the `write_seeds` example,
/// replayed by `lib/tests/tls_fuzz_replay.rs`): name and bytes.
pub fn hostile_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // Plain HTTP on the TLS port.
    let mut plain = vec![0u8, 12];
    plain.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n\0\0\0\0\0\0\0\0\0\0");
    out.push(("raw-plain-http", plain));
    // A handshake record announcing 65,535 bytes, fed in small pieces.
    let mut oversized = vec![0u8];
    let record: Vec<u8> = [0x16, 0x03, 0x01, 0xff, 0xff]
        .into_iter()
        .chain(std::iter::repeat_n(0x41, 400))
        .collect();
    for piece in record.chunks(5) {
        oversized.push(1);
        oversized.extend_from_slice(piece);
    }
    out.push(("raw-oversized-record", oversized));
    // A ClientHello announcing 65,520 bytes in full records: more than
    // rustls joins (the transport once stalled on it until its deadline).
    let mut payload = vec![0x01, 0x00, 0xff, 0xf0];
    payload.extend(std::iter::repeat_n(0u8, 0xfff0));
    let mut wire = Vec::new();
    for chunk in payload.chunks(16 * 1024) {
        let len = (chunk.len() as u16).to_be_bytes();
        wire.extend_from_slice(&[0x16, 0x03, 0x01, len[0], len[1]]);
        wire.extend_from_slice(chunk);
    }
    let mut huge = vec![0u8];
    for piece in wire.chunks(1021) {
        huge.push(255);
        huge.extend_from_slice(piece);
    }
    out.push(("raw-huge-client-hello", huge));
    // A ClientHello header whose body never comes, then random-looking bytes.
    let mut truncated = vec![0u8, 2, 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00];
    truncated.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    out.push(("raw-truncated-hello", truncated));
    // Handshake, then pipelined requests delivered one byte-run at a time.
    let mut split = vec![0b0000_0011u8, 1, 0x18, 1, 0x19, 1, 0x1a];
    for _ in 0..40 {
        split.extend_from_slice(&[2, 0]);
    }
    out.push(("client-requests-split", split));
    // Handshake, a request, then garbage between records.
    let mut garbage = vec![0b0001_0011u8, 1, 0, 3, 16];
    garbage.extend_from_slice(b"\x17\x03\x03\x00\x05hello-garbage-bytes!");
    garbage.extend_from_slice(&[1, 1, 2, 255]);
    out.push(("client-garbage-after-handshake", garbage));
    // A flipped bit in an encrypted request.
    out.push((
        "client-flipped-bit",
        vec![0b0000_0011u8, 1, 1, 4, 2, 9, 2, 255, 6, 255],
    ));
    // Oversized and empty application-data records after the handshake.
    out.push((
        "client-oversized-app-record",
        vec![0b0000_0011u8, 5, 0xfe, 5, 1, 5, 1, 1, 0, 2, 255],
    ));
    // TLS 1.2, no SNI, a client that never reads while answers pile up.
    // The smallest request buffer: the transport keeps what one socket
    // read decrypted beyond it, which the bound check measures.
    let mut hoard = vec![0b0000_0111u8, 7, 1];
    for _ in 0..30 {
        hoard.extend_from_slice(&[1, 0xf8, 2, 255]);
    }
    hoard.extend_from_slice(&[7, 0, 8, 0, 6, 255, 8, 0]);
    out.push(("client-tls12-hoarding", hoard));
    // A head longer than the smallest request buffer, then close_notify.
    let mut long_head = vec![0b0000_0011u8, 0, 255];
    long_head.extend(std::iter::repeat_n(b'A', 255));
    long_head.extend_from_slice(&[0, 255]);
    long_head.extend(std::iter::repeat_n(b'B', 255));
    long_head.extend_from_slice(&[0, 255]);
    long_head.extend(std::iter::repeat_n(b'C', 255));
    long_head.extend_from_slice(&[2, 255, 9, 0]);
    out.push(("client-head-too-large", long_head));
    // The handshake split into 1-byte deliveries, no prior handshake.
    let mut dribble = vec![0b0000_0001u8];
    for _ in 0..400 {
        dribble.extend_from_slice(&[2, 0]);
    }
    dribble.extend_from_slice(&[6, 255, 2, 255, 1, 0x18, 2, 255]);
    out.push(("client-dribbled-handshake", dribble));
    out
}
