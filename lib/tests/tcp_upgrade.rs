//! TCP and HTTP listening sockets handed between workers (upgrades): a
//! worker adopts a passed socket instead of binding, and hands its own over
//! with their types in the manifest while it keeps serving.

#[macro_use]
mod tcp_support;
mod worker_common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use sozu_command_lib::command::{
    request::RequestType, Cluster, HttpListenerConfig, ListenSocketEntry, ListenerType,
    RequestTcpFrontend,
};
use sozu_lib::server::ServerConfig;
use tcp_support::{client, echo_backend, free_port, read_to_end};
use worker_common::*;

/// A listening socket bound WITHOUT SO_REUSEPORT: a worker binding the same
/// address would fail, so serving it proves the socket was adopted.
fn exclusive_listener() -> (SocketAddr, OwnedFd) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    (socket.local_addr().unwrap(), OwnedFd::from(socket))
}

fn serve_echo(worker: &mut Worker, listener: SocketAddr) {
    worker.ok(RequestType::AddTcpListener(tcp_listener(listener)));
    worker.ok(RequestType::AddCluster(Cluster {
        cluster_id: "echo".into(),
        ..Cluster::default()
    }));
    worker.ok(RequestType::AddBackend(backend(
        "echo",
        "e",
        echo_backend(),
    )));
    worker.ok(RequestType::AddTcpFrontend(RequestTcpFrontend {
        cluster_id: "echo".into(),
        address: listener.into(),
        tags: Default::default(),
    }));
}

fn echo_round_trip(listener: SocketAddr) {
    let mut c = client(listener);
    c.write_all(b"through the adopted socket").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"through the adopted socket");
}

#[test]
fn a_worker_started_with_an_adopted_tcp_socket_serves_it_without_binding() {
    let (listener, fd) = exclusive_listener();
    let mut worker = Worker::start_with(ServerConfig {
        adopted_sockets: vec![(
            ListenSocketEntry {
                address: listener.into(),
                proxy: ListenerType::Tcp as i32,
            },
            fd,
        )],
        ..ServerConfig::default()
    });
    serve_echo(&mut worker, listener);
    echo_round_trip(listener);
}

#[test]
fn return_listen_sockets_includes_tcp_and_http_listeners_with_their_types() {
    let mut worker = Worker::start_with_scm();
    let tcp = free_port();
    serve_echo(&mut worker, tcp);
    let http = free_port();
    worker.ok(RequestType::AddHttpListener(HttpListenerConfig {
        address: http.into(),
        front_timeout: 30,
        back_timeout: 30,
        connect_timeout: 3,
        request_timeout: 10,
        active: true,
        ..Default::default()
    }));
    let manifest = worker.listen_sockets();
    let mut entries: Vec<(ListenerType, SocketAddr)> = manifest
        .entries
        .iter()
        .map(|e| (e.proxy(), SocketAddr::try_from(&e.address).unwrap()))
        .collect();
    entries.sort_by_key(|(p, _)| *p as i32);
    assert_eq!(
        entries,
        vec![(ListenerType::Http, http), (ListenerType::Tcp, tcp)]
    );
    let sockets = worker
        .scm
        .as_ref()
        .unwrap()
        .receive_listen_sockets(1 << 20)
        .unwrap();
    assert_eq!(sockets.len(), 2);
    for socket in sockets {
        let passed = TcpListener::from(socket.fd);
        assert_eq!(passed.local_addr().unwrap(), socket.address);
    }
    // The worker keeps serving after handing its sockets over.
    echo_round_trip(tcp);
}
