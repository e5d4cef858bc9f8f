//! The sozu proxy library: protocol cores (pure state machines) under
//! [`protocol`], their I/O shells, load balancing, backends, metrics and the
//! worker's event loop.

// Every public item is documented and every `pub` is reachable: the
// library's surface is what the binary, the e2e tests, bench and fuzz use,
// so an item that is `pub` but unreachable is one whose visibility lies.
#![deny(missing_docs, unreachable_pub)]
// An `unsafe` block says why it is sound (fd ownership, FFI buffers).
#![deny(clippy::undocumented_unsafe_blocks)]

pub(crate) mod access;
pub mod backends;
pub mod health;
pub mod http;
pub mod listen_socket;
pub(crate) mod load_balancing;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod stream;
pub mod tcp;
pub mod tls;
pub(crate) mod token_table;
pub mod udp;
