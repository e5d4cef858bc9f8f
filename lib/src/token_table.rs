//! How a shell sees the worker's token table: one `Poll` serves every
//! protocol, so each socket's token comes from the loop's table, which
//! lives in `crate::server`. A shell names its sockets with its own token
//! kind `T`; the loop maps that kind to its owner. Kept apart from both so
//! neither the shells nor the health prober import the loop.

use mio::Token;

/// The loop's token table, seen by one protocol: `T` says which of the
/// protocol's sockets a token stands for.
pub trait TokenTable<T> {
    /// A fresh token for `owner`.
    fn insert(&mut self, owner: T) -> Token;
    /// Forgets a token (its socket is being deregistered).
    fn remove(&mut self, token: Token);
}
