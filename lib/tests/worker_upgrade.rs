//! Listening sockets handed between workers (upgrades), and the statsd push.

mod worker_common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use sozu_command_lib::command::{
    request::RequestType, AdoptListenSockets, ListenSocketEntry, ListenSocketManifest,
    ListenerType, ResponseStatus, ReturnListenSockets, UdpClusterConfig,
};
use sozu_lib::server::{ServerConfig, StatsdConfig};
use worker_common::*;

fn serve(worker: &mut Worker, listener: SocketAddr) -> UdpSocket {
    let backend_socket = udp_socket("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        UdpClusterConfig::default(),
    )));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    backend_socket
}

fn round_trip(listener: SocketAddr, backend_socket: &UdpSocket) {
    let client = udp_socket("127.0.0.1");
    client.send_to(b"ping", listener).unwrap();
    let (payload, upstream) = recv(backend_socket);
    assert_eq!(payload, b"ping");
    backend_socket.send_to(b"pong", upstream).unwrap();
    assert_eq!(recv(&client), (b"pong".to_vec(), listener));
}

/// A socket bound WITHOUT SO_REUSEPORT: a worker binding the same address
/// would fail, so serving it proves the socket was adopted.
fn exclusive_socket() -> (SocketAddr, OwnedFd) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    (socket.local_addr().unwrap(), OwnedFd::from(socket))
}

fn entry(address: SocketAddr) -> ListenSocketEntry {
    ListenSocketEntry {
        address: address.into(),
        proxy: ListenerType::Udp as i32,
    }
}

#[test]
fn a_worker_started_with_an_adopted_socket_serves_it_without_binding() {
    let (listener, fd) = exclusive_socket();
    let mut worker = Worker::start_with(ServerConfig {
        adopted_sockets: vec![(entry(listener), fd)],
        ..ServerConfig::default()
    });
    let backend_socket = serve(&mut worker, listener);
    round_trip(listener, &backend_socket);
}

#[test]
fn adopt_listen_sockets_order_receives_the_fds_and_the_listener_uses_them() {
    let (listener, fd) = exclusive_socket();
    let mut worker = Worker::start_with_scm();
    let manifest = ListenSocketManifest {
        entries: vec![entry(listener)],
    };
    let id = worker.send(RequestType::AdoptListenSockets(AdoptListenSockets {
        manifest: manifest.clone(),
        flows_follow: None,
    }));
    worker
        .scm
        .as_ref()
        .unwrap()
        .send_listen_sockets(&manifest, &[fd.as_fd()])
        .unwrap();
    let answer = worker.answer(&id);
    assert_eq!(
        answer.status,
        ResponseStatus::Ok as i32,
        "{}",
        answer.message
    );
    drop(fd);
    let backend_socket = serve(&mut worker, listener);
    round_trip(listener, &backend_socket);
}

#[test]
fn return_listen_sockets_passes_the_bound_sockets_with_their_manifest() {
    let mut worker = Worker::start_with_scm();
    let listener = free_udp_addr("127.0.0.1");
    let backend_socket = serve(&mut worker, listener);
    let manifest = worker.listen_sockets();
    assert_eq!(manifest.entries, vec![entry(listener)]);
    let sockets = worker
        .scm
        .as_ref()
        .unwrap()
        .receive_listen_sockets(1 << 20)
        .unwrap();
    assert_eq!(sockets.len(), 1);
    let passed = UdpSocket::from(sockets.into_iter().next().unwrap().fd);
    assert_eq!(passed.local_addr().unwrap(), listener);
    // The worker keeps serving after handing its sockets over.
    round_trip(listener, &backend_socket);
}

#[test]
fn without_an_fd_passing_socket_socket_orders_are_refused() {
    let mut worker = Worker::start();
    let response = worker.order(RequestType::ReturnListenSockets(ReturnListenSockets {}));
    assert_eq!(response.status, ResponseStatus::Failure as i32);
}

#[test]
fn statsd_receives_the_udp_metrics() {
    let statsd = udp_socket("127.0.0.1");
    let mut worker = Worker::start_with(ServerConfig {
        statsd: Some(StatsdConfig {
            address: statsd.local_addr().unwrap(),
            prefix: "sozu".to_owned(),
            tagged: false,
            flush_interval: Duration::from_millis(50),
        }),
        ..ServerConfig::default()
    });
    let listener = free_udp_addr("127.0.0.1");
    let backend_socket = serve(&mut worker, listener);
    round_trip(listener, &backend_socket);
    let found = (0..POLL_ROUNDS).any(|_| {
        let (packet, _) = recv(&statsd);
        String::from_utf8_lossy(&packet).contains("udp.datagrams.in")
    });
    assert!(found, "statsd never got udp.datagrams.in");
}

#[test]
fn after_handing_its_sockets_over_a_soft_stopping_worker_leaves_new_sources_to_its_successor() {
    let mut old = Worker::start_with_scm();
    let listener = free_udp_addr("127.0.0.1");
    let backend_socket = serve(&mut old, listener);
    // A live flow on the old worker.
    let live = udp_socket("127.0.0.1");
    live.send_to(b"live", listener).unwrap();
    let (_, live_upstream) = recv(&backend_socket);
    // Upgrade: the old worker returns its socket, a new one adopts it.
    old.listen_sockets();
    let mut sockets = old
        .scm
        .as_ref()
        .unwrap()
        .receive_listen_sockets(1 << 20)
        .unwrap();
    let passed = sockets.remove(0);
    let mut new = Worker::start_with(ServerConfig {
        adopted_sockets: vec![(passed.entry(), passed.fd)],
        worker_id: 2,
        ..ServerConfig::default()
    });
    new.ok(RequestType::AddUdpListener(udp_listener(listener)));
    new.ok(RequestType::AddCluster(udp_cluster(
        "c",
        UdpClusterConfig::default(),
    )));
    new.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    new.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    let stop = old.send(RequestType::SoftStop(
        sozu_command_lib::command::SoftStop {},
    ));
    old.ok(RequestType::Status(sozu_command_lib::command::Status {}));
    // Every new source is served (by the successor): none is shed.
    let clients: Vec<UdpSocket> = (0..40).map(|_| udp_socket("127.0.0.1")).collect();
    for client in &clients {
        client.send_to(b"new", listener).unwrap();
    }
    for _ in &clients {
        assert_eq!(recv(&backend_socket).0, b"new");
    }
    // The old worker still returns its live flow's replies.
    backend_socket.send_to(b"reply", live_upstream).unwrap();
    assert_eq!(recv(&live), (b"reply".to_vec(), listener));
    assert_eq!(old.answer(&stop).status, ResponseStatus::Ok as i32);
    assert_eq!(old.join(), sozu_lib::server::ServerExit::SoftStopped);
}
