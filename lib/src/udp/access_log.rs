//! Per-flow access records, emitted once per closed flow on the `access`
//! tracing target.
//!
//! Owns the record's shape and its field names (what operators grep and
//! parse). It borrows from the flow being closed, so emitting allocates
//! nothing beyond what the tracing subscriber does; it never decides when a
//! flow closes (the UDP core does) and never writes a file itself (the
//! subscriber routes the `access` target to `access_logs_target`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::access::{millis, OrDash, Tags, ACCESS_TARGET};
use crate::backends::{BackendId, ClusterId};

/// Why a flow ended, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowCloseReason {
    /// No datagram either way within the idle timeout.
    IdleTimeout,
    /// The `responses` cap was reached (e.g. one DNS answer).
    ResponsesReached,
    /// The `requests` cap was reached.
    RequestsReached,
    /// The backend was removed from its cluster.
    BackendRemoved,
    /// The backend refused a datagram (ECONNREFUSED).
    BackendRefused,
    /// The upstream socket could not be opened (EMFILE, ENOBUFS…).
    UpstreamOpenFailed,
    /// No backend was available when the flow needed one.
    NoBackend,
    /// The listener was deactivated or removed.
    ListenerClosed,
    /// The worker stopped (hard stop).
    Shutdown,
}

impl FlowCloseReason {
    /// The reason as written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowCloseReason::IdleTimeout => "idle_timeout",
            FlowCloseReason::ResponsesReached => "responses_reached",
            FlowCloseReason::RequestsReached => "requests_reached",
            FlowCloseReason::BackendRemoved => "backend_removed",
            FlowCloseReason::BackendRefused => "backend_refused",
            FlowCloseReason::UpstreamOpenFailed => "upstream_open_failed",
            FlowCloseReason::NoBackend => "no_backend",
            FlowCloseReason::ListenerClosed => "listener_closed",
            FlowCloseReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for FlowCloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The access record of one closed flow. "In" is client → backend, "out"
/// is backend → client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowAccessRecord<'a> {
    /// The listener the flow arrived on.
    pub listener: SocketAddr,
    /// The client's source address (the flow key).
    pub client: SocketAddr,
    /// The cluster, if one was matched.
    pub cluster: Option<&'a ClusterId>,
    /// The backend id and address, if one was chosen.
    pub backend: Option<(&'a BackendId, SocketAddr)>,
    /// The frontend's tags.
    pub tags: Option<&'a BTreeMap<String, String>>,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the first datagram to the close.
    pub duration: Duration,
    pub reason: FlowCloseReason,
}

impl FlowAccessRecord<'_> {
    /// Emits the record at INFO on the [`ACCESS_TARGET`] target, one
    /// structured field per item; `duration_ms` is in milliseconds.
    pub(crate) fn emit(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            protocol = "udp",
            listener = %self.listener,
            client = %self.client,
            cluster = %OrDash(self.cluster),
            backend_id = %OrDash(self.backend.map(|(id, _)| id)),
            backend_addr = %OrDash(self.backend.map(|(_, addr)| addr)),
            tags = %Tags(self.tags),
            datagrams_in = self.datagrams_in,
            datagrams_out = self.datagrams_out,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = millis(self.duration),
            reason = self.reason.as_str(),
            "flow closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// An event's target and its fields as strings.
    type Captured = (String, BTreeMap<String, String>);

    /// Records every event.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Captured>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            self.0.insert(field.name().to_owned(), value.to_string());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            let target = event.metadata().target().to_owned();
            self.0.lock().unwrap().push((target, fields));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn capture(f: impl FnOnce()) -> Vec<Captured> {
        let c = Capture::default();
        tracing::subscriber::with_default(c.clone(), f);
        let events = c.0.lock().unwrap().clone();
        events
    }

    #[test]
    fn record_carries_every_field_on_the_access_target() {
        let cluster = ClusterId::from("dns");
        let backend = BackendId::from("dns-1");
        let tags = BTreeMap::from([
            ("zone".to_owned(), "eu".to_owned()),
            ("app".to_owned(), "x".to_owned()),
        ]);
        let record = FlowAccessRecord {
            listener: "0.0.0.0:53".parse().unwrap(),
            client: "192.0.2.7:40000".parse().unwrap(),
            cluster: Some(&cluster),
            backend: Some((&backend, "10.0.0.1:5353".parse().unwrap())),
            tags: Some(&tags),
            datagrams_in: 1,
            datagrams_out: 2,
            bytes_in: 40,
            bytes_out: 512,
            duration: Duration::from_micros(12_345),
            reason: FlowCloseReason::ResponsesReached,
        };
        let events = capture(|| record.emit());
        assert_eq!(events.len(), 1);
        let (target, f) = &events[0];
        assert_eq!(target, "access");
        let expect = [
            ("protocol", "udp"),
            ("listener", "0.0.0.0:53"),
            ("client", "192.0.2.7:40000"),
            ("cluster", "dns"),
            ("backend_id", "dns-1"),
            ("backend_addr", "10.0.0.1:5353"),
            ("tags", "app=x,zone=eu"),
            ("datagrams_in", "1"),
            ("datagrams_out", "2"),
            ("bytes_in", "40"),
            ("bytes_out", "512"),
            ("duration_ms", "12"),
            ("reason", "responses_reached"),
            ("message", "flow closed"),
        ];
        for (k, v) in expect {
            assert_eq!(f.get(k).map(String::as_str), Some(v), "field {k}");
        }
        assert_eq!(f.len(), expect.len());
    }

    #[test]
    fn absent_cluster_backend_and_tags_print_dashes() {
        let record = FlowAccessRecord {
            listener: "[::]:53".parse().unwrap(),
            client: "[2001:db8::1]:1234".parse().unwrap(),
            cluster: None,
            backend: None,
            tags: None,
            datagrams_in: 1,
            datagrams_out: 0,
            bytes_in: 9,
            bytes_out: 0,
            duration: Duration::ZERO,
            reason: FlowCloseReason::NoBackend,
        };
        let events = capture(|| record.emit());
        let f = &events[0].1;
        assert_eq!(f["cluster"], "-");
        assert_eq!(f["backend_id"], "-");
        assert_eq!(f["backend_addr"], "-");
        assert_eq!(f["tags"], "-");
        assert_eq!(f["client"], "[2001:db8::1]:1234");
        assert_eq!(f["reason"], "no_backend");
    }
}
