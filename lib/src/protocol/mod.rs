//! Pure protocol state machines: no sockets, no clock reads, no randomness,
//! no metrics. Bytes and time come in, decisions come out.
//!
//! - [`udp`]: the UDP flow manager (its shell is [`crate::udp`]);
//! - [`http`]: HTTP/1.1 heads, body framing and routing (its shell is
//!   [`crate::http`]);
//! - [`hash`]: the 64-bit mixer;
//! - [`ids`]: the cluster and backend identifiers every layer shares;
//! - [`proxy_protocol`]: the PROXY protocol codec for streams (used by
//!   [`crate::tcp`] and [`crate::http`]).

pub mod hash;
pub mod http;
pub mod ids;
pub mod proxy_protocol;
pub mod udp;
