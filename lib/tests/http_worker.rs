//! The TCP and HTTP proxies inside the real worker `Server`, driven by
//! orders over its channel: UDP, TCP and HTTP listeners served at once,
//! listener and frontend orders applied live, a refused bind rolled back,
//! and soft-stop waiting for an in-flight HTTP request.

#[macro_use]
mod tcp_support;
mod worker_common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use sozu_command_lib::command::{
    self, request::RequestType, ActivateListener, Cluster, DeactivateListener, HttpListenerConfig,
    ListenerType, PathRule, PathRuleKind, RemoveListener, RequestHttpFrontend, RequestTcpFrontend,
    ResponseStatus, RulePosition,
};
use sozu_lib::server::ServerExit;
use tcp_support::http_backend::*;
use tcp_support::{client, echo_backend, free_port, payload, read_to_end};
use worker_common::*;

fn cluster(id: &str) -> Cluster {
    Cluster {
        cluster_id: id.to_owned(),
        ..Cluster::default()
    }
}

fn http_listener(address: SocketAddr, active: bool) -> HttpListenerConfig {
    HttpListenerConfig {
        address: address.into(),
        front_timeout: 30,
        back_timeout: 30,
        connect_timeout: 3,
        request_timeout: 10,
        active,
        ..Default::default()
    }
}

fn http_frontend(
    cluster: &str,
    address: SocketAddr,
    host: &str,
    path: &str,
) -> RequestHttpFrontend {
    RequestHttpFrontend {
        cluster_id: Some(cluster.to_owned()),
        address: address.into(),
        hostname: host.to_owned(),
        path: PathRule {
            kind: PathRuleKind::Prefix as i32,
            value: path.to_owned(),
        },
        position: RulePosition::Tree as i32,
        ..Default::default()
    }
}

#[test]
fn udp_tcp_and_http_listeners_are_served_at_once_by_one_worker() {
    let mut worker = Worker::start();
    // UDP
    let (udp_front, udp_backend) = simple_setup(&mut worker, Default::default());
    // TCP
    let tcp_front = free_port();
    worker.ok(RequestType::AddTcpListener(tcp_listener(tcp_front)));
    worker.ok(RequestType::AddCluster(cluster("t")));
    worker.ok(RequestType::AddBackend(backend(
        "t",
        "echo",
        echo_backend(),
    )));
    worker.ok(RequestType::AddTcpFrontend(RequestTcpFrontend {
        cluster_id: "t".into(),
        address: tcp_front.into(),
        tags: Default::default(),
    }));
    // HTTP
    let web = http_backend("web");
    let http_front = free_port();
    worker.ok(RequestType::AddHttpListener(http_listener(
        http_front, true,
    )));
    worker.ok(RequestType::AddCluster(cluster("h")));
    worker.ok(RequestType::AddBackend(backend("h", "web", web.address)));
    worker.ok(RequestType::AddHttpFrontend(http_frontend(
        "h",
        http_front,
        "example.com",
        "/",
    )));

    // All three at once: open everything, then serve everything.
    let udp_client = udp_socket("127.0.0.1");
    let mut tcp = client(tcp_front);
    let (mut http, mut http_r) = http_client(http_front);
    udp_client.send_to(b"dns?", udp_front).unwrap();
    let data = payload(1 << 20, 7);
    let mut writer = tcp.try_clone().unwrap();
    let sent = data.clone();
    let upload = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let (query, upstream) = recv(&udp_backend);
    assert_eq!(query, b"dns?");
    udp_backend.send_to(b"answer", upstream).unwrap();
    let m = get(&mut http, &mut http_r, "example.com", "/index").unwrap();
    assert_eq!(m.status, 200);
    assert!(m.text().starts_with("backend=web path=/index"));
    assert_eq!(recv(&udp_client).0, b"answer");
    let echoed = read_to_end(&mut tcp).unwrap();
    upload.join().unwrap();
    assert!(echoed == data, "1 MB echoed intact through the worker");

    assert_eq!(worker.metric("h/http.requests"), 1);
    assert_eq!(worker.metric("h/http.status.2xx"), 1);
    worker.wait_metric("t/tcp.bytes.in", |v| v == 1 << 20);
    assert_eq!(worker.metric("t/tcp.bytes.out"), 1 << 20);
    assert_eq!(worker.metric(&format!("http.connections@{http_front}")), 1);
}

#[test]
fn listener_and_frontend_orders_apply_live() {
    let mut worker = Worker::start();
    let web = http_backend("web");
    let front = free_port();
    worker.ok(RequestType::AddHttpListener(http_listener(front, false)));
    assert!(TcpStream::connect(front).is_err(), "inactive: not bound");
    worker.ok(RequestType::ActivateListener(ActivateListener {
        address: front.into(),
        proxy: ListenerType::Http as i32,
        from_scm: false,
    }));
    worker.ok(RequestType::AddCluster(cluster("h")));
    worker.ok(RequestType::AddBackend(backend("h", "web", web.address)));
    let (mut s, mut r) = http_client(front);
    assert_eq!(get(&mut s, &mut r, "a.test", "/").unwrap().status, 404);
    worker.ok(RequestType::AddHttpFrontend(http_frontend(
        "h", front, "*.test", "/",
    )));
    let (mut s, mut r) = http_client(front);
    assert_eq!(get(&mut s, &mut r, "a.test", "/").unwrap().status, 200);
    // A regex rule is routed; one whose pattern does not compile is
    // refused by the proxy and rolled back in the state.
    let mut regex = http_frontend("h", front, "b.other", "^/x[0-9]$");
    regex.path.kind = PathRuleKind::Regex as i32;
    worker.ok(RequestType::AddHttpFrontend(regex));
    let (mut s2, mut r2) = http_client(front);
    assert_eq!(get(&mut s2, &mut r2, "b.other", "/x7").unwrap().status, 200);
    let (mut s3, mut r3) = http_client(front);
    assert_eq!(
        get(&mut s3, &mut r3, "b.other", "/x77").unwrap().status,
        404
    );
    let mut regex = http_frontend("h", front, "b.test", "^/x(");
    regex.path.kind = PathRuleKind::Regex as i32;
    let refused = worker.order(RequestType::AddHttpFrontend(regex));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(
        refused.message.contains("not a usable regular expression"),
        "{}",
        refused.message
    );
    worker.ok(RequestType::RemoveHttpFrontend(http_frontend(
        "h", front, "*.test", "/",
    )));
    assert_eq!(get(&mut s, &mut r, "a.test", "/").unwrap().status, 404);
    worker.ok(RequestType::DeactivateListener(DeactivateListener {
        address: front.into(),
        proxy: ListenerType::Http as i32,
        to_scm: false,
    }));
    assert!(
        TcpStream::connect(front).is_err(),
        "deactivated: port released"
    );
    worker.ok(RequestType::RemoveListener(RemoveListener {
        address: front.into(),
        proxy: ListenerType::Http as i32,
    }));
    // The same address can be added again (the state forgot it too).
    worker.ok(RequestType::AddHttpListener(http_listener(front, true)));
    assert!(TcpStream::connect(front).is_ok());
}

#[test]
fn a_tcp_listener_that_cannot_bind_is_refused_and_forgotten() {
    let mut worker = Worker::start();
    // Held without SO_REUSEPORT: our bind must fail.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let refused = worker.order(RequestType::AddTcpListener(tcp_listener(address)));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(
        refused.message.contains("binding TCP listener"),
        "{}",
        refused.message
    );
    drop(taken);
    // The state rolled back: the same order now succeeds.
    worker.ok(RequestType::AddTcpListener(tcp_listener(address)));
}

#[test]
fn an_https_listener_that_cannot_bind_is_refused_as_https_and_forgotten() {
    let mut worker = Worker::start();
    let cert = sozu_lib::tls::testing::self_signed(&["h.example.com"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let https = command::HttpsListenerConfig {
        address: address.into(),
        front_timeout: 30,
        back_timeout: 30,
        connect_timeout: 3,
        request_timeout: 10,
        active: true,
        certificate: Some(cert.certificate),
        key: Some(cert.key),
        ..Default::default()
    };
    let refused = worker.order(RequestType::AddHttpsListener(https.clone()));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(
        refused.message.contains("binding HTTPS listener"),
        "{}",
        refused.message
    );
    drop(taken);
    // Rolled back (state and TLS side): the same order now succeeds, and
    // a second one is refused naming the HTTPS listener that exists.
    worker.ok(RequestType::AddHttpsListener(https.clone()));
    assert!(TcpStream::connect(address).is_ok());
    let again = worker.order(RequestType::AddHttpsListener(https));
    assert_eq!(again.status, ResponseStatus::Failure as i32);
    assert!(
        again.message.contains("HTTPS listener"),
        "{}",
        again.message
    );
}

#[test]
fn soft_stop_waits_for_an_in_flight_http_request() {
    let mut worker = Worker::start();
    let web = http_backend("web");
    let front = free_port();
    worker.ok(RequestType::AddHttpListener(http_listener(front, true)));
    worker.ok(RequestType::AddCluster(cluster("h")));
    worker.ok(RequestType::AddBackend(backend("h", "web", web.address)));
    worker.ok(RequestType::AddHttpFrontend(http_frontend(
        "h", front, "h", "/",
    )));
    let (mut s, mut r) = http_client(front);
    write!(s, "GET /hold HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    web.held
        .lock()
        .unwrap()
        .recv_timeout(WAIT)
        .expect("the request reached the backend");
    let soft = worker.send(RequestType::SoftStop(command::SoftStop {}));
    // Not answered while the request is in flight: the next answer we read
    // is the status order's.
    let status = worker.order(RequestType::Status(command::Status {}));
    assert_eq!(status.status, ResponseStatus::Ok as i32);
    assert!(TcpStream::connect(front).is_err(), "no new connections");
    web.release.send(()).unwrap();
    let m = read_response(&mut r).unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.text(), "released");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let done = worker.answer(&soft);
    assert_eq!(done.status, ResponseStatus::Ok as i32);
    assert_eq!(worker.join(), ServerExit::SoftStopped);
}
