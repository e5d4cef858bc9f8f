//! QUIC connection-ID flows through the real binary, with a real QUIC stack
//! (quinn): a quinn server behind sozu (`flow_key = "QUIC_CONNECTION_ID"`,
//! one worker, see doc/udp.md for the multi-worker caveat) and a quinn
//! client whose address changes mid-connection.

use std::{
    net::{SocketAddr, UdpSocket as StdUdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use quinn::{
    rustls::{
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
        RootCertStore,
    },
    ClientConfig, Connection, Endpoint, ServerConfig,
};
use sozu_e2e::ports::free_v4;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpListener};
use tokio::{net::UdpSocket, runtime::Runtime, time::timeout};

const METRICS: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_secs(10);

type Remotes = Arc<Mutex<Vec<SocketAddr>>>;

struct Quic {
    rt: Runtime,
    servers: Vec<Endpoint>,
    cert: CertificateDer<'static>,
    /// Per server, the address it saw each stream come from, in order.
    remotes: Vec<Remotes>,
}

/// A quinn echo server on loopback: each bidirectional stream is answered
/// with its bytes, and the connection's remote address at that moment is
/// recorded.
fn quic_server() -> Quic {
    quic_servers(1)
}

/// `n` quinn echo servers sharing one certificate and one runtime.
fn quic_servers(n: usize) -> Quic {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("self-signed cert");
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = ServerConfig::with_single_cert(vec![cert.clone()], key).expect("server config");
    let mut servers = Vec::new();
    let mut remotes = Vec::new();
    for _ in 0..n {
        let (server, seen) = serve(&rt, config.clone());
        servers.push(server);
        remotes.push(seen);
    }
    Quic {
        rt,
        servers,
        cert,
        remotes,
    }
}

fn serve(rt: &Runtime, config: ServerConfig) -> (Endpoint, Remotes) {
    let server = rt
        .block_on(async { Endpoint::server(config, "127.0.0.1:0".parse().unwrap()) })
        .expect("quinn server");
    let remotes: Remotes = Arc::default();
    let accepting = server.clone();
    let seen = remotes.clone();
    rt.spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(data) = recv.read_to_end(1 << 20).await else {
                        return;
                    };
                    seen.lock().unwrap().push(conn.remote_address());
                    if send.write_all(&data).await.is_err() || send.finish().is_err() {
                        return;
                    }
                }
            });
        }
    });
    (server, remotes)
}

impl Quic {
    fn addr(&self) -> SocketAddr {
        self.servers[0].local_addr().expect("server address")
    }

    fn client_config(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("root cert");
        ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config")
    }

    /// A client endpoint on `bind`, connected to `target`.
    fn connect(&self, bind: SocketAddr, target: SocketAddr) -> (Endpoint, Connection) {
        let config = self.client_config();
        self.rt.block_on(async {
            let mut endpoint = Endpoint::client(bind).expect("client endpoint");
            endpoint.set_default_client_config(config);
            let connecting = endpoint.connect(target, "localhost").expect("connect");
            let conn = timeout(STEP, connecting)
                .await
                .expect("handshake within 10 s")
                .expect("handshake through sozu");
            (endpoint, conn)
        })
    }

    fn remotes(&self) -> Vec<SocketAddr> {
        self.remotes[0].lock().unwrap().clone()
    }
}

/// One echo round trip on a new stream of `conn`.
async fn echo(conn: &Connection, payload: &[u8]) -> Vec<u8> {
    let round_trip = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(payload).await?;
        send.finish()?;
        anyhow::Ok(recv.read_to_end(1 << 20).await?)
    };
    timeout(STEP, round_trip)
        .await
        .expect("round trip within 10 s")
        .expect("round trip")
}

/// `n` round trips of 4 KiB each, every one echoed intact.
fn transfer(quic: &Quic, conn: &Connection, tag: &str, n: usize) {
    quic.rt.block_on(async {
        for i in 0..n {
            let payload = format!("{tag}-{i}-").repeat(512).into_bytes();
            assert_eq!(echo(conn, &payload).await, payload, "{tag} #{i}");
        }
    });
}

/// Sozu (one worker) in front of the quinn server, keyed by QUIC
/// connection ID with quinn's 8-byte connection ids (the default length).
fn sozu_for(quic: &Quic) -> (Sozu, SocketAddr) {
    let frontend = free_v4();
    let mut cluster = ClusterConfig::new("q", frontend).backend("s", quic.addr());
    cluster.flow_key = Some("QUIC_CONNECTION_ID".to_owned());
    cluster.quic_cid_length = Some(8);
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    (sozu, frontend)
}

/// A NAT in front of the client: forwards the client's datagrams to sozu
/// from its current outside socket and the replies back. `rebind` moves it
/// to a new outside port, which the client does not know about (a NAT
/// rebinding: the client keeps its connection id).
struct Nat {
    inside: SocketAddr,
    outside: Arc<Mutex<Arc<UdpSocket>>>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    inside_socket: Arc<UdpSocket>,
}

impl Nat {
    fn start(quic: &Quic, target: SocketAddr) -> Nat {
        quic.rt.block_on(async {
            let inside_socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("nat"));
            let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("nat out"));
            let nat = Nat {
                inside: inside_socket.local_addr().expect("nat address"),
                outside: Arc::new(Mutex::new(outside.clone())),
                client: Arc::default(),
                inside_socket: inside_socket.clone(),
            };
            nat.spawn_returns(outside);
            let current = nat.outside.clone();
            let client = nat.client.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = inside_socket.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    let out = current.lock().unwrap().clone();
                    let _ = out.send_to(&buf[..n], target).await;
                }
            });
            nat
        })
    }

    /// Replies arriving on `outside` go back to the client.
    fn spawn_returns(&self, outside: Arc<UdpSocket>) {
        let inside = self.inside_socket.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = outside.recv_from(&mut buf).await {
                let dst = *client.lock().unwrap();
                if let Some(dst) = dst {
                    let _ = inside.send_to(&buf[..n], dst).await;
                }
            }
        });
    }

    fn outside_addr(&self) -> SocketAddr {
        self.outside.lock().unwrap().local_addr().expect("outside")
    }

    fn rebind(&self, quic: &Quic) {
        let fresh = quic.rt.block_on(async {
            let fresh = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("nat rebind"));
            self.spawn_returns(fresh.clone());
            fresh
        });
        *self.outside.lock().unwrap() = fresh;
    }
}

#[test]
fn quinn_connection_survives_a_nat_rebinding_on_one_flow() {
    let quic = quic_server();
    let (sozu, frontend) = sozu_for(&quic);
    let nat = Nat::start(&quic, frontend);
    let (_client, conn) = quic.connect("127.0.0.1:0".parse().unwrap(), nat.inside);
    // Past the handshake (keyed by address) and into the 1-RTT phase (its
    // connection id joined the same flow).
    transfer(&quic, &conn, "before", 8);
    let settled = *quic.remotes().last().expect("streams were served");
    let before = nat.outside_addr();
    let created = sozu.metrics().proxy_or_zero("udp.flows.created");

    nat.rebind(&quic);
    assert_ne!(nat.outside_addr(), before, "the NAT moved to a new port");
    transfer(&quic, &conn, "after", 8);

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
    let remotes = quic.remotes();
    assert_eq!(remotes.len(), 16);
    assert!(
        remotes.iter().all(|r| *r == settled),
        "the server saw {remotes:?}, expected every stream from {settled}"
    );
    assert_eq!(conn.close_reason(), None, "the connection is alive");
}

#[test]
fn quinn_connection_survives_client_rebind() {
    let quic = quic_server();
    let (sozu, frontend) = sozu_for(&quic);
    let (client, conn) = quic.connect("127.0.0.1:0".parse().unwrap(), frontend);
    transfer(&quic, &conn, "before", 8);
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
    transfer(&quic, &conn, "after", 8);

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
    let quic = quic_server();
    let (sozu, frontend) = sozu_for(&quic);
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
    transfer(&quic, &conn, "ok", 2);
}

#[test]
fn connections_sharing_a_client_socket_meet_on_one_backend_with_hrw() {
    // A connection's handshake and its 1-RTT packets share one flow (the
    // connection id joins its address's flow). A second connection on the
    // same client socket shares that handshake flow, but its connection id
    // is a flow of its own, placed independently: a consistent policy with
    // SOURCE_IP affinity puts it on the same backend, or it dies.
    let quic = quic_servers(3);
    let frontend = free_v4();
    let mut cluster = ClusterConfig::new("q", frontend);
    for (i, server) in quic.servers.iter().enumerate() {
        cluster = cluster.backend(&format!("s{i}"), server.local_addr().expect("server"));
    }
    cluster.load_balancing = "HRW".to_owned();
    cluster.flow_key = Some("QUIC_CONNECTION_ID".to_owned());
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    let (client, first) = quic.connect("127.0.0.1:0".parse().unwrap(), frontend);
    transfer(&quic, &first, "c0", 3);
    let mut connections = vec![first];
    for i in 1..3 {
        let conn = quic.rt.block_on(async {
            let connecting = client.connect(frontend, "localhost").expect("connect");
            timeout(STEP, connecting)
                .await
                .expect("handshake within 10 s")
                .expect("second handshake through sozu")
        });
        transfer(&quic, &conn, &format!("c{i}"), 3);
        connections.push(conn);
    }
    let served: Vec<usize> = quic
        .remotes
        .iter()
        .map(|r| r.lock().unwrap().len())
        .collect();
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
