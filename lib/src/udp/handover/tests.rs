//! The wire form of a handed-over flow, and a handover between two shells
//! on real loopback sockets (the fds are duplicated in-process, as
//! SCM_RIGHTS would).

use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::Poll;
use sozu_command_lib::command::{
    filtered_metrics::Inner, AddBackend, Cluster, FlowManifest, HandedOverFlow,
    LoadBalancingParams, QueryMetricsOptions, RequestUdpFrontend, UdpClusterConfig,
    UdpListenerConfig,
};

use super::{from_wire, to_wire, HandoverEntryError};
use crate::backends::BackendMap;
use crate::health::HealthChecker;
use crate::metrics::MetricsRegistry;
use crate::protocol::udp::{self as core, ConnectionId, FlowHandover, FlowKey};
use crate::server::tokens::Tokens;
use crate::udp::{IoContext, UdpShell, UdpToken};

fn handover(key: FlowKey) -> FlowHandover {
    FlowHandover {
        key,
        client: "127.0.0.1:40000".parse().unwrap(),
        cluster: core::ClusterId::new("c"),
        backend: core::BackendId::new("b1"),
        backend_addr: "127.0.0.2:53".parse().unwrap(),
        responses_cap: NonZeroU32::new(3),
        requests_cap: None,
        front_timeout: Duration::from_secs(30),
        back_timeout: Duration::from_millis(1500),
        send_proxy_protocol: true,
        proxy_protocol_every_datagram: false,
        proxy_header_sent: true,
        datagrams_in: 7,
        bytes_in: 700,
        datagrams_out: 6,
        bytes_out: 600,
        datagrams_dropped: 1,
        idle_remaining: Duration::from_millis(12_345),
        age: Duration::from_secs(42),
    }
}

#[test]
fn a_flow_survives_the_wire_form_field_for_field() {
    let listener: SocketAddr = "0.0.0.0:5353".parse().unwrap();
    let local = Some("127.0.0.9".parse().unwrap());
    for key in [
        FlowKey::Source("127.0.0.1:40000".parse().unwrap()),
        FlowKey::ConnectionId(ConnectionId::new(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap()),
    ] {
        let flow = handover(key);
        let manifest = FlowManifest {
            flows: vec![to_wire(listener, local, &flow)],
        };
        // (The manifest's bytes across the fd-passing socket: command's
        // `scm` tests.)
        let decoded = manifest;
        let (got_listener, got_local, got) = from_wire(&decoded.flows[0]).unwrap();
        assert_eq!((got_listener, got_local), (listener, local));
        assert_eq!(got, flow);
    }
}

#[test]
fn an_expiring_flow_is_not_handed_over_as_already_expired() {
    let mut flow = handover(FlowKey::Source("127.0.0.1:1".parse().unwrap()));
    flow.idle_remaining = Duration::from_micros(400);
    let wire = to_wire("127.0.0.1:53".parse().unwrap(), None, &flow);
    assert_eq!(wire.idle_remaining_ms, 1);
}

#[test]
fn an_entry_without_addresses_is_refused_naming_the_field() {
    let error = from_wire(&HandedOverFlow::default()).unwrap_err();
    assert!(
        matches!(
            error,
            HandoverEntryError::Address {
                field: "listener",
                ..
            }
        ),
        "{error}"
    );
    let mut wire = to_wire(
        "127.0.0.1:53".parse().unwrap(),
        None,
        &handover(FlowKey::Source("127.0.0.1:1".parse().unwrap())),
    );
    wire.connection_id = Some(vec![0; 40]);
    let error = from_wire(&wire).unwrap_err();
    assert!(
        matches!(error, HandoverEntryError::ConnectionId { len: 40 }),
        "{error}"
    );
}

/// What a shell borrows from its worker.
struct World {
    poll: Poll,
    tokens: Tokens,
    metrics: MetricsRegistry,
    backends: BackendMap,
    health: HealthChecker,
    still_readable: Vec<mio::Token>,
}

impl World {
    fn new() -> World {
        World {
            poll: Poll::new().unwrap(),
            tokens: Tokens::new(),
            metrics: MetricsRegistry::new(),
            backends: BackendMap::new(1),
            health: HealthChecker::new(),
            still_readable: Vec::new(),
        }
    }

    fn ctx(&mut self) -> IoContext<'_> {
        IoContext {
            registry: self.poll.registry(),
            tokens: &mut self.tokens,
            metrics: &mut self.metrics,
            backends: &mut self.backends,
            health: &mut self.health,
            still_readable: &mut self.still_readable,
        }
    }

    fn counter(&self, name: &str) -> i64 {
        match self
            .metrics
            .worker_metrics(&QueryMetricsOptions::default())
            .proxy
            .get(name)
            .and_then(|m| m.inner.clone())
        {
            Some(Inner::Count(v)) => v,
            _ => 0,
        }
    }
}

fn now() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// A shell serving `address` (on `socket`) for cluster `c` → `backend`;
/// with `flows`, the shell first receives a handover (as a new worker
/// does at `adopt_listen_sockets`), so its listener is held.
fn serving(
    world: &mut World,
    address: SocketAddr,
    socket: OwnedFd,
    backend: SocketAddr,
    flows: Option<(FlowManifest, Vec<OwnedFd>)>,
) -> UdpShell {
    let mut shell = UdpShell::new(7, 4096, vec![(address, socket)], 0);
    if let Some((manifest, fds)) = flows {
        shell.hold_for_flows(manifest, fds);
    }
    let now = now();
    let mut ctx = world.ctx();
    let config = UdpListenerConfig {
        address: address.into(),
        public_address: None,
        front_timeout: 30,
        back_timeout: 30,
        max_rx_datagram_size: 1500,
        max_flows: 0,
        active: true,
        recv_buffer_size: None,
        send_buffer_size: None,
    };
    let cluster = Cluster {
        cluster_id: "c".to_owned(),
        udp: Some(UdpClusterConfig::default()),
        ..Cluster::default()
    };
    shell.set_cluster(now, &cluster, &mut ctx).unwrap();
    // The loop owns the backends: add it where the server would.
    ctx.backends
        .add_from_order(&AddBackend {
            cluster_id: "c".to_owned(),
            backend_id: "b1".to_owned(),
            address: backend.into(),
            sticky_id: None,
            load_balancing_parameters: Some(LoadBalancingParams { weight: 100 }),
            backup: None,
            quic_lb_server_id: None,
        })
        .unwrap();
    shell.add_listener(now, &config, &mut ctx).unwrap();
    shell
        .set_frontend(
            now,
            &RequestUdpFrontend {
                cluster_id: "c".to_owned(),
                address: address.into(),
                tags: Default::default(),
            },
            true,
        )
        .unwrap();
    shell
}

fn socket(timeout: bool) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    if timeout {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    s
}

fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    (buf[..n].to_vec(), from)
}

/// Reads the listener (client datagrams) then returns the upstream source
/// address the backend saw for each client.
fn forward(
    shell: &mut UdpShell,
    world: &mut World,
    clients: &[&UdpSocket],
    listener: SocketAddr,
    backend: &UdpSocket,
    payload: &[u8],
) -> Vec<SocketAddr> {
    for client in clients {
        client.send_to(payload, listener).unwrap();
    }
    // Loopback delivers during `send_to`: one pass reads them all.
    shell.on_ready(now(), UdpToken::Listener(0), true, false, &mut world.ctx());
    clients
        .iter()
        .map(|_| {
            let (got, from) = recv(backend);
            assert_eq!(got, payload);
            from
        })
        .collect()
}

#[test]
fn flows_handed_between_two_shells_keep_their_upstream_port_and_replies() {
    let listener_socket = socket(false);
    let address = listener_socket.local_addr().unwrap();
    let backend = socket(true);
    let mut old_world = World::new();
    let mut old = serving(
        &mut old_world,
        address,
        OwnedFd::from(listener_socket.try_clone().unwrap()),
        backend.local_addr().unwrap(),
        None,
    );
    let clients = [socket(true), socket(true)];
    let refs: Vec<&UdpSocket> = clients.iter().collect();
    let before = forward(&mut old, &mut old_world, &refs, address, &backend, b"one");

    // Old worker: export, "pass" (duplicate) the fds, release.
    let now = now();
    let (manifest, fds, flows) = {
        let export = old.export_flows(now, &mut old_world.ctx());
        let fds: Vec<OwnedFd> = export
            .fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect();
        (export.manifest, fds, export.flows)
    };
    assert_eq!(manifest.flows.len(), 2);
    old.release_flows(now, &flows, &mut old_world.ctx());
    assert_eq!(old.active_flows(), 0);
    assert_eq!(old_world.counter("udp.flows.handed_over"), 2);
    assert_eq!(old_world.counter("udp.flows.evicted"), 0);

    // New worker: held until adopt_flows, then serves the same flows.
    let mut new_world = World::new();
    let mut new = serving(
        &mut new_world,
        address,
        OwnedFd::from(listener_socket.try_clone().unwrap()),
        backend.local_addr().unwrap(),
        Some((manifest, fds)),
    );
    assert!(new.is_holding() && !new.listener(address).unwrap().is_reading());
    let report = new.adopt_flows(now, &mut new_world.ctx());
    assert_eq!((report.adopted, report.failed.len()), (2, 0));
    assert!(new.listener(address).unwrap().is_reading());
    assert_eq!(new_world.counter("udp.flows.adopted"), 2);
    assert_eq!(new_world.counter("udp.flows.created"), 0);
    assert_eq!(new.active_flows(), 2);

    let after = forward(&mut new, &mut new_world, &refs, address, &backend, b"two");
    assert_eq!(after, before, "the upstream source ports changed");
    // A reply on the adopted socket returns to its client.
    backend.send_to(b"pong", after[0]).unwrap();
    let flow = new
        .listener(address)
        .unwrap()
        .manager
        .flow_ids()
        .collect::<Vec<_>>();
    for id in flow {
        new.on_ready(
            now,
            UdpToken::Upstream {
                listener: 0,
                flow: id,
            },
            true,
            false,
            &mut new_world.ctx(),
        );
    }
    new.flush(&mut new_world.ctx());
    assert_eq!(recv(&clients[0]), (b"pong".to_vec(), address));
}

#[test]
fn a_flow_whose_key_is_taken_is_refused_counted_and_its_socket_closed() {
    let listener_socket = socket(false);
    let address = listener_socket.local_addr().unwrap();
    let backend = socket(true);
    let mut old_world = World::new();
    let mut old = serving(
        &mut old_world,
        address,
        OwnedFd::from(listener_socket.try_clone().unwrap()),
        backend.local_addr().unwrap(),
        None,
    );
    let client = socket(true);
    let handed = forward(
        &mut old,
        &mut old_world,
        &[&client],
        address,
        &backend,
        b"one",
    );
    let now = now();
    let (manifest, fds) = {
        let export = old.export_flows(now, &mut old_world.ctx());
        let fds: Vec<OwnedFd> = export
            .fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect();
        (export.manifest, fds)
    };
    // The new shell already serves the client (a flow of its own) when
    // the handover arrives.
    let mut new_world = World::new();
    let mut new = serving(
        &mut new_world,
        address,
        OwnedFd::from(listener_socket.try_clone().unwrap()),
        backend.local_addr().unwrap(),
        None,
    );
    let own = forward(
        &mut new,
        &mut new_world,
        &[&client],
        address,
        &backend,
        b"two",
    );
    assert_ne!(own, handed, "each shell has its own upstream socket");
    let number = std::os::fd::AsRawFd::as_raw_fd(&fds[0]);
    let inode = nix::sys::stat::fstat(&fds[0]).unwrap().st_ino;
    new.hold_for_flows(manifest, fds);
    let report = new.adopt_flows(now, &mut new_world.ctx());
    assert_eq!(report.adopted, 0);
    assert_eq!(report.failed.get("key_taken"), Some(&1));
    assert_eq!(new_world.counter("udp.flows.handover_failed.key_taken"), 1);
    assert_eq!(new.active_flows(), 1);
    // The refused copy is closed: its fd number is free, or reused by
    // another file.
    // SAFETY: only inspects whatever the number refers to now.
    let now_there = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(number) });
    assert!(
        now_there.map_or(true, |stat| stat.st_ino != inode),
        "the refused flow's socket is still open"
    );
    // The new shell's own flow still serves the client.
    let again = forward(
        &mut new,
        &mut new_world,
        &[&client],
        address,
        &backend,
        b"three",
    );
    assert_eq!(again, own);
}
