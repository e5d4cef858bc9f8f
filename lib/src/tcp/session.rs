//! One TCP session: the client side, the backend side, a bounded buffer
//! each way, and the relay between them.
//!
//! Owns the byte relay, half-close propagation, the optional PROXY header
//! sent ahead of the client's bytes, and the session's deadline. Backend
//! choice, connects and retries, metrics and access records belong to the
//! proxy ([`super::TcpProxy`]); this file never registers sockets.
//!
//! Backpressure: a side is read only while the buffer toward the other side
//! has room; a full buffer leaves the bytes in the kernel, whose receive
//! window then slows the sender down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backends::{BackendId, ClusterId};
use crate::protocol::proxy_protocol::{self, ReceivedHeader};

use super::access::SessionCloseReason;
use super::metrics::RelayHandles;
use crate::stream::buffer::Buffer;
use crate::stream::deadlines::ArmedTimer;
use crate::stream::limit::ConnectionSlot;
use crate::stream::socket::{ReadOutcome, Side};

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the client's PROXY header (`expect_proxy`).
    ExpectProxy,
    /// Header read (or none expected): a backend connect must start.
    NeedsBackend,
    /// A backend connect is in progress.
    Connecting,
    /// Both sides connected: relaying.
    Relaying,
}

/// The session's timeouts, captured from its listener at accept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub front: Duration,
    pub back: Duration,
    pub connect: Duration,
}

/// Bytes to send to the backend before the client's: a PROXY header.
#[derive(Debug)]
pub(crate) struct Preamble {
    bytes: Vec<u8>,
    sent: usize,
}

impl Preamble {
    /// A preamble of these bytes.
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Preamble { bytes, sent: 0 }
    }

    fn remaining(&self) -> &[u8] {
        &self.bytes[self.sent..]
    }
}

/// Bytes moved by one pump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    /// Read from the client.
    pub bytes_in: u64,
    /// Read from the backend.
    pub bytes_out: u64,
}

/// A TCP session.
#[derive(Debug)]
pub(crate) struct Session {
    pub listener: usize,
    pub listener_address: SocketAddr,
    pub client: SocketAddr,
    pub front: Side,
    pub back: Option<Side>,
    pub phase: Phase,
    pub cluster: Option<ClusterId>,
    pub tags: Option<Arc<BTreeMap<String, String>>>,
    pub backend: Option<(BackendId, SocketAddr)>,
    /// Counted in the backend's flow counter (undo at close).
    pub flow_counted: bool,
    pub preamble: Option<Preamble>,
    /// The PROXY header the client sent, kept for RELAY_HEADER clusters.
    pub received_header: Option<Vec<u8>>,
    pub up: Buffer,
    pub down: Buffer,
    pub attempt: u32,
    pub timeouts: Timeouts,
    pub started: Instant,
    pub connect_started: Option<Instant>,
    pub connect_time: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub timer: ArmedTimer,
    pub cluster_handles: RelayHandles,
    pub backend_handles: RelayHandles,
    /// Its place in the worker's `max_connections` (freed with the session).
    pub _slot: ConnectionSlot,
}

impl Session {
    /// The session's current deadline and the reason it would close then.
    pub(crate) fn deadline(&self) -> (Instant, SessionCloseReason) {
        match self.phase {
            Phase::ExpectProxy | Phase::NeedsBackend => (
                self.front.last_activity + self.timeouts.front,
                SessionCloseReason::FrontTimeout,
            ),
            Phase::Connecting => (
                self.connect_started.unwrap_or(self.started) + self.timeouts.connect,
                SessionCloseReason::ConnectTimeout,
            ),
            Phase::Relaying => {
                let front = self.front.last_activity + self.timeouts.front;
                match &self.back {
                    Some(back) if back.last_activity + self.timeouts.back < front => (
                        back.last_activity + self.timeouts.back,
                        SessionCloseReason::BackTimeout,
                    ),
                    _ => (front, SessionCloseReason::FrontTimeout),
                }
            }
        }
    }

    /// Where its facts are counted: its backend once connected, else its
    /// cluster. Never both, so a cluster's total (its own scope plus its
    /// backends', as query-metrics sums them) counts each fact once.
    pub(crate) fn handles(&self) -> RelayHandles {
        if self.phase == Phase::Relaying {
            self.backend_handles
        } else {
            self.cluster_handles
        }
    }

    /// True once both directions finished and were delivered.
    pub(crate) fn is_complete(&self) -> bool {
        let Some(back) = &self.back else {
            return false;
        };
        self.phase == Phase::Relaying
            && self.front.read_closed
            && back.write_closed
            && back.read_closed
            && self.front.write_closed
    }

    /// Moves bytes both ways until nothing more can move now. `Err` closes
    /// the session with that reason.
    pub(crate) fn pump(&mut self, now: Instant) -> Result<Moved, SessionCloseReason> {
        let mut moved = Moved::default();
        loop {
            let mut progress = false;
            // Client → up buffer (also while connecting: up to the bound).
            match self
                .front
                .read_into(self.up.space(), now)
                .map_err(|_| SessionCloseReason::FrontError)?
            {
                ReadOutcome::Read(n) => {
                    self.up.fill(n);
                    moved.bytes_in += n as u64;
                    progress = true;
                }
                ReadOutcome::Closed => progress = true,
                ReadOutcome::Idle => {}
            }
            if self.phase == Phase::ExpectProxy {
                self.read_proxy_header()?;
                if self.phase == Phase::ExpectProxy {
                    if progress {
                        continue;
                    }
                    break;
                }
            }
            if self.phase == Phase::Relaying {
                progress |= self.relay_to_backend(now, &mut moved)?;
            }
            // Down buffer → client.
            let n = self
                .front
                .write_from(self.down.data(), now)
                .map_err(|_| SessionCloseReason::FrontError)?;
            if n > 0 {
                self.down.consume(n);
                progress = true;
            }
            let backend_done = self.back.as_ref().is_some_and(|b| b.read_closed);
            if backend_done && self.down.is_empty() && !self.front.write_closed {
                self.front.shutdown_write();
            }
            if !progress {
                break;
            }
        }
        self.bytes_in += moved.bytes_in;
        self.bytes_out += moved.bytes_out;
        Ok(moved)
    }

    fn relay_to_backend(
        &mut self,
        now: Instant,
        moved: &mut Moved,
    ) -> Result<bool, SessionCloseReason> {
        let Some(back) = self.back.as_mut() else {
            return Ok(false);
        };
        let mut progress = false;
        if let Some(preamble) = self.preamble.as_mut() {
            let n = back
                .write_from(preamble.remaining(), now)
                .map_err(|_| SessionCloseReason::BackError)?;
            preamble.sent += n;
            if preamble.remaining().is_empty() {
                self.preamble = None;
            }
            progress |= n > 0;
        }
        if self.preamble.is_none() {
            let n = back
                .write_from(self.up.data(), now)
                .map_err(|_| SessionCloseReason::BackError)?;
            if n > 0 {
                self.up.consume(n);
                progress = true;
            }
            if self.front.read_closed && self.up.is_empty() && !back.write_closed {
                back.shutdown_write();
            }
        }
        match back
            .read_into(self.down.space(), now)
            .map_err(|_| SessionCloseReason::BackError)?
        {
            ReadOutcome::Read(n) => {
                self.down.fill(n);
                moved.bytes_out += n as u64;
                progress = true;
            }
            ReadOutcome::Closed => progress = true,
            ReadOutcome::Idle => {}
        }
        Ok(progress)
    }

    /// Looks for the client's PROXY header at the start of the up buffer;
    /// on success strips it, takes the real client address from it and
    /// moves to [`Phase::NeedsBackend`].
    fn read_proxy_header(&mut self) -> Result<(), SessionCloseReason> {
        match proxy_protocol::parse(self.up.data()) {
            Ok(Some(ReceivedHeader { len, source, .. })) => {
                self.received_header = Some(self.up.data()[..len].to_vec());
                self.up.consume(len);
                if let Some(source) = source {
                    self.client = source;
                }
                self.phase = Phase::NeedsBackend;
                Ok(())
            }
            Ok(None) if self.front.read_closed || self.up.is_full() => {
                Err(SessionCloseReason::ProxyHeaderInvalid)
            }
            Ok(None) => Ok(()),
            Err(error) => {
                tracing::debug!(client = %self.client, %error, "bad PROXY header");
                Err(SessionCloseReason::ProxyHeaderInvalid)
            }
        }
    }
}
