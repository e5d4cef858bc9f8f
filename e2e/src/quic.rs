//! A real QUIC stack (quinn) for the QUIC tests: echo servers sharing one
//! self-signed certificate and one tokio runtime, clients that trust it,
//! echo round trips, and a [`Path`] (a NAT or anycast route in front of a
//! client) that can move to a new outside port or target mid-connection.
//!
//! Every wait is bounded by [`STEP`]; nothing sleeps.

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
    ClientConfig, Connection, Endpoint, EndpointConfig, ServerConfig, TokioRuntime,
};
use tokio::{net::UdpSocket, runtime::Runtime, time::timeout};

/// How long a handshake or one round trip may take.
pub const STEP: Duration = Duration::from_secs(10);

/// The largest stream either side reads to its end.
const MAX_STREAM: usize = 1 << 20;

/// A tokio runtime and the one certificate (for `localhost`) its servers
/// present and its clients trust.
pub struct Quic {
    /// The runtime every server, client and path runs on.
    pub rt: Runtime,
    cert: CertificateDer<'static>,
    server_config: ServerConfig,
}

/// A quinn echo server on loopback: each bidirectional stream is answered
/// with its bytes, and the connection's remote address at that moment is
/// recorded.
pub struct EchoServer {
    /// The server's endpoint.
    pub endpoint: Endpoint,
    remotes: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoServer {
    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("server address")
    }

    /// The address each stream came from, in order.
    pub fn remotes(&self) -> Vec<SocketAddr> {
        self.remotes.lock().expect("remotes lock").clone()
    }

    /// How many streams it answered.
    pub fn served(&self) -> usize {
        self.remotes.lock().expect("remotes lock").len()
    }
}

impl Default for Quic {
    fn default() -> Self {
        Quic::new()
    }
}

impl Quic {
    /// A current-thread runtime and a fresh self-signed certificate.
    pub fn new() -> Quic {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed cert");
        let cert = certified.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let server_config =
            ServerConfig::with_single_cert(vec![cert.clone()], key).expect("server config");
        Quic {
            rt,
            cert,
            server_config,
        }
    }

    /// An echo server with quinn's default endpoint configuration.
    pub fn server(&self) -> EchoServer {
        self.server_with(EndpointConfig::default())
    }

    /// An echo server with `endpoint_config` (its connection ID generator,
    /// say).
    pub fn server_with(&self, endpoint_config: EndpointConfig) -> EchoServer {
        let socket = StdUdpSocket::bind("127.0.0.1:0").expect("server socket");
        let endpoint = {
            let _guard = self.rt.enter();
            Endpoint::new(
                endpoint_config,
                Some(self.server_config.clone()),
                socket,
                Arc::new(TokioRuntime),
            )
            .expect("quinn server")
        };
        let remotes: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let accepting = endpoint.clone();
        let seen = remotes.clone();
        self.rt.spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let Ok(data) = recv.read_to_end(MAX_STREAM).await else {
                            return;
                        };
                        seen.lock()
                            .expect("remotes lock")
                            .push(conn.remote_address());
                        if send.write_all(&data).await.is_err() || send.finish().is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoServer { endpoint, remotes }
    }

    /// A client configuration trusting the servers' certificate.
    pub fn client_config(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("root cert");
        ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config")
    }

    /// A client endpoint on `bind`, connected to `target`.
    pub fn connect(&self, bind: SocketAddr, target: SocketAddr) -> (Endpoint, Connection) {
        let config = self.client_config();
        let mut endpoint = {
            let _guard = self.rt.enter();
            Endpoint::client(bind).expect("client endpoint")
        };
        endpoint.set_default_client_config(config);
        let conn = self.connect_from(&endpoint, target);
        (endpoint, conn)
    }

    /// A further connection from client endpoint `client` to `target`.
    pub fn connect_from(&self, client: &Endpoint, target: SocketAddr) -> Connection {
        self.rt.block_on(async {
            let connecting = client.connect(target, "localhost").expect("connect");
            timeout(STEP, connecting)
                .await
                .expect("handshake within 10 s")
                .expect("handshake through sozu")
        })
    }

    /// `n` echo round trips, each on a new stream, of `tag-i-` repeated
    /// `repeat` times; every one must come back intact.
    pub fn transfer(&self, conn: &Connection, tag: &str, n: usize, repeat: usize) {
        self.rt.block_on(async {
            for i in 0..n {
                let payload = format!("{tag}-{i}-").repeat(repeat).into_bytes();
                let round_trip = async {
                    let (mut send, mut recv) = conn.open_bi().await?;
                    send.write_all(&payload).await?;
                    send.finish()?;
                    anyhow::Ok(recv.read_to_end(MAX_STREAM).await?)
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

/// A path in front of a client (a NAT, an anycast route): forwards the
/// client's datagrams from its current outside socket to the current
/// target, and what comes back to the client. [`Path::switch`] moves it to
/// a new outside port and target: the client knows nothing (a NAT
/// rebinding keeps the target).
pub struct Path {
    /// Where the client sends.
    pub inside: SocketAddr,
    route: Arc<Mutex<(Arc<UdpSocket>, SocketAddr)>>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    inside_socket: Arc<UdpSocket>,
}

impl Path {
    /// A path to `target`, on `rt`.
    pub fn start(rt: &Runtime, target: SocketAddr) -> Path {
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
                    *client.lock().expect("client lock") = Some(from);
                    let (out, target) = route.lock().expect("route lock").clone();
                    let _ = out.send_to(&buf[..n], target).await;
                }
            });
            path
        })
    }

    /// Replies arriving on `outside` go back to the client.
    fn spawn_returns(&self, outside: Arc<UdpSocket>) {
        let inside = self.inside_socket.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = outside.recv_from(&mut buf).await {
                let dst = *client.lock().expect("client lock");
                if let Some(dst) = dst {
                    let _ = inside.send_to(&buf[..n], dst).await;
                }
            }
        });
    }

    /// The address the target sees the client's datagrams come from now.
    pub fn outside_addr(&self) -> SocketAddr {
        self.route
            .lock()
            .expect("route lock")
            .0
            .local_addr()
            .expect("outside")
    }

    /// Moves to a fresh outside port, sending to `target` from now on.
    pub fn switch(&self, rt: &Runtime, target: SocketAddr) {
        let fresh = rt.block_on(async {
            let fresh = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("path rebind"));
            self.spawn_returns(fresh.clone());
            fresh
        });
        *self.route.lock().expect("route lock") = (fresh, target);
    }
}
