//! Access records of the TCP and HTTP proxies, as a subscriber of the
//! `access` target sees them: one per TCP session, one per HTTP request
//! (forwarded or answered by the proxy), with the documented fields.

#[macro_use]
mod tcp_support;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::Shutdown;
use std::sync::{Arc, Mutex};

use tcp_support::http_backend::*;
use tcp_support::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Fields = BTreeMap<String, String>;

/// Keeps every event of the `access` target.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fields>>>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
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
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "access"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    /// Waits (bounded) until `n` records match `pred`.
    fn wait(&self, n: usize, pred: impl Fn(&Fields) -> bool) -> Vec<Fields> {
        for _ in 0..500 {
            let found: Vec<Fields> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|f| pred(f))
                .cloned()
                .collect();
            if found.len() >= n {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("fewer than {n} matching access records");
    }
}

#[test]
fn one_record_per_tcp_session_and_per_http_request() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.clone()).unwrap();
    let web = http_backend("web");
    let lp = LoopHandle::start();
    lp.cluster("echo", &[echo_backend()], None);
    lp.cluster("web", &[web.address], None);
    let tcp_front = lp.tcp_listener("echo", false, 30);
    let http_front = lp.http_listener(30, 30);
    lp.http_route(http_front, "example.com", "/", "web");

    let mut c = client(tcp_front);
    c.write_all(b"12345").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"12345");
    let tcp = capture.wait(1, |f| f.get("protocol").map(String::as_str) == Some("tcp"));
    let r = &tcp[0];
    assert_eq!(r["listener"], tcp_front.to_string());
    assert_eq!(r["client"], c.local_addr().unwrap().to_string());
    assert_eq!(r["cluster"], "echo");
    assert_eq!(r["backend_id"], "b0");
    assert_eq!(r["bytes_in"], "5");
    assert_eq!(r["bytes_out"], "5");
    assert_eq!(r["reason"], "completed");

    let (mut s, mut rd) = http_client(http_front);
    assert_eq!(
        get(&mut s, &mut rd, "example.com", "/a?b").unwrap().status,
        200
    );
    assert_eq!(
        get(&mut s, &mut rd, "unknown.org", "/").unwrap().status,
        404
    );
    let http = capture.wait(2, |f| f.get("protocol").map(String::as_str) == Some("http"));
    let ok = http.iter().find(|f| f["status"] == "200").unwrap();
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], "example.com");
    assert_eq!(ok["path"], "/a?b");
    assert_eq!(ok["cluster"], "web");
    assert_eq!(ok["backend_id"], "b0");
    assert_eq!(ok["backend_addr"], web.address.to_string());
    assert_eq!(ok["outcome"], "backend");
    assert!(ok["bytes_out"].parse::<u64>().unwrap() > 0);
    let missing = http.iter().find(|f| f["status"] == "404").unwrap();
    assert_eq!(missing["cluster"], "-");
    assert_eq!(missing["backend_id"], "-");
    assert_eq!(missing["outcome"], "no_route");
    lp.stop();
}
