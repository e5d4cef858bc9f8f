//! Per-request access records of the HTTP proxy on the `access` tracing
//! target (`protocol = "http"`).
//!
//! Owns the record's shape. One record per request that got a final answer
//! (from a backend or from the proxy) or was cut off; it borrows from the
//! session and never decides anything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::access::{millis, OrDash, Tags, ACCESS_TARGET};
use crate::backends::{BackendId, ClusterId};

/// The access record of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpAccessRecord<'a> {
    pub listener: SocketAddr,
    pub client: SocketAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// The final status sent, if any.
    pub status: Option<u16>,
    pub cluster: Option<&'a ClusterId>,
    pub backend: Option<(&'a BackendId, SocketAddr)>,
    pub tags: Option<&'a BTreeMap<String, String>>,
    /// Request bytes read from the client (head and body).
    pub bytes_in: u64,
    /// Response bytes written to the client (head and body).
    pub bytes_out: u64,
    /// From the request's first byte to the response's last.
    pub duration: Duration,
    /// `backend` for a forwarded answer, else why the proxy answered or
    /// cut the request (`no_route`, `no_backend`, `backend_timeout`…).
    pub outcome: &'a str,
    /// The id of the proxy's own answer (its `%REQUEST_ID`), so the id an
    /// error page shows finds its record; none for a forwarded answer.
    pub request_id: Option<&'a str>,
}

impl HttpAccessRecord<'_> {
    /// Emits the record at INFO on the `access` target.
    pub(crate) fn emit(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            protocol = "http",
            listener = %self.listener,
            client = %self.client,
            method = self.method,
            host = self.host,
            path = self.path,
            status = %OrDash(self.status),
            cluster = %OrDash(self.cluster),
            backend_id = %OrDash(self.backend.map(|(id, _)| id)),
            backend_addr = %OrDash(self.backend.map(|(_, addr)| addr)),
            tags = %Tags(self.tags),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = millis(self.duration),
            outcome = self.outcome,
            request_id = %OrDash(self.request_id),
            "request"
        );
    }
}
