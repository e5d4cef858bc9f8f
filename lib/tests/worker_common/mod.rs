//! Shared harness of the worker tests: a `Server` running in a thread over
//! a socketpair channel, a "master" end sending orders and reading answers,
//! order builders, and loopback test clients / backends.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::thread::JoinHandle;
use std::time::Duration;

use sozu_command_lib::channel::Channel;
use sozu_command_lib::command::{
    self, filtered_metrics::Inner, request::RequestType, response_content::ContentType, AddBackend,
    Cluster, FilteredMetrics, LoadBalancingParams, QueryMetricsOptions, Request,
    RequestUdpFrontend, ResponseStatus, UdpClusterConfig, UdpListenerConfig, WorkerRequest,
    WorkerResponse,
};
use sozu_command_lib::scm::ScmSocket;
use sozu_lib::server::{Server, ServerConfig, ServerExit};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// Pause between two polls of a condition.
pub const POLL_PAUSE: Duration = Duration::from_millis(20);
/// Polls of a condition before failing ([`WAIT`] in all).
pub const POLL_ROUNDS: u32 = 500;

/// The master's end of a running worker.
pub struct Worker {
    pub channel: Channel<WorkerRequest, WorkerResponse>,
    pub thread: Option<JoinHandle<ServerExit>>,
    pub scm: Option<ScmSocket>,
    next_id: u64,
}

impl Worker {
    /// Starts a worker in a thread.
    pub fn start() -> Worker {
        Self::start_with(ServerConfig::default())
    }

    /// Starts a worker with a fd-passing socket; returns the master's end.
    pub fn start_with_scm() -> Worker {
        let (ours, theirs) = ScmSocket::pair().unwrap();
        let mut worker = Self::start_with(ServerConfig {
            scm: Some(theirs),
            ..ServerConfig::default()
        });
        worker.scm = Some(ours);
        worker
    }

    /// Starts a worker with `config` (worker id 1, seed 42 unless set).
    pub fn start_with(config: ServerConfig) -> Worker {
        Self::start_with_channel_max(config, 1_000_000)
    }

    /// Starts a worker with `config` whose channel carries messages of up
    /// to `max_message` bytes (the master's `max_command_buffer_size`).
    pub fn start_with_channel_max(mut config: ServerConfig, max_message: usize) -> Worker {
        let (master, worker) =
            Channel::<WorkerRequest, WorkerResponse>::pair(16_384, max_message).unwrap();
        if config.seed == 0 {
            config.seed = 42;
        }
        if config.worker_id == 0 {
            config.worker_id = 1;
        }
        let server = Server::new(worker, config).unwrap();
        let thread = std::thread::spawn(move || server.run().unwrap());
        Worker {
            channel: master,
            thread: Some(thread),
            scm: None,
            next_id: 0,
        }
    }

    /// Sends an order, returns its id.
    pub fn send(&mut self, request_type: RequestType) -> String {
        self.next_id += 1;
        let id = format!("order-{}", self.next_id);
        self.channel
            .write_message(&WorkerRequest {
                id: id.clone(),
                content: Request {
                    request_type: Some(request_type),
                },
            })
            .unwrap();
        id
    }

    /// Reads the next answer, which must echo `id`.
    pub fn answer(&mut self, id: &str) -> WorkerResponse {
        let response = self.channel.read_message_timeout(WAIT).unwrap();
        assert_eq!(response.id, id, "answers come in order and echo the id");
        response
    }

    /// Sends an order and returns its answer.
    pub fn order(&mut self, request_type: RequestType) -> WorkerResponse {
        let id = self.send(request_type);
        self.answer(&id)
    }

    /// Sends an order that must succeed.
    pub fn ok(&mut self, request_type: RequestType) {
        let response = self.order(request_type);
        assert_eq!(
            response.status,
            ResponseStatus::Ok as i32,
            "order refused: {}",
            response.message
        );
    }

    /// Asks for the worker's listening sockets (`return_listen_sockets`),
    /// which must succeed, and returns the manifest it answers with; the
    /// sockets themselves follow on `scm`.
    pub fn listen_sockets(&mut self) -> command::ListenSocketManifest {
        let response = self.order(RequestType::ReturnListenSockets(
            command::ReturnListenSockets {},
        ));
        assert_eq!(
            response.status,
            ResponseStatus::Ok as i32,
            "return_listen_sockets refused: {}",
            response.message
        );
        match response.content.and_then(|c| c.content_type) {
            Some(ContentType::ListenSockets(manifest)) => manifest,
            other => panic!("no manifest in the answer: {other:?}"),
        }
    }

    /// This worker's metrics as `name -> value` (proxy map: listener values
    /// under `name@address`, plus cluster and backend maps as
    /// `cluster/name` and `cluster/backend/name`).
    pub fn metrics(&mut self) -> BTreeMap<String, i64> {
        let response = self.order(RequestType::QueryMetrics(QueryMetricsOptions::default()));
        assert_eq!(
            response.status,
            ResponseStatus::Ok as i32,
            "{}",
            response.message
        );
        let Some(ContentType::Metrics(aggregated)) = response.content.and_then(|c| c.content_type)
        else {
            panic!("query_metrics answered without metrics");
        };
        let worker = aggregated.workers.get("1").cloned().unwrap_or_default();
        let mut out = BTreeMap::new();
        for (name, value) in &worker.proxy {
            out.insert(name.clone(), scalar(value));
        }
        for (cluster, metrics) in &worker.clusters {
            for (name, value) in &metrics.cluster {
                out.insert(format!("{cluster}/{name}"), scalar(value));
            }
            for backend in &metrics.backends {
                for (name, value) in &backend.metrics {
                    out.insert(
                        format!("{cluster}/{}/{name}", backend.backend_id),
                        scalar(value),
                    );
                }
            }
        }
        out
    }

    /// One metric (0 when absent).
    pub fn metric(&mut self, name: &str) -> i64 {
        self.metrics().get(name).copied().unwrap_or(0)
    }

    /// Polls until the metric exists and equals `value` (bounded).
    pub fn wait_metric_present(&mut self, name: &str, value: i64) {
        for _ in 0..POLL_ROUNDS {
            if self.metrics().get(name) == Some(&value) {
                return;
            }
            std::thread::sleep(POLL_PAUSE);
        }
        panic!("metric {name} never reached {value}");
    }

    /// Polls a metric until `pred` holds (bounded).
    pub fn wait_metric(&mut self, name: &str, pred: impl Fn(i64) -> bool) -> i64 {
        // Bounded: POLL_ROUNDS × POLL_PAUSE is WAIT.
        let mut value = self.metric(name);
        for _ in 0..POLL_ROUNDS {
            if pred(value) {
                return value;
            }
            std::thread::sleep(POLL_PAUSE);
            value = self.metric(name);
        }
        assert!(pred(value), "metric {name} stuck at {value}");
        value
    }

    /// Waits for the worker thread to end.
    pub fn join(&mut self) -> ServerExit {
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if !std::thread::panicking() {
                let _ = self.channel.write_message(&WorkerRequest {
                    id: "drop".to_owned(),
                    content: Request {
                        request_type: Some(RequestType::HardStop(command::HardStop {})),
                    },
                });
                let _ = thread.join();
            }
        }
    }
}

fn scalar(value: &FilteredMetrics) -> i64 {
    match value.inner {
        Some(Inner::Count(v)) => v,
        Some(Inner::Gauge(v)) => v as i64,
        Some(Inner::Percentiles(ref p)) => p.samples as i64,
        _ => 0,
    }
}

/// A free UDP port on `ip` (bound then released: the kernel will not hand
/// it out again soon).
pub fn free_udp_addr(ip: &str) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket.local_addr().unwrap()
}

/// A UDP listener order with 1 s timeouts.
pub fn udp_listener(address: SocketAddr) -> UdpListenerConfig {
    UdpListenerConfig {
        address: address.into(),
        public_address: None,
        front_timeout: 1,
        back_timeout: 1,
        max_rx_datagram_size: 1500,
        max_flows: 0,
        active: true,
        recv_buffer_size: None,
        send_buffer_size: None,
    }
}

/// A cluster order with UDP knobs.
pub fn udp_cluster(id: &str, udp: UdpClusterConfig) -> Cluster {
    Cluster {
        cluster_id: id.to_owned(),
        udp: Some(udp),
        ..Cluster::default()
    }
}

/// A backend order.
pub fn backend(cluster: &str, id: &str, address: SocketAddr) -> AddBackend {
    AddBackend {
        cluster_id: cluster.to_owned(),
        backend_id: id.to_owned(),
        address: address.into(),
        sticky_id: None,
        load_balancing_parameters: Some(LoadBalancingParams { weight: 100 }),
        backup: None,
        quic_lb_server_id: None,
    }
}

/// A UDP frontend order.
pub fn frontend(cluster: &str, address: SocketAddr) -> RequestUdpFrontend {
    RequestUdpFrontend {
        cluster_id: cluster.to_owned(),
        address: address.into(),
        tags: BTreeMap::new(),
    }
}

/// A loopback UDP socket with a bounded read timeout.
pub fn udp_socket(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket
}

/// Receives one datagram (fails the test after [`WAIT`]).
pub fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = socket.recv_from(&mut buf).expect("datagram expected");
    buf.truncate(n);
    (buf, from)
}

/// Receives a datagram if one arrives within `timeout` (used to check that
/// nothing arrives: the wait is the assertion's window, not a sleep).
pub fn try_recv(socket: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = vec![0u8; 70_000];
    let result = match socket.recv_from(&mut buf) {
        Ok((n, from)) => {
            buf.truncate(n);
            Some((buf, from))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            None
        }
        Err(e) => panic!("recv failed: {e}"),
    };
    socket.set_read_timeout(Some(WAIT)).unwrap();
    result
}

/// Sets up listener + cluster + backend + frontend; returns the listener
/// address and the backend socket.
pub fn simple_setup(worker: &mut Worker, udp: UdpClusterConfig) -> (SocketAddr, UdpSocket) {
    let listener = free_udp_addr("127.0.0.1");
    let backend_socket = udp_socket("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    worker.ok(RequestType::AddCluster(udp_cluster("c", udp)));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    (listener, backend_socket)
}

/// Sets this process's soft RLIMIT_NOFILE to `soft` (the hard limit
/// unchanged) and returns the limits it replaced, for the tests that start
/// a worker under a small fd limit.
pub fn set_soft_limit(soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer / in-pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
    }
    old
}

/// An active TCP listener's order at `address`: 30 s timeouts, 3 s to
/// connect, no PROXY header expected.
pub fn tcp_listener(address: SocketAddr) -> command::TcpListenerConfig {
    command::TcpListenerConfig {
        address: address.into(),
        public_address: None,
        expect_proxy: false,
        front_timeout: 30,
        back_timeout: 30,
        connect_timeout: 3,
        active: true,
    }
}
