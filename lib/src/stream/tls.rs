//! The TLS end of a client connection: a [`TlsTransport`] between a
//! [`super::socket::Side`]'s socket and the plaintext the HTTP session
//! reads and writes, so the session runs unchanged over HTTPS.
//!
//! Owns the transport, the TLS bytes read but not yet taken and the TLS
//! bytes not yet written. The handshake deadline is the listener's
//! `front_timeout` counted from accept: while handshaking, socket reads do
//! not refresh the side's `last_activity`, so the session's idle deadline
//! fires at accept + `front_timeout` however slowly the client drips its
//! handshake. Nothing here reads the clock or blocks.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use crate::tls::{Plaintext, TlsTransport};

/// TLS bytes read from the socket per call, at most (one maximal record
/// plus its header).
const READ_CHUNK: usize = 16 * 1024 + 2048;

/// Why a handshake ended without a session, as a metric suffix
/// (`https.handshake.failed.<reason>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// Bytes that are not TLS.
    NotTls,
    /// A record larger than TLS allows.
    OversizedRecord,
    /// Any other TLS refusal (no common version or suite, bad messages…).
    Refused,
    /// The deadline (`front_timeout` from accept) passed.
    Timeout,
    /// The client closed or reset before the end.
    Aborted,
}

impl HandshakeFailure {
    /// The metric suffix.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::OversizedRecord => "oversized_record",
            HandshakeFailure::Refused => "refused",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Aborted => "aborted",
        }
    }

    fn of(error: &rustls::Error) -> Self {
        match error {
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
                HandshakeFailure::NotTls
            }
            rustls::Error::InvalidMessage(rustls::InvalidMessage::MessageTooLarge) => {
                HandshakeFailure::OversizedRecord
            }
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidEmptyPayload)
            | rustls::Error::InvalidMessage(rustls::InvalidMessage::UnknownProtocolVersion) => {
                HandshakeFailure::NotTls
            }
            _ => HandshakeFailure::Refused,
        }
    }
}

/// A connection's TLS layer.
#[derive(Debug)]
pub(crate) struct TlsFront {
    transport: TlsTransport,
    /// TLS bytes read but not taken by the transport yet.
    raw_in: Vec<u8>,
    /// TLS bytes produced but not written to the socket yet.
    raw_out: Vec<u8>,
    raw_out_sent: usize,
    /// The socket reached its end.
    raw_eof: bool,
    /// A shutdown of the socket's sending half waits for `raw_out`.
    shutdown_pending: bool,
    /// The handshake finished (reported once through `take_event`).
    established: bool,
    /// What the next `take_event` reports.
    event: Option<Result<(), HandshakeFailure>>,
    /// The handshake failed (reported once).
    failed: Option<HandshakeFailure>,
}

impl TlsFront {
    /// A connection awaiting its ClientHello.
    pub(crate) fn new(transport: TlsTransport) -> Self {
        TlsFront {
            transport,
            raw_in: Vec::new(),
            raw_out: Vec::new(),
            raw_out_sent: 0,
            raw_eof: false,
            shutdown_pending: false,
            established: false,
            event: None,
            failed: None,
        }
    }

    /// True while the handshake is going on.
    pub(crate) fn is_handshaking(&self) -> bool {
        !self.established
    }

    /// A handshake that ended since the last call: `Ok` when it completed,
    /// the reason when it failed.
    pub(crate) fn take_event(&mut self) -> Option<Result<(), HandshakeFailure>> {
        self.event.take()
    }

    fn fail(&mut self, why: HandshakeFailure) {
        if !self.established && self.failed.is_none() {
            self.failed = Some(why);
            self.event = Some(Err(why));
        }
    }

    /// Closing the connection: a handshake still going on failed (timeout
    /// when the session ended on its deadline, else an abort).
    pub(crate) fn closing(&mut self, timed_out: bool) {
        self.fail(if timed_out {
            HandshakeFailure::Timeout
        } else {
            HandshakeFailure::Aborted
        });
    }

    /// Writes pending TLS bytes; `Ok(true)` when none are left.
    pub(crate) fn flush(
        &mut self,
        stream: &mut TcpStream,
        writable: &mut bool,
    ) -> io::Result<bool> {
        loop {
            if self.raw_out_sent == self.raw_out.len() {
                self.raw_out.clear();
                self.raw_out_sent = 0;
                let mut chunk = [0u8; 8192];
                let n = self.transport.poll_transmit(&mut chunk);
                if n == 0 {
                    if self.shutdown_pending {
                        self.shutdown_pending = false;
                        if let Err(error) = stream.shutdown(std::net::Shutdown::Write) {
                            tracing::debug!(%error, "shutdown(write)");
                        }
                    }
                    return Ok(true);
                }
                self.raw_out.extend_from_slice(&chunk[..n]);
            }
            if !*writable {
                return Ok(false);
            }
            match stream.write(&self.raw_out[self.raw_out_sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.raw_out_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *writable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads plaintext into `space`: from what the transport holds, else
    /// from the socket (if `readable`). Returns the bytes copied, 0 with
    /// `Ok(None)` when nothing can be read now, `Ok(Some(0))` at the end.
    /// A TLS error (garbage, oversized record, refused handshake) is an
    /// `InvalidData` error, after the alert was flushed if the socket takes
    /// it.
    pub(crate) fn read(
        &mut self,
        stream: &mut TcpStream,
        readable: &mut bool,
        writable: &mut bool,
        space: &mut [u8],
    ) -> io::Result<Option<usize>> {
        self.flush(stream, writable)?;
        loop {
            match self.transport.read_plaintext(space) {
                Plaintext::Data(n) => return Ok(Some(n)),
                Plaintext::Closed => return Ok(Some(0)),
                Plaintext::Nothing => {}
            }
            if !self.raw_in.is_empty() {
                let taken = self.receive(stream, writable)?;
                if taken > 0 {
                    continue;
                }
                // The transport holds plaintext it will not show until
                // `space` has room.
                return Ok(None);
            }
            if self.raw_eof {
                if self.transport.is_handshaking() {
                    self.fail(HandshakeFailure::Aborted);
                }
                return Ok(Some(0));
            }
            if !*readable {
                return Ok(None);
            }
            let mut chunk = [0u8; READ_CHUNK];
            match stream.read(&mut chunk) {
                Ok(0) => {
                    self.raw_eof = true;
                    self.transport.peer_eof();
                }
                Ok(n) => self.raw_in.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *readable = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(HandshakeFailure::Aborted);
                    return Err(e);
                }
            }
        }
    }

    /// Hands `raw_in` to the transport and sends what it answers.
    fn receive(&mut self, stream: &mut TcpStream, writable: &mut bool) -> io::Result<usize> {
        match self.transport.receive(&self.raw_in) {
            Ok(taken) => {
                self.raw_in.drain(..taken);
                if !self.established && !self.transport.is_handshaking() {
                    self.established = true;
                    self.event = Some(Ok(()));
                }
                self.flush(stream, writable)?;
                Ok(taken)
            }
            Err(error) => {
                let why = match &error {
                    crate::tls::TransportError::Tls(e) => HandshakeFailure::of(e),
                    crate::tls::TransportError::Setup(_) => HandshakeFailure::Refused,
                };
                self.fail(why);
                tracing::debug!(%error, reason = why.as_str(), "TLS connection refused");
                self.raw_in.clear();
                // Best effort: the alert rustls queued.
                let _ = self.flush(stream, writable);
                Err(io::Error::new(io::ErrorKind::InvalidData, error))
            }
        }
    }

    /// Encrypts up to all of `data`; returns how much was taken (0 when
    /// earlier TLS bytes still wait for the socket).
    pub(crate) fn write(
        &mut self,
        stream: &mut TcpStream,
        writable: &mut bool,
        data: &[u8],
    ) -> io::Result<usize> {
        if !self.flush(stream, writable)? {
            return Ok(0);
        }
        let n = self.transport.send_plaintext(data);
        self.flush(stream, writable)?;
        Ok(n)
    }

    /// Sends close_notify, then shuts the socket's sending half once every
    /// TLS byte is out.
    pub(crate) fn shutdown(&mut self, stream: &mut TcpStream, writable: &mut bool) {
        self.transport.close();
        self.shutdown_pending = true;
        if let Err(error) = self.flush(stream, writable) {
            tracing::debug!(%error, "flushing close_notify");
        }
    }
}

/// Metric names of TLS handshakes (listener scope).
pub(crate) mod names {
    /// Counter: handshakes completed.
    pub(crate) const HANDSHAKES: &str = "https.handshakes";
    /// Counters: handshakes that failed, by reason
    /// (`https.handshake.failed.<reason>`).
    pub(crate) const FAILED: [&str; 5] = [
        "https.handshake.failed.not_tls",
        "https.handshake.failed.oversized_record",
        "https.handshake.failed.refused",
        "https.handshake.failed.timeout",
        "https.handshake.failed.aborted",
    ];
}

/// An HTTPS listener's handshake counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HandshakeHandles {
    ok: Option<crate::metrics::MetricHandle>,
    failed: [Option<crate::metrics::MetricHandle>; 5],
}

impl HandshakeHandles {
    /// Registers the counters in the listener's scope.
    pub(crate) fn register(
        registry: &mut crate::metrics::MetricsRegistry,
        scope: crate::metrics::Scope,
    ) -> Self {
        let mut r = |name: &str| {
            crate::metrics::register(
                registry,
                name,
                scope.clone(),
                crate::metrics::MetricKind::Counter,
            )
        };
        HandshakeHandles {
            ok: r(names::HANDSHAKES),
            failed: names::FAILED.map(&mut r),
        }
    }

    /// Counts a handshake's end.
    pub(crate) fn count(
        &self,
        registry: &mut crate::metrics::MetricsRegistry,
        event: Result<(), HandshakeFailure>,
    ) {
        let handle = match event {
            Ok(()) => self.ok,
            Err(why) => self.failed[why as usize],
        };
        crate::metrics::count(registry, handle, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_counts_under_its_own_name() {
        for why in [
            HandshakeFailure::NotTls,
            HandshakeFailure::OversizedRecord,
            HandshakeFailure::Refused,
            HandshakeFailure::Timeout,
            HandshakeFailure::Aborted,
        ] {
            let name = names::FAILED[why as usize];
            assert_eq!(
                name.strip_prefix("https.handshake.failed."),
                Some(why.as_str())
            );
        }
    }

    #[test]
    fn rustls_errors_map_to_reasons() {
        use rustls::{Error, InvalidMessage};
        assert_eq!(
            HandshakeFailure::of(&Error::InvalidMessage(InvalidMessage::InvalidContentType)),
            HandshakeFailure::NotTls
        );
        assert_eq!(
            HandshakeFailure::of(&Error::InvalidMessage(InvalidMessage::MessageTooLarge)),
            HandshakeFailure::OversizedRecord
        );
        assert_eq!(
            HandshakeFailure::of(&Error::NoCertificatesPresented),
            HandshakeFailure::Refused
        );
    }
}
