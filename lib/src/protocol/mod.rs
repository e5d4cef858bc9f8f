//! Pure protocol state machines: no sockets, no clock reads, no randomness.
//! Their I/O shells live beside them in the crate root.

pub mod udp;
