//! One command-socket client: its framed channel (bounded by
//! `max_command_buffer_size`), its credentials, and whether it waits for an
//! answer.
//!
//! A client is served one order at a time, in order: Sōzu 2.x answers carry
//! no request id, so a client tells answers apart by their order. While an
//! order is in flight the client's further frames stay in the socket (and in
//! the bounded read buffer), so a client can never make the master buffer
//! without limit. Nothing a client sends may panic the master.

use std::time::{Duration, Instant};

use mio::Token;
use sozu_command_lib::channel::{Channel, ChannelError, FlushStatus};
use sozu_command_lib::command::{Request, Response, ResponseStatus};

use super::command_socket::Peer;

/// The master's end of a command connection.
pub(crate) type ClientChannel = Channel<Response, Request>;

/// A connected command-socket client.
pub(crate) struct Client {
    pub token: Token,
    pub channel: ClientChannel,
    pub peer: Peer,
    /// An order of this client is in flight: do not read the next one yet.
    pub busy: bool,
    /// Close once every queued answer is written (after a fatal framing
    /// error, or a refused peer).
    pub close_after_flush: bool,
    /// The channel failed: drop the client at the next opportunity.
    pub broken: bool,
    /// When the client last sent an order or got an answer: a full command
    /// socket reclaims the slot of the client idle the longest.
    pub last_active: Instant,
}

/// A client idle (no order in flight, nothing sent) at least this long may
/// lose its slot to a newcomer when the socket is at `max_command_clients`,
/// so connections that never speak cannot lock operators out.
pub(crate) const IDLE_EVICTION_AFTER: Duration = Duration::from_secs(5);

impl Client {
    pub(crate) fn new(token: Token, channel: ClientChannel, peer: Peer, now: Instant) -> Self {
        Client {
            token,
            channel,
            peer,
            busy: false,
            close_after_flush: false,
            broken: false,
            last_active: now,
        }
    }

    /// Whether this client may be evicted for a newcomer at `now`.
    pub(crate) fn is_evictable(&self, now: Instant) -> bool {
        !self.busy && now.saturating_duration_since(self.last_active) >= IDLE_EVICTION_AFTER
    }

    /// Queues `response` and writes what the socket takes now. An answer too
    /// large for the channel becomes a FAILURE that says so.
    pub(crate) fn answer(&mut self, response: Response) {
        if self.broken {
            return;
        }
        let status = response.status();
        match self.channel.queue_message(&response) {
            Ok(()) => {}
            Err(
                error @ (ChannelError::OutgoingFrameTooLarge { .. }
                | ChannelError::OutgoingBufferFull { .. }),
            ) => {
                let fallback = Response {
                    status: ResponseStatus::Failure as i32,
                    message: format!("the answer does not fit the command channel: {error}"),
                    content: None,
                };
                if self.channel.queue_message(&fallback).is_err() {
                    self.broken = true;
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(client = self.token.0, %error, "cannot encode an answer");
                self.broken = true;
                return;
            }
        }
        if status != ResponseStatus::Processing {
            self.busy = false;
        }
        self.flush();
    }

    /// Writes queued answers; marks the client broken on a socket error.
    pub(crate) fn flush(&mut self) {
        if self.broken {
            return;
        }
        match self.channel.flush() {
            Ok(FlushStatus::Done | FlushStatus::Pending) => {}
            Err(error) => {
                tracing::debug!(client = self.token.0, %error, "command client gone");
                self.broken = true;
            }
        }
    }

    /// Whether the client can be dropped now.
    pub(crate) fn is_finished(&self) -> bool {
        self.broken || (self.close_after_flush && !self.channel.wants_write())
    }
}

/// An answer with no content.
pub(crate) fn response(status: ResponseStatus, message: impl Into<String>) -> Response {
    Response {
        status: status as i32,
        message: message.into(),
        content: None,
    }
}
