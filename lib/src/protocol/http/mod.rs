//! HTTP/1.1's pure parts: request and response heads ([`head`]), body
//! framing ([`body`]) and routing by host and path ([`router`]).
//!
//! Bytes in, decisions out: no socket, no clock, no metric. The I/O shell
//! that drives them, one session per client connection, is [`crate::http`].

pub mod body;
pub mod head;
pub mod router;
