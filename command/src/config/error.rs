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
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file holds no key at all (empty, or only comments).
    #[error("configuration file {} holds no key (empty or only comments): write at least the listeners and clusters to serve, or one global key such as worker_count = 2 to start a master configured from the CLI", path.display())]
    Empty { path: PathBuf },
    /// The text is not valid TOML.
    #[error("invalid TOML: {message} (at {at})")]
    Syntax { message: String, at: Location },
    /// A value of the wrong type or out of range.
    #[error("{key}: expected {expected}, got {got} (at {at})")]
    InvalidValue {
        key: String,
        expected: String,
        got: String,
        at: Location,
    },
    /// A key this loader does not know (and does not accept-and-ignore).
    #[error("unknown key {key} (at {at})")]
    UnknownKey { key: String, at: Location },
    /// A required key is absent; `at` is where its table starts.
    #[error("{key}: missing required key (at {at})")]
    MissingKey { key: String, at: Location },
    /// Two listeners of one protocol on one address.
    #[error("{key}: a {protocol} listener on {address} is already defined on line {first_line}; only a TCP and a UDP listener may share an address (at {at})")]
    DuplicateListener {
        key: String,
        protocol: &'static str,
        address: std::net::SocketAddr,
        /// Line of the first listener on that address.
        first_line: usize,
        at: Location,
    },
    /// Values that are each valid but contradict one another.
    #[error("{key}: {reason} (at {at})")]
    Inconsistent {
        key: String,
        reason: String,
        at: Location,
    },
}
