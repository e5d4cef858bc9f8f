//! The sozu proxy library: protocol cores (pure state machines) under
//! [`protocol`], their I/O shells, load balancing, backends, metrics and the
//! worker's event loop.

pub mod access;
pub mod backends;
pub mod health;
pub mod http;
pub mod listen_socket;
pub mod load_balancing;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod stream;
pub mod tcp;
pub mod token_table;
pub mod udp;
