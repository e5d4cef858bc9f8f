//! The worker's event loop: one mio `Poll` over the channel to the master,
//! every listener socket and every upstream and probe socket, with one
//! timeout derived from the nearest deadline of all of them.
//!
//! Owns the worker's `ConfigState` (every order is dispatched to it first;
//! a refused order is answered FAILURE with the state's message and changes
//! nothing), the token table, the metrics registry, the backends and health
//! checker shared by all protocols, and the UDP shell. TCP and HTTP
//! listeners plug in as more [`tokens::TokenOwner`] variants beside
//! [`crate::udp::UdpShell`]. It must never block on a socket (the channel
//! included), never panic on a peer's bytes or an order, and it reads the
//! clock once per wake-up and hands `now` down.

mod clusters;
mod handover;
mod orders;
mod streams;
pub(crate) mod tokens;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use sozu_command_lib::channel::{Channel, ChannelError, FlushStatus};
use sozu_command_lib::command::{
    ListenSocketEntry, ListenerType, ResponseContent, ResponseStatus, WorkerRequest, WorkerResponse,
};
use sozu_command_lib::scm::ScmSocket;
use sozu_command_lib::state::ConfigState;

use crate::backends::BackendMap;
use crate::health::prober::{ProbeContext, Prober};
use crate::health::HealthChecker;
use crate::metrics::statsd::StatsdSink;
use crate::metrics::MetricsRegistry;
use crate::udp::{IoContext, UdpShell};
pub use clusters::{check_cluster, ClusterOrderError};
pub use orders::LogLevelHook;
use streams::Streams;
use tokens::{TokenOwner, Tokens};

/// Where and how to push metrics to statsd (`[metrics]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsdConfig {
    /// The statsd server.
    pub address: SocketAddr,
    /// Prefix of every metric name.
    pub prefix: String,
    /// Scopes as dogstatsd tags instead of in the name.
    pub tagged: bool,
    /// Time between two pushes.
    pub flush_interval: Duration,
}

/// How to build a worker.
#[derive(Debug, Default)]
pub struct ServerConfig {
    /// The worker's id (its key in query-metrics answers).
    pub worker_id: u32,
    /// Seeds flow-table hashers and RANDOM / POWER_OF_TWO balancing (use a
    /// per-process random value in production, a fixed one in tests).
    pub seed: u64,
    /// Key of the UDP affinity hash (HRW / MAGLEV placement), the global
    /// `hash_seed`; `None`: the fixed default. Never random: every worker
    /// and instance sharing it maps a client to the same backend.
    pub hash_seed: Option<u64>,
    /// The configured `buffer_size`: `max_rx_datagram_size` is clamped to
    /// it (`0` = no clamp).
    pub buffer_size: usize,
    /// Client connections (TCP sessions and HTTP connections together) the
    /// worker keeps open at once; more are closed at accept (`0`:
    /// unlimited).
    pub max_connections: usize,
    /// Push metrics to statsd.
    pub statsd: Option<StatsdConfig>,
    /// Listening sockets passed by the master (upgrade): a UDP listener at
    /// one of these addresses uses the socket instead of binding.
    pub adopted_sockets: Vec<(ListenSocketEntry, OwnedFd)>,
    /// The fd-passing socket beside the channel (`return_listen_sockets`,
    /// `adopt_listen_sockets`); without it those orders are refused.
    pub scm: Option<ScmSocket>,
    /// Run by a master: every listening socket comes from it
    /// (`adopt_listen_sockets`); the worker never binds one itself.
    pub listen_sockets_from_master: bool,
    /// Raise the soft `RLIMIT_NOFILE` to the hard limit at start (a worker
    /// process: yes; a test running the server in a thread: as it likes).
    pub raise_fd_limit: bool,
    /// Changes the process's log filter (the `Logging` order); without it
    /// that order is refused.
    pub log_level: Option<LogLevelHook>,
    /// Workers of this master (`worker_count`): they share the host's
    /// ephemeral port range, so each sizes its UDP flow pool to its part
    /// (`0` counts as 1).
    pub worker_count: u32,
    /// `upstream_source_addresses`: UDP upstream sockets are bound to these
    /// in turn (empty: the kernel picks the route's address).
    pub upstream_source_addresses: Vec<std::net::IpAddr>,
}

/// Why [`Server::new`] or [`Server::run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Creating or waiting on the poll failed.
    #[error("event loop: {operation}")]
    Poll {
        /// What the loop was doing.
        operation: &'static str,
        /// The poll error.
        #[source]
        source: io::Error,
    },
    /// The channel could not be registered or written.
    #[error("channel to the master")]
    Channel {
        /// The channel error.
        #[source]
        source: ChannelError,
    },
    /// An adopted socket's manifest entry has a bad address.
    #[error("adopted socket entry {index}: invalid address")]
    AdoptedAddress {
        /// The entry's place in the manifest.
        index: usize,
        /// Why it is not an address.
        #[source]
        source: sozu_command_lib::proto::convert::AddressError,
    },
}

/// How the worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerExit {
    /// Soft-stop completed: every flow ended by itself. Exit code 0.
    SoftStopped,
    /// Hard-stop: everything closed at once. Exit code 0.
    HardStopped,
    /// The master closed the channel (it died): everything closed. The
    /// process should exit non-zero.
    ChannelClosed,
}

impl ServerExit {
    /// The process exit code for this ending.
    pub fn exit_code(self) -> i32 {
        match self {
            ServerExit::SoftStopped | ServerExit::HardStopped => 0,
            ServerExit::ChannelClosed => 1,
        }
    }
}

/// Borrows the parts of the server the datapath needs, leaving the shell
/// free to be borrowed mutably beside it.
macro_rules! io_context {
    ($server:expr) => {
        IoContext {
            registry: $server.poll.registry(),
            tokens: &mut $server.tokens,
            metrics: &mut $server.metrics,
            backends: &mut $server.backends,
            health: &mut $server.health,
            still_readable: &mut $server.still_readable,
        }
    };
}
use io_context;

/// Borrows what the health prober needs from the server.
macro_rules! probe_context {
    ($server:expr) => {
        ProbeContext {
            registry: $server.poll.registry(),
            tokens: &mut $server.tokens,
            health: &mut $server.health,
            backends: &mut $server.backends,
            metrics: &mut $server.metrics,
        }
    };
}
use probe_context;

const CHANNEL_TOKEN: Token = Token(0);

/// Readiness events fetched per poll.
const EVENTS_CAPACITY: usize = 1024;

/// Room reserved up front in each of the two lists of sockets to read again
/// (`still_readable` and `retry`, swapped every wake-up): a socket lands
/// there on the datapath, when it stops at its datagram budget, and the two
/// lists take turns collecting. Grown lazily, the first push into each list
/// (and any growth) was a heap allocation per datagram batch on a rare path,
/// hit first under load, long after warm-up. One poll's worth of events
/// covers every socket stopping at its budget at once.
const READ_AGAIN_CAPACITY: usize = EVENTS_CAPACITY;

/// Bounds how long the final answer may take to leave before exiting.
const FINAL_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker: build with [`Server::new`], then [`Server::run`] until it stops.
pub struct Server {
    poll: Poll,
    channel: Channel<WorkerResponse, WorkerRequest>,
    channel_interest: Interest,
    /// Answers the channel's queue had no room for (the master reads
    /// late), in order. While any wait, later answers queue behind them
    /// and no new order is read: the master's orders wait in the socket,
    /// not in this process, and no answer is ever dropped.
    answers_waiting: VecDeque<WorkerResponse>,
    scm: Option<ScmSocket>,
    state: ConfigState,
    tokens: Tokens,
    metrics: MetricsRegistry,
    backends: BackendMap,
    health: HealthChecker,
    /// Health probes in flight, for every protocol's clusters.
    prober: Prober,
    udp: UdpShell,
    /// TCP and HTTP proxies (`streams.rs`).
    streams: Streams,
    /// HTTPS listeners' TLS side (certificates, rustls configs), kept from
    /// the orders; the HTTP proxy serves them with it.
    tls: crate::tls::TlsListeners,
    statsd: Option<(StatsdSink, Duration, Option<Instant>)>,
    still_readable: Vec<Token>,
    retry: Vec<Token>,
    soft_stop: Option<String>,
    worker_id: u32,
    log_level: Option<LogLevelHook>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("worker_id", &self.worker_id)
            .field("tokens", &self.tokens.len())
            .field("udp_flows", &self.udp.active_flows())
            .finish()
    }
}

impl Server {
    /// A worker reading orders from `channel` (made non-blocking here). It
    /// applies nothing until orders arrive.
    pub fn new(
        mut channel: Channel<WorkerResponse, WorkerRequest>,
        config: ServerConfig,
    ) -> Result<Server, ServerError> {
        let poll = Poll::new().map_err(|source| ServerError::Poll {
            operation: "create",
            source,
        })?;
        channel
            .set_blocking(false)
            .map_err(|source| ServerError::Channel { source })?;
        let mut tokens = Tokens::new();
        let token = tokens.insert(TokenOwner::Channel);
        debug_assert_eq!(token, CHANNEL_TOKEN, "the channel is the first token");
        poll.registry()
            .register(channel.source_mut(), CHANNEL_TOKEN, Interest::READABLE)
            .map_err(|source| ServerError::Poll {
                operation: "register the channel",
                source,
            })?;
        let fd_limit = if config.raise_fd_limit {
            crate::udp::socket::raise_fd_limit()
        } else {
            current_fd_limit()
        }
        .unwrap_or(1024);
        let mut adopted = Vec::new();
        let mut streams = Streams::new(config.buffer_size, config.max_connections);
        for (index, (entry, fd)) in config.adopted_sockets.into_iter().enumerate() {
            let address = SocketAddr::try_from(&entry.address)
                .map_err(|source| ServerError::AdoptedAddress { index, source })?;
            if entry.proxy() == ListenerType::Udp {
                adopted.push((address, fd));
            } else if !streams.adopt(entry.proxy(), address, fd) {
                tracing::warn!(%address, "adopted a socket of an unserved type: closed");
            }
        }
        let mut udp = UdpShell::new(config.seed, fd_limit, adopted, config.buffer_size);
        if let Some(hash_seed) = config.hash_seed {
            udp.set_hash_seed(hash_seed);
        }
        if config.listen_sockets_from_master {
            udp.require_adopted();
            streams.require_adopted();
        }
        let statsd = match config.statsd {
            Some(s) => match StatsdSink::new(s.address, &s.prefix, s.tagged) {
                Ok(sink) => Some((sink, s.flush_interval.max(Duration::from_millis(10)), None)),
                Err(error) => {
                    tracing::warn!(address = %s.address, %error, "statsd disabled");
                    None
                }
            },
            None => None,
        };
        let mut server = Server {
            poll,
            channel,
            channel_interest: Interest::READABLE,
            answers_waiting: VecDeque::new(),
            scm: config.scm,
            state: ConfigState::new(),
            tokens,
            metrics: MetricsRegistry::new(),
            backends: BackendMap::new(config.seed),
            health: HealthChecker::new(),
            prober: Prober::new(),
            udp,
            streams,
            tls: crate::tls::TlsListeners::new(),
            statsd,
            still_readable: Vec::with_capacity(READ_AGAIN_CAPACITY),
            retry: Vec::with_capacity(READ_AGAIN_CAPACITY),
            soft_stop: None,
            worker_id: config.worker_id,
            log_level: config.log_level,
        };
        let sources = crate::udp::socket::SourceAddresses::new(&config.upstream_source_addresses);
        server.udp.set_pool_limits(pool_limits(
            fd_limit,
            config.worker_count,
            sources.port_ranges(),
        ));
        server.udp.set_source_addresses(sources);
        Ok(server)
    }

    /// Runs the loop until soft-stop drains, hard-stop, or the master goes
    /// away.
    pub fn run(mut self) -> Result<ServerExit, ServerError> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        tracing::info!(worker = self.worker_id, "worker running");
        loop {
            // Sockets that stopped at their budget are read again after this
            // poll, which then does not wait. Swapping keeps both vectors'
            // capacity (no allocation per wake-up).
            std::mem::swap(&mut self.retry, &mut self.still_readable);
            // A socket both reported ready and retried lands here twice:
            // kept twice, a busy socket would gain one more budget every
            // wake-up and starve the others. Once each (in place, no
            // allocation).
            self.retry.sort_unstable();
            self.retry.dedup();
            let timeout = if self.retry.is_empty() && !self.streams.has_backlog() {
                self.next_deadline()
                    .map(|deadline| deadline.saturating_duration_since(clock()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(source) = self.poll.poll(&mut events, timeout) {
                if source.kind() != io::ErrorKind::Interrupted {
                    return Err(ServerError::Poll {
                        operation: "poll",
                        source,
                    });
                }
            }
            let now = clock();
            self.backends.set_now(now);
            let mut channel_ready = false;
            for event in events.iter() {
                match self.tokens.get(event.token()) {
                    Some(TokenOwner::Channel) => channel_ready = true,
                    Some(TokenOwner::Udp(token)) => {
                        let readable = event.is_readable() || event.is_error();
                        let writable = event.is_writable();
                        let mut ctx = io_context!(self);
                        self.udp.on_ready(now, token, readable, writable, &mut ctx);
                    }
                    Some(owner @ (TokenOwner::Tcp(_) | TokenOwner::Http(_))) => {
                        self.streams_ready(owner, event, now);
                    }
                    Some(TokenOwner::Probe(probe)) => {
                        let mut ctx = probe_context!(self);
                        self.prober.on_ready(now, probe, &mut ctx);
                    }
                    None => {} // a socket closed earlier in this batch
                }
            }
            for i in 0..self.retry.len() {
                let token = self.retry[i];
                if let Some(TokenOwner::Udp(owner)) = self.tokens.get(token) {
                    let mut ctx = io_context!(self);
                    self.udp.on_ready(now, owner, true, false, &mut ctx);
                }
            }
            self.retry.clear();
            {
                let mut ctx = io_context!(self);
                self.udp.flush(&mut ctx);
                self.udp.on_timeout(now, &mut ctx);
            }
            self.prober.on_timeout(now, &mut probe_context!(self));
            self.streams_timeout(now);
            if channel_ready {
                if let Some(exit) = self.on_channel_ready(now)? {
                    return Ok(exit);
                }
            }
            // Once per wake-up, however many orders (or health and
            // passive-failure changes) it carried: the selection tables of
            // the clusters they changed, so the datapath's picks find them
            // built and a batch of n backend orders rebuilds each cluster
            // once, not n times.
            self.backends.refresh();
            self.push_statsd(now);
            if let Some(id) = self.soft_stop.clone() {
                if self.udp.is_drained() && self.streams.is_drained() {
                    tracing::info!(worker = self.worker_id, "soft-stop drained");
                    self.answer(
                        &id,
                        ResponseStatus::Ok,
                        "soft-stop complete: every flow ended",
                        None,
                    );
                    self.final_flush();
                    return Ok(ServerExit::SoftStopped);
                }
            }
            self.update_channel_interest()?;
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let statsd = self.statsd.as_ref().and_then(|(_, _, next)| *next);
        [
            self.udp.next_deadline(),
            self.prober.next_deadline(),
            self.streams.next_deadline(),
            statsd,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn push_statsd(&mut self, now: Instant) {
        let Some((sink, interval, next)) = self.statsd.as_mut() else {
            return;
        };
        match next {
            Some(due) if *due > now => {}
            Some(_) => {
                let report = sink.flush(&mut self.metrics);
                tracing::trace!(?report, "statsd push");
                *next = Some(now + *interval);
            }
            None => *next = Some(now + *interval),
        }
    }

    /// Reads every complete order; `Some` when the worker must stop now.
    /// Stops early while answers wait for room: the writable event that
    /// follows the master's next read brings the worker back here.
    fn on_channel_ready(&mut self, now: Instant) -> Result<Option<ServerExit>, ServerError> {
        loop {
            if !self.answers_waiting.is_empty() {
                self.flush_channel()?;
                if !self.answers_waiting.is_empty() {
                    break;
                }
            }
            match self.channel.try_read_message() {
                Ok(Some(request)) => {
                    if let Some(exit) = self.on_request(now, request) {
                        return Ok(Some(exit));
                    }
                }
                Ok(None) => break,
                Err(ChannelError::Decode { len, source }) => {
                    // No id to answer to: log and go on with the next frame.
                    tracing::warn!(len, error = %source, "undecodable order from the master");
                }
                Err(error) => {
                    tracing::error!(%error, "channel to the master closed: stopping");
                    let mut ctx = io_context!(self);
                    self.udp.hard_stop(now, &mut ctx);
                    self.prober.close_all(&mut probe_context!(self));
                    self.streams_hard_stop(now);
                    return Ok(Some(ServerExit::ChannelClosed));
                }
            }
        }
        self.flush_channel()?;
        Ok(None)
    }

    /// Queues an answer echoing `id`, behind any answer still waiting.
    fn answer(
        &mut self,
        id: &str,
        status: ResponseStatus,
        message: &str,
        content: Option<ResponseContent>,
    ) {
        let mut response = WorkerResponse {
            id: id.to_owned(),
            status: status as i32,
            message: message.to_owned(),
            content,
        };
        if let Err(error) = self.channel.check_frame_size(&response) {
            // An answer larger than the channel carries (a list of every
            // cluster of a large state): the order still gets its one
            // answer, a FAILURE saying why, instead of none (the master
            // would wait for it until its timeout).
            tracing::warn!(%error, id, "answer too large for the channel");
            response = WorkerResponse {
                id: id.to_owned(),
                status: ResponseStatus::Failure as i32,
                message: format!("the answer cannot be sent: {error}"),
                content: None,
            };
        }
        if self.answers_waiting.is_empty() {
            match self.channel.queue_message(&response) {
                Ok(()) => return,
                Err(ChannelError::OutgoingBufferFull { .. }) => {}
                Err(error) => {
                    tracing::error!(%error, id, "cannot queue the answer");
                    return;
                }
            }
        }
        self.answers_waiting.push_back(response);
    }

    /// Moves waiting answers into the channel's queue as it makes room, and
    /// writes what the socket takes.
    fn pump_answers(&mut self) -> Result<FlushStatus, ChannelError> {
        loop {
            while let Some(response) = self.answers_waiting.pop_front() {
                match self.channel.queue_message(&response) {
                    Ok(()) => {}
                    Err(ChannelError::OutgoingBufferFull { .. }) => {
                        self.answers_waiting.push_front(response);
                        break;
                    }
                    Err(error) => {
                        tracing::error!(%error, id = response.id, "cannot queue the answer");
                    }
                }
            }
            match self.channel.flush()? {
                // The queue is empty again: room for what still waits.
                FlushStatus::Done if !self.answers_waiting.is_empty() => {}
                status => return Ok(status),
            }
        }
    }

    fn flush_channel(&mut self) -> Result<(), ServerError> {
        match self.pump_answers() {
            Ok(_) => Ok(()),
            Err(ChannelError::PeerClosed) => Ok(()), // noticed on the next read
            Err(source) => Err(ServerError::Channel { source }),
        }
    }

    fn update_channel_interest(&mut self) -> Result<(), ServerError> {
        let mut wanted = self.channel.interest();
        if !self.answers_waiting.is_empty() {
            wanted |= Interest::WRITABLE;
        }
        if wanted != self.channel_interest {
            self.poll
                .registry()
                .reregister(self.channel.source_mut(), CHANNEL_TOKEN, wanted)
                .map_err(|source| ServerError::Poll {
                    operation: "reregister the channel",
                    source,
                })?;
            self.channel_interest = wanted;
        }
        Ok(())
    }

    /// Writes the last answers before exiting, waiting a bounded time.
    fn final_flush(&mut self) {
        let deadline = clock() + FINAL_ANSWER_TIMEOUT;
        while self.channel.wants_write() || !self.answers_waiting.is_empty() {
            match self.pump_answers() {
                Ok(FlushStatus::Done) => break,
                Ok(FlushStatus::Pending) => {
                    if clock() >= deadline {
                        tracing::warn!("the master does not read: last answer lost");
                        break;
                    }
                    let mut events = Events::with_capacity(4);
                    let _ = self.poll.registry().reregister(
                        self.channel.source_mut(),
                        CHANNEL_TOKEN,
                        Interest::WRITABLE,
                    );
                    let _ = self.poll.poll(&mut events, Some(Duration::from_millis(50)));
                }
                Err(error) => {
                    tracing::debug!(%error, "last answer not sent");
                    break;
                }
            }
        }
    }
}

/// The loop's clock: read once per wake-up.
#[allow(clippy::disallowed_methods)]
fn clock() -> Instant {
    Instant::now()
}

/// What sizes the worker's UDP flow pool: its fd limit and its share of the
/// host's ephemeral ports (read here, in the shell; the pool's arithmetic is
/// pure, `crate::udp::budget`).
fn pool_limits(
    fd_limit: u64,
    worker_count: u32,
    source_addresses: u64,
) -> crate::udp::budget::PoolLimits {
    let ephemeral_ports = match crate::udp::socket::ephemeral_port_count() {
        Ok(ports) => Some(ports),
        Err(error) => {
            tracing::warn!(%error, "ephemeral port range unknown: the UDP flow pool follows the fd limit only");
            None
        }
    };
    crate::udp::budget::PoolLimits {
        fd_limit,
        ephemeral_ports,
        workers: u64::from(worker_count.max(1)),
        source_addresses,
    }
}

fn current_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}
