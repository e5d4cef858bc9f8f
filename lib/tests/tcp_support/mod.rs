//! A small event loop hosting the TCP (and HTTP) proxies for the loopback
//! tests of `tcp_*.rs` / `http_*.rs`, plus blocking loopback backends.
//!
//! The loop runs in its own thread; tests change its configuration through
//! [`LoopHandle::apply`], which runs a closure inside the loop (woken by a
//! mio `Waker`) and waits for it. Every wait is bounded.

#![allow(dead_code)]

pub mod http_backend;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use slab::Slab;
use sozu_command_lib::command::{
    AddBackend, Cluster, HttpListenerConfig, LoadBalancingAlgorithms, PathRule, PathRuleKind,
    RequestHttpFrontend, RequestTcpFrontend, RulePosition, TcpListenerConfig,
};
use sozu_lib::backends::BackendMap;
use sozu_lib::http::{HttpProxy, HttpToken};
use sozu_lib::metrics::MetricsRegistry;
pub use sozu_lib::stream::StreamProxy;
use sozu_lib::stream::{Readiness, TokenTable};
use sozu_lib::tcp::{TcpProxy, TcpToken};

#[derive(Debug, Clone, Copy)]
pub enum Owner {
    Waker,
    Tcp(TcpToken),
    Http(HttpToken),
}

pub struct Table<'a>(pub &'a mut Slab<Owner>);

impl TokenTable<TcpToken> for Table<'_> {
    fn insert(&mut self, owner: TcpToken) -> Token {
        Token(self.0.insert(Owner::Tcp(owner)))
    }
    fn remove(&mut self, token: Token) {
        self.0.try_remove(token.0);
    }
}

impl TokenTable<HttpToken> for Table<'_> {
    fn insert(&mut self, owner: HttpToken) -> Token {
        Token(self.0.insert(Owner::Http(owner)))
    }
    fn remove(&mut self, token: Token) {
        self.0.try_remove(token.0);
    }
}

type Job = Box<dyn FnOnce(&mut TestLoop) + Send>;

/// The proxies and what they borrow.
pub struct TestLoop {
    pub poll: Poll,
    pub tokens: Slab<Owner>,
    pub metrics: MetricsRegistry,
    pub backends: BackendMap,
    pub health: sozu_lib::health::HealthChecker,
    pub tcp: TcpProxy,
    pub http: HttpProxy,
    stop: bool,
}

/// The proxies' context borrowed from a [`TestLoop`].
macro_rules! ctx {
    ($l:expr) => {
        sozu_lib::stream::ProxyContext {
            registry: $l.poll.registry(),
            tokens: &mut crate::tcp_support::Table(&mut $l.tokens),
            backends: &mut $l.backends,
            health: &mut $l.health,
            metrics: &mut $l.metrics,
        }
    };
}

#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

impl TestLoop {
    fn run(mut self, jobs: mpsc::Receiver<(Job, mpsc::Sender<()>)>) {
        let mut events = Events::with_capacity(256);
        while !self.stop {
            let timeout = if self.tcp.has_backlog() || self.http.has_backlog() {
                Some(Duration::ZERO)
            } else {
                [self.tcp.poll_timeout(), self.http.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.saturating_duration_since(now()))
            };
            self.poll.poll(&mut events, timeout).expect("poll");
            let t = now();
            // As the worker does: suspicions are stamped and expired with it.
            self.backends.set_now(t);
            for event in events.iter() {
                match self.tokens.get(event.token().0).copied() {
                    Some(Owner::Tcp(token)) => {
                        let r = Readiness::from_event(event);
                        self.tcp.ready(token, r, t, &mut ctx!(self));
                    }
                    Some(Owner::Http(token)) => {
                        let r = Readiness::from_event(event);
                        self.http.ready(token, r, t, &mut ctx!(self));
                    }
                    Some(Owner::Waker) => {
                        while let Ok((job, done)) = jobs.try_recv() {
                            job(&mut self);
                            let _ = done.send(());
                        }
                    }
                    None => {}
                }
            }
            self.tcp.accept_backlog(t, &mut ctx!(self));
            self.tcp.handle_timeout(t, &mut ctx!(self));
            self.http.accept_backlog(t, &mut ctx!(self));
            self.http.handle_timeout(t, &mut ctx!(self));
        }
    }
}

/// Drives a [`TestLoop`] in a thread.
pub struct LoopHandle {
    jobs: mpsc::Sender<(Job, mpsc::Sender<()>)>,
    waker: std::sync::Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl LoopHandle {
    pub fn start() -> LoopHandle {
        let poll = Poll::new().unwrap();
        let mut tokens = Slab::new();
        let waker_token = Token(tokens.insert(Owner::Waker));
        let waker = std::sync::Arc::new(Waker::new(poll.registry(), waker_token).unwrap());
        let test_loop = TestLoop {
            poll,
            tokens,
            metrics: MetricsRegistry::new(),
            backends: BackendMap::new(7),
            health: sozu_lib::health::HealthChecker::new(),
            tcp: TcpProxy::new(16_384),
            http: HttpProxy::new(16_384),
            stop: false,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || test_loop.run(rx));
        LoopHandle {
            jobs: tx,
            waker,
            thread: Some(thread),
        }
    }

    /// Runs `f` inside the loop and returns its result.
    pub fn apply<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut TestLoop) -> R + Send + 'static,
    ) -> R {
        let (result_tx, result_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        self.jobs
            .send((
                Box::new(move |l: &mut TestLoop| {
                    let _ = result_tx.send(f(l));
                }),
                done_tx,
            ))
            .unwrap();
        self.waker.wake().unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("loop job");
        result_rx.recv_timeout(Duration::from_secs(1)).unwrap()
    }

    /// Adds a cluster with backends at these addresses (ids `b0`, `b1`…).
    pub fn cluster(&self, id: &str, backends: &[SocketAddr], proxy_protocol: Option<i32>) {
        let id = id.to_owned();
        let backends = backends.to_vec();
        self.apply(move |l| {
            let cluster = Cluster {
                cluster_id: id.clone(),
                sticky_session: false,
                https_redirect: false,
                proxy_protocol,
                load_balancing: LoadBalancingAlgorithms::RoundRobin as i32,
                ..Default::default()
            };
            l.backends.ensure_cluster(&id);
            l.tcp.set_cluster(&cluster);
            l.http.set_cluster(&cluster);
            for (i, address) in backends.iter().enumerate() {
                l.backends
                    .add_from_order(&AddBackend {
                        cluster_id: id.clone(),
                        backend_id: format!("b{i}"),
                        address: (*address).into(),
                        sticky_id: None,
                        load_balancing_parameters: None,
                        backup: None,
                        quic_lb_server_id: None,
                    })
                    .unwrap();
            }
        });
    }

    /// Adds an active TCP listener on an ephemeral loopback port routed to
    /// `cluster`; returns its bound address.
    pub fn tcp_listener(
        &self,
        cluster: &str,
        expect_proxy: bool,
        front_timeout: u32,
    ) -> SocketAddr {
        let cluster = cluster.to_owned();
        self.apply(move |l| {
            // Port 0 is unique per order, so bind a probe port first to
            // learn a free one, then give the listener that address.
            let address = free_port();
            let config = TcpListenerConfig {
                address: address.into(),
                public_address: None,
                expect_proxy,
                front_timeout,
                back_timeout: 30,
                connect_timeout: 3,
                active: true,
            };
            l.tcp.add_listener(&config, &mut ctx!(l)).unwrap();
            l.tcp
                .add_frontend(&RequestTcpFrontend {
                    cluster_id: cluster,
                    address: address.into(),
                    tags: Default::default(),
                })
                .unwrap();
            address
        })
    }

    /// Adds an active HTTP listener on a free loopback port.
    pub fn http_listener(&self, front_timeout: u32, back_timeout: u32) -> SocketAddr {
        self.apply(move |l| {
            let address = free_port();
            let config = HttpListenerConfig {
                address: address.into(),
                front_timeout,
                back_timeout,
                connect_timeout: 3,
                request_timeout: 10,
                active: true,
                ..Default::default()
            };
            l.http.add_listener(&config, &mut ctx!(l)).unwrap();
            address
        })
    }

    /// Routes `host` + path prefix on the listener to `cluster`.
    pub fn http_route(&self, listener: SocketAddr, host: &str, prefix: &str, cluster: &str) {
        let frontend = RequestHttpFrontend {
            cluster_id: Some(cluster.to_owned()),
            address: listener.into(),
            hostname: host.to_owned(),
            path: PathRule {
                kind: PathRuleKind::Prefix as i32,
                value: prefix.to_owned(),
            },
            position: RulePosition::Tree as i32,
            ..Default::default()
        };
        self.apply(move |l| l.http.add_frontend(&frontend).unwrap());
    }

    pub fn stop(mut self) {
        self.apply(|l| {
            let t = now();
            l.tcp.hard_stop(t, &mut ctx!(l));
            l.http.hard_stop(t, &mut ctx!(l));
            l.stop = true;
        });
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// A loopback address with a port free right now.
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A loopback address where nothing listens (connects are refused).
pub fn dead_address() -> SocketAddr {
    free_port()
}

/// An echo backend: every connection gets its bytes back, and is closed
/// (write side) when the client closes its own.
pub fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = stream.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

/// A backend that records the first bytes it receives on each connection
/// (up to `n`), sends `reply`, and closes.
pub fn recording_backend(n: usize, reply: &'static [u8]) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut got = vec![0u8; n];
                if stream.read_exact(&mut got).is_ok() {
                    let _ = tx.send(got);
                    let _ = stream.write_all(reply);
                }
            });
        }
    });
    (address, rx)
}

/// A client connected to `address` with bounded blocking reads.
pub fn client(address: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Reads until EOF (bounded by the read timeout).
pub fn read_to_end(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// A deterministic payload of `len` bytes.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 11) as u8)
        })
        .collect()
}

/// A cluster-wide counter (cluster scope plus its backends) from the
/// query-metrics answer.
pub fn cluster_count(l: &TestLoop, cluster: &str, name: &str) -> i64 {
    use sozu_command_lib::command::filtered_metrics::Inner;
    let m = l.metrics.worker_metrics(&Default::default());
    match m
        .clusters
        .get(cluster)
        .and_then(|c| c.cluster.get(name))
        .and_then(|f| f.inner.clone())
    {
        Some(Inner::Count(v)) => v,
        _ => 0,
    }
}

/// A loopback listener whose accept queue is full: the kernel drops further
/// SYNs, so a connect to it neither succeeds nor fails (until its timeout).
/// Keep the returned value alive for as long as the address must hang.
pub fn hanging_backend() -> (SocketAddr, impl Sized) {
    use socket2::{Domain, Socket, Type};
    let hanging = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    hanging.bind(&any.into()).unwrap();
    hanging.listen(0).unwrap();
    let address = hanging.local_addr().unwrap().as_socket().unwrap();
    let fill: Vec<TcpStream> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok())
        .collect();
    (address, (hanging, fill))
}
