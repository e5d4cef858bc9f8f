//! QUIC connection-ID flows through the real binary, with a real QUIC stack
//! (quinn): a quinn server behind sozu (`flow_key = "QUIC_CONNECTION_ID"`,
//! one worker, see doc/udp.md for the multi-worker caveat) and a quinn
//! client whose address changes mid-connection.

use std::{net::UdpSocket as StdUdpSocket, time::Duration};

use sozu_e2e::ports::free_v4;
use sozu_e2e::quic::{EchoServer, Path, Quic};
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpListener};

const METRICS: Duration = Duration::from_secs(10);

/// Round trips of about 4 KiB (`tag-i-` 512 times).
const REPEAT: usize = 512;

/// Sozu (one worker) in front of the quinn server, keyed by QUIC
/// connection ID with quinn's 8-byte connection ids (the default length).
fn sozu_for(server: &EchoServer) -> (Sozu, std::net::SocketAddr) {
    let frontend = free_v4();
    let mut cluster = ClusterConfig::new("q", frontend).backend("s", server.addr());
    cluster.flow_key = Some("QUIC_CONNECTION_ID".to_owned());
    cluster.quic_cid_length = Some(8);
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    (sozu, frontend)
}

#[test]
fn quinn_connection_survives_a_nat_rebinding_on_one_flow() {
    let quic = Quic::new();
    let server = quic.server();
    let (sozu, frontend) = sozu_for(&server);
    // A NAT in front of the client: the client does not know when it
    // moves (a NAT rebinding: the client keeps its connection id).
    let nat = Path::start(&quic.rt, frontend);
    let (_client, conn) = quic.connect("127.0.0.1:0".parse().unwrap(), nat.inside);
    // Past the handshake (keyed by address) and into the 1-RTT phase (its
    // connection id joined the same flow).
    quic.transfer(&conn, "before", 8, REPEAT);
    let settled = *server.remotes().last().expect("streams were served");
    let before = nat.outside_addr();
    let created = sozu.metrics().proxy_or_zero("udp.flows.created");

    nat.switch(&quic.rt, frontend);
    assert_ne!(nat.outside_addr(), before, "the NAT moved to a new port");
    quic.transfer(&conn, "after", 8, REPEAT);

    // Sozu saw the connection id from a new address: one migration, no new
    // flow, and the server still sees the same upstream address (same flow,
    // same upstream socket, same backend).
    let m = sozu.wait_metrics("the flow migrated", METRICS, |m| {
        m.proxy_or_zero("udp.flows.migrated") >= 1
    });
    assert_eq!(m.proxy_or_zero("udp.flows.created"), created, "no new flow");
    // One flow for the whole connection (the handshake's, joined by the
    // connection id): the server saw every stream, before and after the
    // rebinding, from the one upstream socket.
    assert_eq!(created, 1);
    let remotes = server.remotes();
    assert_eq!(remotes.len(), 16);
    assert!(
        remotes.iter().all(|r| *r == settled),
        "the server saw {remotes:?}, expected every stream from {settled}"
    );
    assert_eq!(conn.close_reason(), None, "the connection is alive");
}

#[test]
fn quinn_connection_survives_client_rebind() {
    let quic = Quic::new();
    let server = quic.server();
    let (sozu, frontend) = sozu_for(&server);
    let (client, conn) = quic.connect("127.0.0.1:0".parse().unwrap(), frontend);
    quic.transfer(&conn, "before", 8, REPEAT);
    let old = client.local_addr().expect("client address");
    let m = sozu.metrics();
    let (created, migrated) = (
        m.proxy_or_zero("udp.flows.created"),
        m.proxy_or_zero("udp.flows.migrated"),
    );

    // An active migration: the client moves to a new socket mid-connection.
    let fresh = StdUdpSocket::bind("127.0.0.1:0").expect("new client socket");
    let new = fresh.local_addr().expect("new address");
    {
        let _runtime = quic.rt.enter();
        client.rebind(fresh).expect("rebind");
    }
    assert_ne!(old, new);
    quic.transfer(&conn, "after", 8, REPEAT);

    // The new socket's datagrams went through sozu: quinn switches to a
    // fresh connection id on an active migration (RFC 9000 §9.5), which is
    // a new flow; with a spare-less peer it would be a migration instead.
    sozu.wait_metrics("the new path went through sozu", METRICS, |m| {
        m.proxy_or_zero("udp.flows.created") > created
            || m.proxy_or_zero("udp.flows.migrated") > migrated
    });
    assert_eq!(conn.close_reason(), None, "the connection is alive");
}

#[test]
fn datagrams_that_are_not_quic_are_dropped_invalid() {
    let quic = Quic::new();
    let server = quic.server();
    let (sozu, frontend) = sozu_for(&server);
    let probe = StdUdpSocket::bind("127.0.0.1:0").expect("probe socket");
    // Short headers shorter than 1 + 8 bytes cannot carry a connection id.
    for _ in 0..3 {
        probe.send_to(&[0x40, 1, 2, 3], frontend).expect("send");
    }
    sozu.wait_metrics("three invalid datagrams", METRICS, |m| {
        m.proxy_or_zero("udp.datagrams.dropped.invalid") == 3
    });
    assert_eq!(sozu.metrics().proxy_or_zero("udp.flows.created"), 0);
    // The listener still serves QUIC.
    let (_client, conn) = quic.connect("127.0.0.1:0".parse().unwrap(), frontend);
    quic.transfer(&conn, "ok", 2, REPEAT);
}

#[test]
fn connections_sharing_a_client_socket_meet_on_one_backend_with_hrw() {
    // A connection's handshake and its 1-RTT packets share one flow (the
    // connection id joins its address's flow). A second connection on the
    // same client socket shares that handshake flow, but its connection id
    // is a flow of its own, placed independently: a consistent policy with
    // SOURCE_IP affinity puts it on the same backend, or it dies.
    let quic = Quic::new();
    let servers: Vec<EchoServer> = (0..3).map(|_| quic.server()).collect();
    let frontend = free_v4();
    let mut cluster = ClusterConfig::new("q", frontend);
    for (i, server) in servers.iter().enumerate() {
        cluster = cluster.backend(&format!("s{i}"), server.addr());
    }
    cluster.load_balancing = "HRW".to_owned();
    cluster.flow_key = Some("QUIC_CONNECTION_ID".to_owned());
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    let (client, first) = quic.connect("127.0.0.1:0".parse().unwrap(), frontend);
    quic.transfer(&first, "c0", 3, REPEAT);
    let mut connections = vec![first];
    for i in 1..3 {
        let conn = quic.connect_from(&client, frontend);
        quic.transfer(&conn, &format!("c{i}"), 3, REPEAT);
        connections.push(conn);
    }
    let served: Vec<usize> = servers.iter().map(EchoServer::served).collect();
    assert_eq!(served.iter().sum::<usize>(), 9, "{served:?}");
    assert_eq!(
        served.iter().filter(|&&n| n > 0).count(),
        1,
        "one client IP, one backend: {served:?}"
    );
    // One flow for the socket (the first connection joined it), one per
    // further connection id.
    assert_eq!(sozu.metrics().proxy_or_zero("udp.flows.created"), 3);
    assert!(connections.iter().all(|c| c.close_reason().is_none()));
}
