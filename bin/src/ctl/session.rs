//! One client connection to the master's command socket: send an order, wait
//! for its final answer while reporting progress.
//!
//! Blocking on purpose (a CLI does one thing at a time) over the framed
//! [`Channel`]; every wait is bounded by the timeout. It owns the socket and
//! must never retry an order: orders are not idempotent.

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sozu_command_lib::channel::{Channel, ChannelError};
use sozu_command_lib::command::{Request, Response, ResponseStatus};

/// Initial buffer size of the client channel (grows up to the maximum).
const BUFFER_SIZE: usize = 16_384;

/// Why an order got no final answer.
#[derive(Debug)]
pub(crate) enum SessionError {
    /// The socket could not be connected.
    Connect { path: PathBuf, source: io::Error },
    /// The order could not be sent.
    Send { source: ChannelError },
    /// The master did not take the order, or did not answer (nor report
    /// progress), within the timeout.
    Timeout { after: Duration },
    /// The master closed the connection before a final answer.
    Closed,
    /// The answer could not be read.
    Receive { source: ChannelError },
    /// An answer whose status is neither OK, PROCESSING nor FAILURE.
    UnknownStatus { status: i32 },
}

/// An OS error's text without Rust's " (os error N)" suffix.
fn os_text(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => error.to_string(),
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Connect { path, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        " (is sozu running?)"
                    }
                    io::ErrorKind::PermissionDenied => {
                        " (the command socket is owner-only: run as the master's user)"
                    }
                    _ => "",
                };
                write!(
                    f,
                    "cannot connect to {}: {}{hint}",
                    path.display(),
                    os_text(source)
                )
            }
            SessionError::Send { source } => write!(f, "cannot send the order: {source}"),
            SessionError::Timeout { after } => write!(
                f,
                "no answer from the master within {}s (raise --timeout to wait longer)",
                after.as_secs()
            ),
            SessionError::Closed => {
                write!(f, "the master closed the connection before answering")
            }
            SessionError::Receive { source } => write!(f, "cannot read the answer: {source}"),
            SessionError::UnknownStatus { status } => {
                write!(f, "the master answered with an unknown status {status}")
            }
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Connect { source, .. } => Some(source),
            SessionError::Send { source } | SessionError::Receive { source } => Some(source),
            _ => None,
        }
    }
}

/// A connected client.
pub(crate) struct Session {
    channel: Channel<Request, Response>,
    timeout: Duration,
}

impl Session {
    /// Connects to the command socket at `path`.
    pub(crate) fn connect(
        path: &Path,
        timeout: Duration,
        max_answer_size: usize,
    ) -> Result<Session, SessionError> {
        let stream = UnixStream::connect(path).map_err(|source| SessionError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Session {
            channel: Channel::new(stream, BUFFER_SIZE, max_answer_size),
            timeout,
        })
    }

    /// Sends `request` and returns its final (OK or FAILURE) answer; every
    /// PROCESSING answer before it goes to `on_progress`. The timeout bounds
    /// each wait, so progress keeps a long order (an upgrade) alive.
    pub(crate) fn order(
        &mut self,
        request: &Request,
        mut on_progress: impl FnMut(&Response),
    ) -> Result<Response, SessionError> {
        match self.channel.write_message_timeout(request, self.timeout) {
            Ok(()) => {}
            Err(ChannelError::Timeout { after }) => return Err(SessionError::Timeout { after }),
            Err(source) => {
                // The master may refuse a client (uid not allowed, too many
                // clients) with an answer and close before reading the order:
                // that answer says more than the failed write.
                return match self.channel.read_message_timeout(self.timeout) {
                    Ok(response) if response.status != ResponseStatus::Processing as i32 => {
                        Ok(response)
                    }
                    _ => Err(SessionError::Send { source }),
                };
            }
        }
        loop {
            let response = match self.channel.read_message_timeout(self.timeout) {
                Ok(response) => response,
                Err(ChannelError::Timeout { after }) => {
                    return Err(SessionError::Timeout { after })
                }
                Err(ChannelError::PeerClosed | ChannelError::PeerClosedMidFrame { .. }) => {
                    return Err(SessionError::Closed)
                }
                Err(source) => return Err(SessionError::Receive { source }),
            };
            match ResponseStatus::try_from(response.status) {
                Ok(ResponseStatus::Processing) => on_progress(&response),
                Ok(ResponseStatus::Ok | ResponseStatus::Failure) => return Ok(response),
                Err(_) => {
                    return Err(SessionError::UnknownStatus {
                        status: response.status,
                    })
                }
            }
        }
    }
}
