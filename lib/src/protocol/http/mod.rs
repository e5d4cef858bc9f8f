//! HTTP/1.1's pure parts: request and response heads ([`head`]), body
//! framing ([`body`]), routing by host and path ([`router`]) and the HSTS
//! policy stamped on responses ([`hsts`]).
//!
//! Bytes in, decisions out: no socket, no clock, no metric. The I/O shell
//! that drives them, one session per client connection, is [`crate::http`].

pub mod body;
pub mod head;
pub mod hsts;
pub mod router;
