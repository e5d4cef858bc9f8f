//! The one error type of configuration loading: every variant names the key
//! path and, where the file says it, the line.

use std::fmt;
use std::path::PathBuf;

/// A place in a configuration file: its name and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file path (or the origin given to [`super::Config::from_str`]).
    pub origin: String,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.line)
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The cause is in the message, not a
    /// `source`, so that error chains print it once.
    #[error("cannot read configuration file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        error: std::io::Error,
    },
    /// The file holds no key at all (empty, or only comments).
    #[error("configuration file {} holds no key (empty or only comments): write at least the listeners and clusters to serve, or one global key such as worker_count = 2 to start a master configured from the CLI", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The text is not valid TOML.
    #[error("invalid TOML: {message} (at {at})")]
    Syntax {
        /// The TOML parser's message.
        message: String,
        /// Where.
        at: Location,
    },
    /// A value of the wrong type or out of range.
    #[error("{key}: expected {expected}, got {got} (at {at})")]
    InvalidValue {
        /// The dotted key (`clusters.dns.frontends[0].address`).
        key: String,
        /// What the key takes.
        expected: String,
        /// What the file gave.
        got: String,
        /// Where.
        at: Location,
    },
    /// A key this loader does not know (and does not accept-and-ignore).
    #[error("unknown key {key} (at {at})")]
    UnknownKey {
        /// The dotted key.
        key: String,
        /// Where.
        at: Location,
    },
    /// A required key is absent; `at` is where its table starts.
    #[error("{key}: missing required key (at {at})")]
    MissingKey {
        /// The dotted key.
        key: String,
        /// Where its table starts.
        at: Location,
    },
    /// Two listeners of one protocol on one address.
    #[error("{key}: a {protocol} listener on {address} is already defined on line {first_line}; only a TCP and a UDP listener may share an address (at {at})")]
    DuplicateListener {
        /// The second listener's key.
        key: String,
        /// Their protocol.
        protocol: &'static str,
        /// Their address.
        address: std::net::SocketAddr,
        /// Line of the first listener on that address.
        first_line: usize,
        /// Where the second one is.
        at: Location,
    },
    /// Values that are each valid but contradict one another.
    #[error("{key}: {reason} (at {at})")]
    Inconsistent {
        /// The dotted key that contradicts another.
        key: String,
        /// Which rule it breaks.
        reason: String,
        /// Where.
        at: Location,
    },
}
