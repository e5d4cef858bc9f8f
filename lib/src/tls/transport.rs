//! A sans-io TLS server connection: the shell hands it the bytes it read
//! from the socket and writes out the bytes it yields; the HTTP layer reads
//! and writes plaintext. No socket, no clock: the shell owns both (and the
//! handshake deadline).
//!
//! Buffers are bounded: at most [`MAX_PLAINTEXT_IN`] bytes (plus the one
//! record that crossed the bound; rustls' own limit may stop it sooner) of received
//! plaintext wait for the HTTP layer ([`TlsTransport::receive`] then takes
//! no more socket bytes, and the shell stops reading the socket), and at
//! most [`MAX_PLAINTEXT_OUT`] bytes of plaintext wait to be encrypted
//! ([`TlsTransport::send_plaintext`] then accepts fewer bytes). A record
//! larger than TLS allows, a handshake message larger than rustls joins
//! (64 KiB), or bytes that are not TLS at all, end the connection with an
//! error (and, but for the too-large handshake message, an alert queued for
//! the peer), never a panic nor a stall.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

/// Received plaintext held for the HTTP layer, at most.
pub const MAX_PLAINTEXT_IN: usize = 64 * 1024;

/// Plaintext waiting to be encrypted and sent, at most.
pub const MAX_PLAINTEXT_OUT: usize = 64 * 1024;

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer broke the protocol (garbage, oversized record, bad
    /// handshake, no common version or suite); an alert may be queued:
    /// flush [`TlsTransport::poll_transmit`] before closing.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls refused to start a connection with this configuration.
    #[error("TLS connection setup: {0}")]
    Setup(#[source] rustls::Error),
}

/// What [`TlsTransport::read_plaintext`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// This many bytes were copied out.
    Data(usize),
    /// Nothing to read now (handshake in progress, or waiting for bytes).
    Nothing,
    /// The peer sent close_notify: no more plaintext will come.
    Closed,
}

/// One TLS server connection, bytes in and out.
pub struct TlsTransport {
    connection: ServerConnection,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("handshaking", &self.connection.is_handshaking())
            .field("server_name", &self.connection.server_name())
            .finish()
    }
}

impl TlsTransport {
    /// A connection awaiting its ClientHello.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TransportError> {
        let mut connection = ServerConnection::new(config).map_err(TransportError::Setup)?;
        connection.set_buffer_limit(Some(MAX_PLAINTEXT_OUT));
        Ok(TlsTransport { connection })
    }

    /// Feeds bytes read from the socket; returns how many were taken. Fewer
    /// than given means the received-plaintext buffer is full: read
    /// plaintext, then give the rest again. An empty `bytes` is a no-op
    /// (the shell reports the socket's end with [`TlsTransport::peer_eof`]).
    pub fn receive(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        let mut rest = bytes;
        let mut buffered = self
            .connection
            .process_new_packets()?
            .plaintext_bytes_to_read();
        while !rest.is_empty() && buffered < MAX_PLAINTEXT_IN {
            match self.connection.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {
                    buffered = self
                        .connection
                        .process_new_packets()?
                        .plaintext_bytes_to_read();
                }
                // Backpressure (rustls' received-plaintext buffer is full)
                // or close_notify already received: take no more.
                Err(_) => {
                    let state = self.connection.process_new_packets()?;
                    if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() {
                        // Neither: rustls' message buffer is full, i.e. a
                        // handshake message larger than the 64 KiB it
                        // joins. Nothing will ever be read from it; waiting
                        // would stall the connection until its deadline.
                        return Err(TransportError::Tls(rustls::Error::InvalidMessage(
                            rustls::InvalidMessage::MessageTooLarge,
                        )));
                    }
                    break;
                }
            }
        }
        Ok(bytes.len() - rest.len())
    }

    /// The socket reached its end (read returned 0).
    pub fn peer_eof(&mut self) {
        let mut empty: &[u8] = &[];
        // Reading from an empty reader records the end of the stream.
        let _ = self.connection.read_tls(&mut empty);
    }

    /// Copies received plaintext into `out`.
    pub fn read_plaintext(&mut self, out: &mut [u8]) -> Plaintext {
        if out.is_empty() {
            return Plaintext::Nothing;
        }
        match self.connection.reader().read(out) {
            Ok(0) => Plaintext::Closed,
            Ok(n) => Plaintext::Data(n),
            Err(_) => Plaintext::Nothing,
        }
    }

    /// Queues plaintext to send; returns how many bytes were taken (fewer
    /// than given when the outgoing buffer is full). Before the handshake
    /// ends the bytes wait and go out encrypted after it.
    pub fn send_plaintext(&mut self, data: &[u8]) -> usize {
        self.connection.writer().write(data).unwrap_or(0)
    }

    /// Copies TLS bytes to send into `out`; returns how many (0: nothing to
    /// send now).
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> usize {
        let mut cursor = io::Cursor::new(out);
        let mut written = 0;
        while self.connection.wants_write() {
            match self.connection.write_tls(&mut cursor) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n,
            }
        }
        written
    }

    /// Whether TLS bytes wait to be sent.
    pub fn wants_transmit(&self) -> bool {
        self.connection.wants_write()
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.connection.is_handshaking()
    }

    /// The SNI name the client sent, once the ClientHello is read.
    pub fn server_name(&self) -> Option<&str> {
        self.connection.server_name()
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.connection.alpn_protocol()
    }

    /// The TLS version agreed on, once the handshake is done.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.connection.protocol_version()
    }

    /// Queues a close_notify alert (flush with `poll_transmit`).
    pub fn close(&mut self) {
        self.connection.send_close_notify();
    }
}
