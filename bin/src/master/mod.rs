//! The master process: owns the proxy state, starts and supervises the
//! workers, serves the command socket, fans orders out and gathers the
//! answers, drives soft-stop and upgrades.
//!
//! One mio loop (this file) multiplexes the command listener, the clients,
//! the worker channels and the signal self-pipe; it never blocks except in
//! `poll`, and the bounded, short blocking steps of an upgrade. What each
//! order does is in `orders.rs`; supervision and stop in `lifecycle.rs`;
//! upgrades in `upgrade.rs`. The master never proxies traffic itself; it
//! binds and holds every listening socket and passes them to the workers
//! (`listen_sockets.rs`).

mod clients;
mod command_socket;
mod describe;
mod flow_handover;
mod gather;
mod lifecycle;
mod listen_sockets;
mod metrics;
mod notify;
mod orders;
mod prevalidate;
mod prometheus;
mod queries;
mod signals;
mod state_file;
mod upgrade;
mod workers;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use sozu_command_lib::channel::ChannelError;
use sozu_command_lib::command::{RunState, WorkerRequest};
use sozu_command_lib::config::Config;
use sozu_command_lib::state::ConfigState;

use crate::logging::{self, LogSettings};
use clients::Client;
use gather::{AnswerEvent, GatherTable, Gathered, OrderId};
use signals::{MasterSignal, SignalPipe};
use workers::{Worker, WorkerLaunch};

use crate::worker::{StatsdSettings, WorkerSettings};

/// `sozu start`
#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// Configuration file (Sōzu 2.x compatible TOML).
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// Internal: resume as the new master of an upgrade from the state in
    /// this inherited file descriptor.
    #[arg(long, hide = true)]
    pub upgrade_fd: Option<i32>,
}

/// Runs the master until it stops. Configuration and start-up errors are
/// printed as one line on stderr and give a non-zero exit code.
pub(crate) fn start(args: StartArgs) -> ExitCode {
    let config = match Config::load_from_path(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = logging::init(&LogSettings::from_config(&config), "master") {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    let master = match args.upgrade_fd {
        Some(fd) => upgrade::resume(config, args.config.clone(), fd),
        None => Master::launch(config, args.config.clone()),
    };
    let mut master = match master {
        Ok(master) => master,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "the master cannot start");
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match master.run() {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "the master failed");
            eprintln!("error: {error:#}");
            master.cleanup_files();
            ExitCode::FAILURE
        }
    }
}

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const METRICS_LISTENER: Token = Token(2);
const FIRST_DYNAMIC_TOKEN: usize = 3;
/// Tokens of metrics clients start here (far above any command client or
/// worker token the master will ever allocate).
const FIRST_METRICS_CLIENT_TOKEN: usize = 1 << 40;

/// Largest message on a master ↔ worker channel: metrics of many clusters
/// outgrow the command-socket limit, and the peer is trusted.
const MIN_WORKER_CHANNEL_MAX: usize = 16 * 1024 * 1024;

/// Why an order waits for worker answers.
#[derive(Debug)]
pub(crate) enum Purpose {
    /// A client's order; the answer goes back to it.
    Client(orders::ClientOrder),
    /// The initial state (then a status) sent to a new worker.
    WorkerBoot { worker: u32 },
    /// soft_stop / hard_stop forwarded to the workers; the stop itself ends
    /// when the processes are gone.
    StopForward,
    /// A periodic status to every worker: one that does not answer within
    /// `worker_timeout` shows NOT_ANSWERING until it answers again.
    Heartbeat,
    /// A state change (client order, load, reload, SIGHUP reload): the
    /// master commits it when every worker accepted.
    Change(Box<orders::Change>),
    /// Orders bringing workers to the committed state (undo of a refused
    /// change, catch-up of a worker booted meanwhile): a worker that
    /// refuses is restarted.
    Repair { name: &'static str },
    /// A Prometheus scrape (`prometheus.rs`): the answers become the page
    /// sent to this metrics client.
    Scrape { client: Token },
    /// A step of a worker upgrade.
    Upgrade(upgrade::Step),
}

/// Where the master is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Workers are being started (no readiness check yet).
    Launching,
    /// Workers are receiving their initial state; the command socket is not
    /// served yet.
    Starting,
    Running,
    /// Workers were told to stop; the master exits once they are gone.
    Stopping {
        hard: bool,
        /// Clients waiting for the final OK.
        waiting: Vec<Token>,
        /// Hard stop: when still-running workers get SIGKILL.
        kill_at: Option<Instant>,
        /// When the waiting clients next get a PROCESSING answer (a drain
        /// can outlast any client's patience otherwise).
        progress_at: Instant,
    },
}

/// The part of the configuration every worker is started with.
fn worker_settings(config: &Config) -> WorkerSettings {
    WorkerSettings {
        command_buffer_size: config.command_buffer_size.get(),
        max_command_buffer_size: worker_channel_max(config),
        log_level: config.log_level.clone(),
        log_target: logging::target_to_string(&config.log_target),
        access_logs_target: config
            .access_logs_target
            .as_ref()
            .map(logging::target_to_string),
        access_logs_format: config.access_logs_format.into(),
        buffer_size: config.buffer_size.get(),
        max_connections: config.max_connections.get(),
        worker_count: u32::from(config.worker_count.get()),
        upstream_source_addresses: config.upstream_source_addresses.clone(),
        statsd: config.metrics.as_ref().map(|metrics| StatsdSettings {
            address: metrics.address,
            prefix: metrics
                .prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_STATSD_PREFIX.to_owned()),
            tagged: metrics.tagged_metrics,
        }),
        hash_seed: config.hash_seed,
    }
}

/// The statsd prefix when `[metrics]` names none.
const DEFAULT_STATSD_PREFIX: &str = "sozu";

/// The master's whole state, driven by [`Master::run`].
pub(crate) struct Master {
    poll: Poll,
    config: Config,
    config_path: PathBuf,
    launch: WorkerLaunch,
    state: ConfigState,
    listener: UnixListener,
    listener_registered: bool,
    signals: SignalPipe,
    clients: HashMap<Token, Client>,
    /// Clients with buffered orders to look at again (after their previous
    /// order finished).
    clients_to_serve: VecDeque<Token>,
    workers: BTreeMap<u32, Worker>,
    worker_tokens: HashMap<Token, u32>,
    next_token: usize,
    next_worker_id: u32,
    gather: GatherTable<Purpose>,
    phase: Phase,
    upgrade: Option<upgrade::WorkerUpgrade>,
    owner_uid: u32,
    /// Set when the loop must end with this exit code.
    exit: Option<ExitCode>,
    /// An upgrade_main asked for: exec once the current turn is done.
    exec_requested: Option<Token>,
    /// When the next heartbeat status is sent to the workers.
    next_heartbeat: Instant,
    /// Every listener's sockets, bound and held by the master.
    listen_sockets: listen_sockets::ListenSockets,
    /// Request counts and the metrics setting (`queries.rs`).
    sozu: queries::SozuExtras,
    /// A state change is out to the workers (at most one at a time).
    change_in_flight: bool,
    /// Orders waiting for it, oldest first.
    deferred: VecDeque<orders::Deferred>,
    /// Worker slots that are down and will be started again.
    restarts: BTreeMap<u32, lifecycle::PendingRestart>,
    /// Clients of `worker restart N` waiting for slot N to take its state.
    boot_waiters: HashMap<u32, Token>,
    /// The Prometheus listener (`metrics_listener`), if configured.
    metrics_server: Option<prometheus::MetricsServer>,
}

impl Master {
    /// Starts a fresh master: pid file, fd limit, command socket, workers.
    fn launch(config: Config, config_path: PathBuf) -> anyhow::Result<Self> {
        raise_fd_limit();
        let socket_path = config.command_socket.clone();
        let pid_file = config.pid_file_path.clone();
        let std_listener = command_socket::bind(&socket_path)?;
        let launched = Self::launch_with(config, config_path, std_listener);
        if launched.is_err() {
            // Nothing of a master that did not start may stay behind (the
            // workers already started exit when their channel closes).
            let _ = std::fs::remove_file(&socket_path);
            if let Some(pid_file) = pid_file {
                let _ = std::fs::remove_file(pid_file);
            }
        }
        launched
    }

    fn launch_with(
        config: Config,
        config_path: PathBuf,
        std_listener: std::os::unix::net::UnixListener,
    ) -> anyhow::Result<Self> {
        if let Some(pid_file) = &config.pid_file_path {
            std::fs::write(pid_file, format!("{}\n", std::process::id()))
                .with_context(|| format!("cannot write the pid file {}", pid_file.display()))?;
        }
        let mut state = ConfigState::new();
        for request in config.generate_orders() {
            if let Err(error) = state.dispatch(&request) {
                // The configuration was validated on load: a refusal here is
                // a disagreement between config and state, reported plainly.
                anyhow::bail!("the configuration does not build a state: {error}");
            }
            // What the workers would refuse (TLS knobs rustls cannot
            // honour, a key not matching its certificate) stops the start.
            if let Err(error) = prevalidate::check(&state, &request) {
                anyhow::bail!("the configuration is refused: {error}");
            }
        }
        if let Some(saved) = &config.saved_state {
            if saved.exists() {
                match state_file::load_into(&mut state, saved, &config) {
                    Ok(count) => {
                        tracing::info!(path = %saved.display(), orders = count, "saved state loaded")
                    }
                    // A junk saved state is an error at start: starting
                    // without it would serve less than the operator saved,
                    // and the next automatic save would overwrite it.
                    Err(error) => anyhow::bail!(
                        "cannot load the saved state {} (fix or remove the file): {error}",
                        saved.display()
                    ),
                }
            }
        }
        let mut master = Master::new(
            config,
            config_path,
            state,
            UnixListener::from_std(std_listener),
        )?;
        // Binding is part of accepting: an address in use stops the start
        // here, before any worker exists.
        master
            .listen_sockets
            .bind_missing(&master.state)
            .context("cannot bind the listeners")?;
        let now = now();
        for _ in 0..master.config.worker_count.get() {
            let id = master.next_worker_id;
            master.next_worker_id += 1;
            master.start_worker(id, now, 0)?;
        }
        master.phase = Phase::Starting;
        tracing::info!(
            pid = std::process::id(),
            socket = %master.config.command_socket.display(),
            workers = master.workers.len(),
            "master started, sending the state to the workers"
        );
        Ok(master)
    }

    fn new(
        config: Config,
        config_path: PathBuf,
        state: ConfigState,
        mut listener: UnixListener,
    ) -> anyhow::Result<Self> {
        let poll = Poll::new().context("cannot create the event loop")?;
        let signals = SignalPipe::install().context("cannot install the signal handlers")?;
        poll.registry()
            .register(&mut SourceFd(&signals.fd()), SIGNALS, Interest::READABLE)
            .context("cannot register the signal pipe")?;
        // The listener is registered once the workers are ready.
        let _ = &mut listener;
        let metrics_server = match config.metrics_listener {
            Some(addr) => Some(prometheus::MetricsServer::bind(
                addr,
                poll.registry(),
                METRICS_LISTENER,
                FIRST_METRICS_CLIENT_TOKEN,
            )?),
            None => None,
        };
        let launch = WorkerLaunch {
            executable: workers::current_executable().context("cannot find the sozu binary")?,
            settings: worker_settings(&config),
        };
        Ok(Master {
            poll,
            launch,
            state,
            listener,
            listener_registered: false,
            signals,
            clients: HashMap::new(),
            clients_to_serve: VecDeque::new(),
            workers: BTreeMap::new(),
            worker_tokens: HashMap::new(),
            next_token: FIRST_DYNAMIC_TOKEN,
            next_worker_id: 0,
            gather: GatherTable::new(),
            phase: Phase::Launching,
            upgrade: None,
            owner_uid: nix::unistd::geteuid().as_raw(),
            exit: None,
            exec_requested: None,
            next_heartbeat: now() + config.worker_timeout,
            listen_sockets: listen_sockets::ListenSockets::new(config.worker_count.get() as usize),
            sozu: queries::SozuExtras::default(),
            change_in_flight: false,
            deferred: VecDeque::new(),
            restarts: BTreeMap::new(),
            boot_waiters: HashMap::new(),
            metrics_server,
            config,
            config_path,
        })
    }

    fn allocate_token(&mut self) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        token
    }

    /// The event loop.
    fn run(&mut self) -> anyhow::Result<ExitCode> {
        let mut events = Events::with_capacity(256);
        // Children that exited while nobody listened (before the handlers,
        // or across an upgrade's exec).
        self.reap_children(now());
        self.check_started();
        loop {
            if let Some(code) = self.exit.take() {
                self.cleanup_files();
                return Ok(code);
            }
            if let Some(client) = self.exec_requested.take() {
                // Only returns on failure; the failure was answered.
                upgrade::exec_new_master(self, client);
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("the event loop failed"),
            }
            let now = now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_clients(),
                    SIGNALS => {
                        for signal in self.signals.drain() {
                            self.on_signal(signal, now);
                        }
                    }
                    token => {
                        if self
                            .metrics_server
                            .as_ref()
                            .is_some_and(|server| server.owns(token))
                        {
                            self.on_metrics_event(token, now);
                        } else if let Some(&worker) = self.worker_tokens.get(&token) {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                self.read_worker(worker, now);
                            }
                            self.pump_worker(worker);
                        } else if self.clients.contains_key(&token) {
                            if event.is_writable() {
                                if let Some(client) = self.clients.get_mut(&token) {
                                    client.flush();
                                }
                            }
                            if event.is_readable() || event.is_read_closed() {
                                self.serve_client(token, now);
                            }
                            self.refresh_client(token);
                        }
                    }
                }
            }
            self.on_time(now);
            while let Some(token) = self.clients_to_serve.pop_front() {
                self.serve_client(token, now);
                self.refresh_client(token);
            }
            self.steer_listeners();
        }
    }

    /// Keeps the UDP listeners' steering in line with the worker slots that
    /// have a live process (cheap: it acts only when the set changes).
    fn steer_listeners(&mut self) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        let live: BTreeSet<u32> = self
            .workers
            .values()
            .filter(|w| !w.channel_closed)
            .map(|w| w.id)
            .collect();
        let down = self.listen_sockets.down_slots(&live);
        self.listen_sockets.steer(down);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline = self.gather.next_deadline();
        if let Phase::Stopping {
            kill_at,
            progress_at,
            ..
        } = &self.phase
        {
            for at in kill_at.iter().chain(std::iter::once(progress_at)) {
                deadline = Some(deadline.map_or(*at, |d| d.min(*at)));
            }
        }
        if matches!(self.phase, Phase::Running) {
            let at = self.next_heartbeat;
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        if let Some(at) = self.metrics_server.as_ref().and_then(|s| s.next_deadline()) {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        if let Some(at) = self.next_restart() {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        deadline
    }

    fn on_time(&mut self, now: Instant) {
        for gathered in self.gather.on_timeout(now) {
            for worker in &gathered.timed_out {
                if let Some(w) = self.workers.get_mut(worker) {
                    if w.run_state == RunState::Running {
                        tracing::warn!(worker = w.id, pid = w.pid.as_raw(), "worker not answering");
                        w.run_state = RunState::NotAnswering;
                    }
                }
            }
            self.on_gathered(gathered, now);
        }
        self.check_stop_deadline(now);
        self.stop_progress(now);
        self.heartbeat(now);
        self.restart_due(now);
        self.expire_metrics_clients(now);
    }

    fn on_signal(&mut self, signal: MasterSignal, now: Instant) {
        match signal {
            MasterSignal::Child => self.reap_children(now),
            MasterSignal::Terminate => {
                tracing::info!("SIGTERM: soft stop");
                self.begin_stop(false, None, now);
            }
            MasterSignal::Interrupt => {
                tracing::info!("SIGINT: hard stop");
                self.begin_stop(true, None, now);
            }
            MasterSignal::Hangup => {
                tracing::info!("SIGHUP: reloading the configuration");
                self.reload_from_signal(now);
            }
        }
    }

    // ---- command socket ----

    fn register_listener(&mut self) {
        if self.listener_registered {
            return;
        }
        match self
            .poll
            .registry()
            .register(&mut self.listener, LISTENER, Interest::READABLE)
        {
            Ok(()) => {
                self.listener_registered = true;
                // Connections queued while starting are in the backlog.
                self.accept_clients();
            }
            Err(error) => {
                tracing::error!(%error, "cannot serve the command socket");
                self.exit = Some(ExitCode::FAILURE);
            }
        }
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // EMFILE and friends: keep serving the clients we have.
                    tracing::warn!(%error, "cannot accept a command client");
                    return;
                }
            };
            self.add_client(stream);
        }
    }

    fn add_client(&mut self, stream: mio::net::UnixStream) {
        let peer = match command_socket::peer_credentials(&stream) {
            Ok(peer) => peer,
            Err(error) => {
                tracing::warn!(%error, "command client without credentials, closed");
                return;
            }
        };
        let std_stream = into_std_stream(stream);
        let mut channel = clients::ClientChannel::new(
            std_stream,
            self.config.command_buffer_size.get(),
            self.config.max_command_buffer_size.get(),
        );
        // Answers (cluster and metric listings) may be as large as the CLI
        // accepts (`max_command_buffer_size` or 16 MiB, doc/cli.md); orders
        // from clients stay bounded by `max_command_buffer_size`.
        channel.raise_outgoing_max(worker_channel_max(&self.config));
        let token = self.allocate_token();
        let now = now();
        let mut client = Client::new(token, channel, peer, now);
        if !command_socket::is_allowed(&peer, self.owner_uid, &self.config.command_allowed_uids) {
            tracing::warn!(target: logging::AUDIT_TARGET, uid = peer.uid, pid = peer.pid, result = "refused", "command client refused: uid not allowed");
            client.answer(clients::response(
                sozu_command_lib::command::ResponseStatus::Failure,
                format!("uid {} is not allowed on this command socket", peer.uid),
            ));
            return;
        }
        if self.clients.len() >= self.config.max_command_clients.get() {
            self.evict_idlest_client(now);
        }
        if self.clients.len() >= self.config.max_command_clients.get() {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                max = self.config.max_command_clients.get(),
                "too many command clients, closed"
            );
            client.answer(clients::response(
                sozu_command_lib::command::ResponseStatus::Failure,
                format!(
                    "too many command clients (max_command_clients = {})",
                    self.config.max_command_clients.get()
                ),
            ));
            return;
        }
        if let Err(error) = self.poll.registry().register(
            client.channel.source_mut(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%error, "cannot register a command client");
            return;
        }
        tracing::debug!(
            client = token.0,
            uid = peer.uid,
            pid = peer.pid,
            "command client connected"
        );
        self.clients.insert(token, client);
        self.clients_to_serve.push_back(token);
    }

    /// Frees the slot of the client idle the longest, if it has been idle
    /// for at least [`clients::IDLE_EVICTION_AFTER`].
    fn evict_idlest_client(&mut self, now: Instant) {
        let idlest = self
            .clients
            .values()
            .filter(|client| client.is_evictable(now))
            .min_by_key(|client| client.last_active)
            .map(|client| client.token);
        let Some(token) = idlest else {
            return;
        };
        if let Some(mut client) = self.clients.remove(&token) {
            tracing::info!(
                client = token.0,
                uid = client.peer.uid,
                pid = client.peer.pid,
                "idle command client closed to make room for a new one"
            );
            let _ = self.poll.registry().deregister(client.channel.source_mut());
        }
    }

    /// Reads and handles the client's orders, one at a time.
    fn serve_client(&mut self, token: Token, now: Instant) {
        loop {
            let Some(client) = self.clients.get_mut(&token) else {
                return;
            };
            if client.busy || client.broken || client.close_after_flush {
                return;
            }
            match client.channel.try_read_message() {
                Ok(Some(request)) => {
                    client.busy = true;
                    client.last_active = now;
                    self.handle_request(token, request, now);
                }
                Ok(None) => return,
                Err(ChannelError::Decode { len, source }) => {
                    tracing::debug!(client = token.0, len, error = %source, "undecodable command frame");
                    client.answer(clients::response(
                        sozu_command_lib::command::ResponseStatus::Failure,
                        format!("undecodable frame of {len} bytes: {source}"),
                    ));
                }
                Err(
                    error @ (ChannelError::FrameTooLarge { .. }
                    | ChannelError::FrameTooShort { .. }),
                ) => {
                    // The stream cannot be resynchronised: answer, then close.
                    tracing::debug!(client = token.0, %error, "bad command frame, closing the client");
                    client.answer(clients::response(
                        sozu_command_lib::command::ResponseStatus::Failure,
                        format!("{error}; closing the connection"),
                    ));
                    client.close_after_flush = true;
                    return;
                }
                Err(error) => {
                    tracing::debug!(client = token.0, %error, "command client gone");
                    client.broken = true;
                    return;
                }
            }
        }
    }

    /// Drops a finished client or updates its registration.
    fn refresh_client(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if client.is_finished() {
            if let Some(mut client) = self.clients.remove(&token) {
                let _ = self.poll.registry().deregister(client.channel.source_mut());
            }
        }
    }

    /// Sends an answer to a client (if it is still there).
    fn answer(&mut self, token: Token, response: sozu_command_lib::command::Response) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let was_busy = client.busy;
        client.answer(response);
        client.last_active = now();
        if was_busy && !client.busy {
            self.clients_to_serve.push_back(token);
        }
        self.refresh_client(token);
    }

    // ---- workers ----

    /// Starts worker `id` and sends it its slot's listening sockets, the
    /// current state, then a status.
    fn start_worker(&mut self, id: u32, now: Instant, quick_failures: u32) -> anyhow::Result<()> {
        let adopt = self.boot_adopt_order(id);
        self.start_worker_with(
            id,
            now,
            quick_failures,
            adopt.into_iter().collect(),
            Purpose::WorkerBoot { worker: id },
        )?;
        let keys = self.listen_sockets.keys();
        self.send_listen_sockets(id, &keys);
        Ok(())
    }

    /// Starts worker `id` and queues `prelude`, the state and a status to
    /// it, gathered under `purpose`.
    fn start_worker_with(
        &mut self,
        id: u32,
        now: Instant,
        quick_failures: u32,
        prelude: Vec<sozu_command_lib::command::Request>,
        purpose: Purpose,
    ) -> anyhow::Result<()> {
        let spawned = workers::spawn(&self.launch, id)
            .with_context(|| format!("cannot start worker {id}"))?;
        let token = self.allocate_token();
        let mut channel = workers::WorkerChannel::new(
            spawned.channel,
            self.config.command_buffer_size.get(),
            worker_channel_max(&self.config),
        );
        self.poll
            .registry()
            .register(
                channel.source_mut(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .with_context(|| format!("cannot register worker {id}"))?;
        let worker = Worker {
            id,
            pid: spawned.pid,
            token,
            channel,
            scm: sozu_command_lib::scm::ScmSocket::new(spawned.scm)
                .map_err(|e| anyhow::anyhow!("worker {id}: {e}"))?,
            run_state: RunState::Running,
            outbox: VecDeque::new(),
            started_at: now,
            ready: false,
            boot: None,
            boot_failure: None,
            channel_closed: false,
            quick_failures,
        };
        tracing::info!(worker = id, pid = spawned.pid.as_raw(), "worker started");
        self.workers.insert(id, worker);
        self.worker_tokens.insert(token, id);
        self.boot_worker(id, prelude, purpose, now);
        Ok(())
    }

    /// Queues `prelude` (e.g. adopt_listen_sockets), the state orders and a
    /// status to worker `id`, gathered as one boot order.
    fn boot_worker(
        &mut self,
        id: u32,
        prelude: Vec<sozu_command_lib::command::Request>,
        purpose: Purpose,
        now: Instant,
    ) {
        let order = self
            .gather
            .open(purpose, now, Some(self.config.worker_timeout));
        // `adopt_flows` (a flow handover) ends the boot, after the state:
        // the listeners it fills exist by then.
        let (postlude, mut requests): (Vec<_>, Vec<_>) = prelude.into_iter().partition(|r| {
            matches!(
                r.request_type,
                Some(sozu_command_lib::command::request::RequestType::AdoptFlows(
                    _
                ))
            )
        });
        requests.extend(self.state.generate_requests());
        requests.extend(self.sozu.boot_orders());
        requests.extend(postlude);
        requests.push(sozu_command_lib::command::Request {
            request_type: Some(sozu_command_lib::command::request::RequestType::Status(
                sozu_command_lib::command::Status {},
            )),
        });
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.ready = false;
            worker.boot = Some(workers::Boot {
                order,
                total: u64::try_from(requests.len()).unwrap_or(u64::MAX),
            });
        }
        self.send_to_worker(order, id, requests);
        self.pump_worker(id);
    }

    /// Queues requests for one worker under one order.
    fn send_to_worker(
        &mut self,
        order: OrderId,
        id: u32,
        requests: Vec<sozu_command_lib::command::Request>,
    ) {
        for content in requests {
            let Some(request_id) = self.gather.expect(order, id) else {
                return;
            };
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.send(WorkerRequest {
                    id: request_id,
                    content,
                });
            }
        }
    }

    /// Sends `requests` to every live worker under a new order; finishes it
    /// at once if no worker is live.
    fn fan_out(
        &mut self,
        purpose: Purpose,
        requests: Vec<sozu_command_lib::command::Request>,
        timeout: Option<Duration>,
        now: Instant,
    ) -> OrderId {
        let order = self.gather.open(purpose, now, timeout);
        let live: Vec<u32> = self
            .workers
            .values()
            .filter(|w| w.receives_orders())
            .map(|w| w.id)
            .collect();
        for id in &live {
            self.send_to_worker(order, *id, requests.clone());
            self.pump_worker(*id);
        }
        if let Some(gathered) = self.gather.finish_if_complete(order) {
            self.on_gathered(gathered, now);
        }
        order
    }

    fn pump_worker(&mut self, id: u32) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if let Err(error) = worker.pump() {
            tracing::warn!(worker = id, %error, "worker channel broken");
            self.on_worker_channel_closed(id, now());
            return;
        }
        let interest = worker.interest();
        let token = worker.token;
        let _ = self
            .poll
            .registry()
            .reregister(worker.channel.source_mut(), token, interest);
    }

    fn read_worker(&mut self, id: u32, now: Instant) {
        loop {
            let Some(worker) = self.workers.get_mut(&id) else {
                return;
            };
            if worker.channel_closed {
                return;
            }
            match worker.channel.try_read_message() {
                Ok(Some(answer)) => {
                    if worker.run_state == RunState::NotAnswering {
                        worker.run_state = RunState::Running;
                    }
                    match self.gather.on_answer(id, answer, now) {
                        AnswerEvent::Finished(gathered) => self.on_gathered(gathered, now),
                        AnswerEvent::Progress {
                            order,
                            worker,
                            message,
                        } => self.on_progress(order, worker, message),
                        AnswerEvent::Recorded => {}
                        AnswerEvent::Unknown => {
                            tracing::debug!(
                                worker = id,
                                "answer to no pending order (late or unknown id)"
                            );
                        }
                    }
                }
                Ok(None) => return,
                Err(ChannelError::Decode { len, source }) => {
                    tracing::warn!(worker = id, len, error = %source, "undecodable frame from a worker");
                }
                Err(error) => {
                    tracing::info!(worker = id, %error, "worker channel closed");
                    self.on_worker_channel_closed(id, now);
                    return;
                }
            }
        }
    }

    fn on_progress(&mut self, order: OrderId, worker: u32, message: String) {
        if let Some(Purpose::Client(client_order)) = self.gather.purpose(order) {
            let token = client_order.client;
            self.answer(
                token,
                clients::response(
                    sozu_command_lib::command::ResponseStatus::Processing,
                    format!("worker {worker}: {message}"),
                ),
            );
        }
    }

    /// Routes a finished order to whoever waits for it.
    fn on_gathered(&mut self, gathered: Gathered<Purpose>, now: Instant) {
        let (purpose, gathered) = gathered.into_parts();
        match purpose {
            Purpose::Client(order) => {
                self.finish_client_order(order, gathered, now);
            }
            Purpose::WorkerBoot { worker } => {
                self.on_worker_booted(worker, gathered, now);
            }
            Purpose::Heartbeat => {}
            Purpose::Scrape { client } => {
                self.on_scrape_gathered(client, gathered);
            }
            Purpose::StopForward => {
                for (worker, failure) in &gathered.failures {
                    // A worker may exit without answering: that is a stop too.
                    if *failure != gather::WorkerFailure::Gone {
                        tracing::warn!(worker, %failure, "worker did not acknowledge the stop");
                    }
                }
            }
            Purpose::Change(change) => {
                self.finish_change(*change, gathered, now);
            }
            Purpose::Repair { name } => {
                self.finish_repair(name, gathered, now);
            }
            Purpose::Upgrade(step) => {
                upgrade::on_step_done(self, step, gathered, now);
            }
        }
    }

    /// Removes the pid file and the command socket (on exit).
    fn cleanup_files(&mut self) {
        if let Some(pid_file) = &self.config.pid_file_path {
            let _ = std::fs::remove_file(pid_file);
        }
        let _ = std::fs::remove_file(&self.config.command_socket);
    }
}

/// The clock, read by the loop only.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn worker_channel_max(config: &Config) -> usize {
    config
        .max_command_buffer_size
        .get()
        .max(MIN_WORKER_CHANNEL_MAX)
}

fn into_std_stream(stream: mio::net::UnixStream) -> std::os::unix::net::UnixStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = stream.into_raw_fd();
    // SAFETY: the fd was just released by the mio stream that owned it.
    unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit: every UDP flow holds
/// a socket, and workers inherit the limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open file limit"),
            Err(error) => tracing::warn!(%error, soft, hard, "cannot raise the open file limit"),
        },
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open file limit"),
    }
}
