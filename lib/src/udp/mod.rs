//! The UDP I/O shell: sockets around the sans-io flow manager
//! ([`crate::protocol::udp`]), one per UDP listener, hosted by the worker's
//! event loop ([`crate::server`]). See `doc/udp.md` for what an operator sees.
//!
//! Owns listener sockets (passed by the master, see `crate::listen_socket`;
//! IPv4 / IPv6, packet info on wildcard addresses), one connected upstream
//! socket per flow with its own token (one per backend for a one-way
//! cluster, see [`one_way`]; a few per backend, shared by every query, for a
//! `DNS_ID` cluster, see [`dns_mux`]),
//! `recvmmsg` / `sendmmsg` batches, bounded write queues, and the metrics and access records of flows. It must never make
//! a flow decision itself (admission, timers, caps, PROXY headers are the
//! core's), never read the clock (the loop passes `now`), and never allocate
//! per datagram on an established flow.

pub(crate) mod access_log;
pub(crate) mod budget;
pub(crate) mod dns_mux;
pub(crate) mod handover;
pub(crate) mod ledger;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod mmsg;
pub(crate) mod one_way;
pub(crate) mod quic_lb;
pub mod shell;
pub(crate) mod socket;
mod write_queue;

#[cfg(test)]
mod tests;

pub(crate) use handover::FlowExport;
pub use listener::{IoContext, UdpListener, DATAGRAM_BUDGET};
pub use shell::UdpError;
pub(crate) use shell::UdpShell;

use crate::protocol::udp::FlowId;

/// What a UDP shell token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpToken {
    /// A listener socket, by its index in the shell.
    Listener(usize),
    /// The upstream socket of one flow of one listener.
    Upstream {
        /// The listener index.
        listener: usize,
        /// The flow.
        flow: FlowId,
    },
    /// The one-way socket of one backend of one listener (replies to it
    /// are read and dropped).
    OneWay {
        /// The listener index.
        listener: usize,
        /// The socket's slot in the listener's one-way sockets.
        slot: usize,
    },
    /// A `DNS_ID` socket of one backend of one listener (its answers are
    /// mapped back to their clients).
    DnsMux {
        /// The listener index.
        listener: usize,
        /// The socket's slot in the listener's DNS mux.
        slot: usize,
    },
}
