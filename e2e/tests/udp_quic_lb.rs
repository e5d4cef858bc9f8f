//! QUIC-LB routable connection IDs through the real binary, with a real
//! QUIC stack: two quinn servers issue connection IDs in the plaintext
//! QUIC-LB format, each with its own server ID, behind sozu
//! (`quic_lb_server_id_length`); a migrating client keeps reaching its
//! server, also through a second sozu instance that never saw it (no
//! shared state: the connection ID alone routes).

use std::{
    net::{SocketAddr, UdpSocket as StdUdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use quinn::{
    rustls::{
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
        RootCertStore,
    },
    ClientConfig, Connection, ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig,
    ServerConfig, TokioRuntime,
};
use sozu_e2e::ports::free_v4;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpListener};
use tokio::{net::UdpSocket, runtime::Runtime, time::timeout};

const METRICS: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_secs(10);
/// The config rotation codepoint every server and sozu use here.
const CONFIG_ID: u8 = 1;
/// Connection IDs: first octet, one octet of server ID, six of nonce.
const CID_LEN: usize = 8;

/// Nonces never repeat across the test's servers.
static NONCE: AtomicU64 = AtomicU64::new(0x5eed);

/// Issues QUIC-LB plaintext connection IDs with one server ID, written
/// from the draft's layout (not with sozu's encoder): config rotation in
/// the top three bits of the first octet, the length minus one in the low
/// five, then the server ID, then a nonce.
struct QuicLbCids {
    server_id: u8,
}

impl ConnectionIdGenerator for QuicLbCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let n = NONCE.fetch_add(1, Ordering::Relaxed);
        // splitmix64: nonces with no visible relation to each other.
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let mut cid = [0u8; CID_LEN];
        cid[0] = (CONFIG_ID << 5) | (CID_LEN as u8 - 1);
        cid[1] = self.server_id;
        cid[2..].copy_from_slice(&z.to_le_bytes()[..CID_LEN - 2]);
        ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

type Served = Arc<Mutex<usize>>;

struct Servers {
    rt: Runtime,
    endpoints: Vec<Endpoint>,
    cert: CertificateDer<'static>,
    /// Streams each server answered.
    served: Vec<Served>,
}

/// Two quinn echo servers with server IDs 0x01 and 0x02.
fn servers() -> Servers {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("self-signed cert");
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = ServerConfig::with_single_cert(vec![cert.clone()], key).expect("server config");
    let mut endpoints = Vec::new();
    let mut served = Vec::new();
    for server_id in [1u8, 2] {
        let mut endpoint_config = EndpointConfig::default();
        endpoint_config.cid_generator(move || Box::new(QuicLbCids { server_id }));
        let socket = StdUdpSocket::bind("127.0.0.1:0").expect("server socket");
        let endpoint = {
            let _guard = rt.enter();
            Endpoint::new(
                endpoint_config,
                Some(config.clone()),
                socket,
                Arc::new(TokioRuntime),
            )
            .expect("quinn server")
        };
        let count: Served = Arc::default();
        let accepting = endpoint.clone();
        let seen = count.clone();
        rt.spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let Ok(data) = recv.read_to_end(1 << 20).await else {
                            return;
                        };
                        *seen.lock().unwrap() += 1;
                        if send.write_all(&data).await.is_err() || send.finish().is_err() {
                            return;
                        }
                    }
                });
            }
        });
        endpoints.push(endpoint);
        served.push(count);
    }
    Servers {
        rt,
        endpoints,
        cert,
        served,
    }
}

impl Servers {
    fn addr(&self, i: usize) -> SocketAddr {
        self.endpoints[i].local_addr().expect("server address")
    }

    fn served(&self) -> [usize; 2] {
        [
            *self.served[0].lock().unwrap(),
            *self.served[1].lock().unwrap(),
        ]
    }

    fn connect(&self, target: SocketAddr) -> (Endpoint, Connection) {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("root cert");
        let config = ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
        self.rt.block_on(async {
            let mut endpoint =
                Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
            endpoint.set_default_client_config(config);
            let connecting = endpoint.connect(target, "localhost").expect("connect");
            let conn = timeout(STEP, connecting)
                .await
                .expect("handshake within 10 s")
                .expect("handshake through sozu");
            (endpoint, conn)
        })
    }

    /// `n` echo round trips of 2 KiB, each on a new stream.
    fn transfer(&self, conn: &Connection, tag: &str, n: usize) {
        self.rt.block_on(async {
            for i in 0..n {
                let payload = format!("{tag}-{i}-").repeat(256).into_bytes();
                let round_trip = async {
                    let (mut send, mut recv) = conn.open_bi().await?;
                    send.write_all(&payload).await?;
                    send.finish()?;
                    anyhow::Ok(recv.read_to_end(1 << 20).await?)
                };
                let echoed = timeout(STEP, round_trip)
                    .await
                    .unwrap_or_else(|_| panic!("{tag} #{i}: round trip within 10 s"))
                    .unwrap_or_else(|e| panic!("{tag} #{i}: round trip: {e:#}"));
                assert_eq!(echoed, payload, "{tag} #{i}");
            }
        });
    }
}

/// A path in front of the client (a NAT, an anycast route): forwards the
/// client's datagrams from its current outside socket to the current
/// target, and what comes back to the client. `switch` moves it to a new
/// outside port and, optionally, a new target: the client knows nothing.
struct Path {
    inside: SocketAddr,
    route: Arc<Mutex<(Arc<UdpSocket>, SocketAddr)>>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    inside_socket: Arc<UdpSocket>,
}

impl Path {
    fn start(rt: &Runtime, target: SocketAddr) -> Path {
        rt.block_on(async {
            let inside_socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("path"));
            let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("path out"));
            let path = Path {
                inside: inside_socket.local_addr().expect("path address"),
                route: Arc::new(Mutex::new((outside.clone(), target))),
                client: Arc::default(),
                inside_socket: inside_socket.clone(),
            };
            path.spawn_returns(outside);
            let route = path.route.clone();
            let client = path.client.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = inside_socket.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    let (out, target) = route.lock().unwrap().clone();
                    let _ = out.send_to(&buf[..n], target).await;
                }
            });
            path
        })
    }

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

    fn switch(&self, rt: &Runtime, target: SocketAddr) {
        let fresh = rt.block_on(async {
            let fresh = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("path rebind"));
            self.spawn_returns(fresh.clone());
            fresh
        });
        *self.route.lock().unwrap() = (fresh, target);
    }
}

/// Sozu (one worker) with both servers as backends of a QUIC-LB cluster;
/// backend `backup` (0 or 1), if any, is a backup: the policy never
/// places a flow there while the other is up.
fn sozu_for(servers: &Servers, backup: Option<usize>) -> (Sozu, SocketAddr) {
    let frontend = free_v4();
    let mut cluster = ClusterConfig::new("q", frontend);
    for i in 0..2 {
        cluster = cluster.quic_lb_backend(
            &format!("s{}", i + 1),
            servers.addr(i),
            &format!("{:02x}", i + 1),
            backup == Some(i),
        );
    }
    cluster.load_balancing = "HRW".to_owned();
    cluster.flow_key = Some("QUIC_CONNECTION_ID".to_owned());
    cluster.quic_cid_length = Some(CID_LEN as u32);
    cluster.quic_lb = Some((u32::from(CONFIG_ID), 1));
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    (sozu, frontend)
}

fn fallbacks(sozu: &Sozu) -> i64 {
    let m = sozu.metrics();
    [
        "too_short",
        "config_mismatch",
        "unroutable",
        "unknown_server_id",
        "server_down",
    ]
    .iter()
    .map(|r| m.proxy_or_zero(&format!("udp.quic_lb.fallback.{r}")))
    .sum()
}

#[test]
fn a_migrated_client_reaches_its_server_through_any_sozu_instance() {
    let servers = servers();
    let (first, first_addr) = sozu_for(&servers, None);
    let path = Path::start(&servers.rt, first_addr);
    let (client, conn) = servers.connect(path.inside);
    servers.transfer(&conn, "before", 4);
    let served = servers.served();
    assert_eq!(served.iter().sum::<usize>(), 4, "{served:?}");
    // The server the handshake reached (placed by the policy: a client's
    // random Initial DCID names no server) owns the connection.
    let owner = if served[0] == 4 { 0 } else { 1 };
    assert_eq!(
        served[owner], 4,
        "one server for the connection: {served:?}"
    );
    let routed = first.metrics().proxy_or_zero("udp.quic_lb.routed");

    // 1. The client migrates: new socket (quinn moves to a new connection
    // id), and the path moves to a new outside port. The new connection
    // id is a new flow in sozu, placed by the server ID it carries.
    let fresh = StdUdpSocket::bind("127.0.0.1:0").expect("new client socket");
    {
        let _runtime = servers.rt.enter();
        client.rebind(fresh).expect("rebind");
    }
    path.switch(&servers.rt, first_addr);
    servers.transfer(&conn, "migrated", 4);
    first.wait_metrics("the new path was routed by server id", METRICS, |m| {
        m.proxy_or_zero("udp.quic_lb.routed") > routed
    });
    let served = servers.served();
    assert_eq!(
        served[owner], 8,
        "every stream reached the owner: {served:?}"
    );
    assert_eq!(served[1 - owner], 0, "{served:?}");

    // 2. The path now reaches a second sozu instance that never saw the
    // client, where the owner is a backup: its policy would never pick
    // it while the other server is up. Only the connection id routes.
    let (second, second_addr) = sozu_for(&servers, Some(owner));
    assert_eq!(second.metrics().proxy_or_zero("udp.flows.created"), 0);
    path.switch(&servers.rt, second_addr);
    servers.transfer(&conn, "elsewhere", 4);
    let m = second.wait_metrics("routed by server id", METRICS, |m| {
        m.proxy_or_zero("udp.quic_lb.routed") >= 1
    });
    assert!(m.proxy_or_zero("udp.flows.created") >= 1);
    assert_eq!(fallbacks(&second), 0, "nothing fell back to the policy");
    let served = servers.served();
    assert_eq!(
        served[owner], 12,
        "every stream reached the owner: {served:?}"
    );
    assert_eq!(served[1 - owner], 0, "{served:?}");
    assert_eq!(conn.close_reason(), None, "the connection is alive");
}

#[test]
fn short_headers_naming_no_server_fall_back_and_are_counted() {
    let servers = servers();
    let (sozu, frontend) = sozu_for(&servers, None);
    let probe = StdUdpSocket::bind("127.0.0.1:0").expect("probe socket");
    let short = |first: u8, server: u8| {
        let mut pkt = vec![0x40, first, server];
        pkt.extend_from_slice(&[7u8; 30]);
        pkt
    };
    // Another config rotation codepoint, the unroutable one, and an
    // unknown server ID: three new flows, each placed by the policy.
    probe
        .send_to(&short(2 << 5, 1), frontend)
        .expect("send config mismatch");
    probe
        .send_to(&short(7 << 5 | 0x11, 1), frontend)
        .expect("send unroutable");
    probe
        .send_to(&short(CONFIG_ID << 5, 9), frontend)
        .expect("send unknown server");
    let m = sozu.wait_metrics("three fallbacks", METRICS, |m| {
        m.proxy_or_zero("udp.quic_lb.fallback.config_mismatch") == 1
            && m.proxy_or_zero("udp.quic_lb.fallback.unroutable") == 1
            && m.proxy_or_zero("udp.quic_lb.fallback.unknown_server_id") == 1
    });
    assert_eq!(m.proxy_or_zero("udp.flows.created"), 3);
    assert_eq!(m.proxy_or_zero("udp.quic_lb.routed"), 0);
    // A real connection still works (its handshake falls back, its
    // 1-RTT packets join the handshake's flow).
    let (_client, conn) = servers.connect(frontend);
    servers.transfer(&conn, "ok", 2);
}

#[test]
fn a_server_id_off_the_cluster_length_or_taken_is_refused_and_leaves_no_trace() {
    let servers = servers();
    let (sozu, _) = sozu_for(&servers, None);
    let add = |backend: &str, port: &str, server_id: &str| {
        sozu.cli(&[
            "backend",
            "add",
            "-i",
            "q",
            "--backend-id",
            backend,
            "-a",
            &format!("127.0.0.1:{port}"),
            "--quic-lb-server-id",
            server_id,
        ])
    };
    // Two octets on a cluster of one-octet server ids.
    let out = add("s3", "5999", "0102");
    assert!(!out.success(), "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("quic_lb_server_id"), "{text}");
    // Server 01 is s1's.
    let out = add("s3", "5999", "01");
    assert!(!out.success(), "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("s1"), "{text}");
    // Neither left a trace; a free id is accepted and listed.
    let list = sozu.cli_ok(&["cluster", "list", "-i", "q"]).stdout;
    assert!(!list.contains("s3"), "{list}");
    let out = add("s4", "5998", "03");
    assert!(out.success(), "{out:?}");
    let list = sozu.cli_ok(&["cluster", "list", "-i", "q"]).stdout;
    assert!(
        list.contains("QUIC-LB SERVER ID") && list.contains("s4") && list.contains("03"),
        "{list}"
    );
    assert!(
        list.contains("quic_lb: config_id=1 server_id_length=1"),
        "{list}"
    );
}
