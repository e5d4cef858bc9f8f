//! The worker's mio token table: which object each readiness event is for.
//!
//! Owns the slab of token owners. Every registered socket has exactly one
//! entry, removed when the socket is deregistered, so a late event for a
//! closed socket finds nothing (or, after reuse, an owner that checks its
//! own state). TCP and HTTP listeners and sessions plug in as more variants.

use mio::Token;
use slab::Slab;

use crate::health::ProbeId;
use crate::http::HttpToken;
use crate::tcp::TcpToken;
use crate::udp::UdpToken;

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenOwner {
    /// The channel to the master.
    Channel,
    /// A socket of the UDP shell.
    Udp(UdpToken),
    /// A socket of the TCP proxy (see `streams.rs`).
    Tcp(TcpToken),
    /// A socket of the HTTP proxy (see `streams.rs`).
    Http(HttpToken),
    /// A health probe's socket (see `crate::health::prober`).
    Probe(ProbeId),
}

/// The token table.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    owners: Slab<TokenOwner>,
}

impl Tokens {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A fresh token for `owner`.
    pub(crate) fn insert(&mut self, owner: TokenOwner) -> Token {
        Token(self.owners.insert(owner))
    }

    /// Forgets a token (its socket was deregistered).
    pub(crate) fn remove(&mut self, token: Token) {
        self.owners.try_remove(token.0);
    }

    /// The owner of a token, if it is still registered.
    pub(crate) fn get(&self, token: Token) -> Option<TokenOwner> {
        self.owners.get(token.0).copied()
    }

    /// Registered tokens.
    pub(crate) fn len(&self) -> usize {
        self.owners.len()
    }
}

impl From<UdpToken> for TokenOwner {
    fn from(token: UdpToken) -> Self {
        TokenOwner::Udp(token)
    }
}

impl From<TcpToken> for TokenOwner {
    fn from(token: TcpToken) -> Self {
        TokenOwner::Tcp(token)
    }
}

impl From<HttpToken> for TokenOwner {
    fn from(token: HttpToken) -> Self {
        TokenOwner::Http(token)
    }
}

impl From<ProbeId> for TokenOwner {
    fn from(probe: ProbeId) -> Self {
        TokenOwner::Probe(probe)
    }
}
