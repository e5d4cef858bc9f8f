//! `sozu worker`: the entry of one worker process, started by the master
//! (never by hand) with its end of the channel and of the fd-passing socket
//! as inherited file descriptors.
//!
//! Owns turning those fds and the command-line settings into a running
//! worker loop (`sozu_lib`'s server); it holds no proxy logic itself.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use sozu_command_lib::channel::Channel;
use sozu_command_lib::command::{WorkerRequest, WorkerResponse};
use sozu_command_lib::config::AccessLogFormat;
use sozu_command_lib::scm::ScmSocket;
use sozu_lib::server::{LogLevelHook, Server, ServerConfig, StatsdConfig};

use crate::logging::{self, LogSettings};

/// Arguments the master passes to a worker it starts: who it is, its two
/// inherited fds, and every other knob in one [`WorkerSettings`].
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Worker id given by the master.
    #[arg(long)]
    pub id: u32,
    /// File descriptor of the worker's end of the channel socketpair.
    #[arg(long)]
    pub channel_fd: RawFd,
    /// File descriptor of the worker's end of the fd-passing socketpair.
    #[arg(long)]
    pub scm_fd: RawFd,
    /// Every other setting, as the JSON of [`WorkerSettings`].
    #[arg(long, value_parser = WorkerSettings::from_json)]
    pub settings: WorkerSettings,
}

/// Everything a worker is started with besides its id and its two fds: the
/// part of the configuration a worker needs, read once by the master (a
/// worker never re-reads the configuration file, which may have been edited
/// since) and handed over as one JSON argument.
///
/// Adding a knob: a field here, its value where the master builds this
/// (`Master::new`), its use in [`run`]. The master builds the argument with
/// [`WorkerSettings::to_json`]; a worker refuses an argument that lacks a
/// field or has one it does not know, so a mismatch between a master and
/// the binary it starts fails the start loudly (the master restarts or
/// reports it) instead of running with a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerSettings {
    /// Initial size of the channel buffers, bytes.
    pub command_buffer_size: usize,
    /// Largest message on the channel, bytes.
    pub max_command_buffer_size: usize,
    /// Log filter (the master's `log_level`, or the last `Logging` order's).
    pub log_level: String,
    /// Log target in the `log_target` spelling.
    pub log_target: String,
    /// Access log target (`access_logs_target`), same spelling.
    pub access_logs_target: Option<String>,
    /// `access_logs_format`.
    pub access_logs_format: AccessLogFormatSetting,
    /// The configured `buffer_size` (UDP `max_rx_datagram_size` is clamped
    /// to it).
    pub buffer_size: usize,
    /// The configured `max_connections`: client connections (TCP and HTTP
    /// together) this worker keeps open at once (0: unlimited).
    pub max_connections: usize,
    /// Workers of the master (`worker_count`): they share the host's
    /// ephemeral ports, so each sizes its UDP flow pool to its part.
    pub worker_count: u32,
    /// `upstream_source_addresses`.
    pub upstream_source_addresses: Vec<IpAddr>,
    /// `[metrics]`: the statsd export, if configured.
    pub statsd: Option<StatsdSettings>,
    /// Key of the UDP affinity hash (the master's `hash_seed`); absent: the
    /// fixed default, the same in every process.
    pub hash_seed: Option<u64>,
}

/// `access_logs_format` as carried in [`WorkerSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormatSetting {
    /// One human-readable line per record.
    Ascii,
    /// One JSON object per record.
    Json,
}

impl From<AccessLogFormat> for AccessLogFormatSetting {
    fn from(format: AccessLogFormat) -> Self {
        match format {
            AccessLogFormat::Ascii => AccessLogFormatSetting::Ascii,
            AccessLogFormat::Json => AccessLogFormatSetting::Json,
        }
    }
}

impl From<AccessLogFormatSetting> for AccessLogFormat {
    fn from(format: AccessLogFormatSetting) -> Self {
        match format {
            AccessLogFormatSetting::Ascii => AccessLogFormat::Ascii,
            AccessLogFormatSetting::Json => AccessLogFormat::Json,
        }
    }
}

/// The statsd part of [`WorkerSettings`] (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsdSettings {
    /// statsd server to push metrics to.
    pub address: SocketAddr,
    /// Prefix of every metric name.
    pub prefix: String,
    /// Scopes as dogstatsd tags instead of in the name.
    pub tagged: bool,
}

impl WorkerSettings {
    /// The one `--settings` argument.
    pub(crate) fn to_json(&self) -> String {
        // Plain data (numbers, strings, addresses): serializing cannot fail.
        serde_json::to_string(self).expect("WorkerSettings is plain data")
    }

    /// Parses the `--settings` argument, naming what is wrong.
    pub(crate) fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|error| format!("worker settings: {error}"))
    }
}

/// Runs the worker until it is stopped; exit 0 after a soft or hard stop.
pub(crate) fn run(args: WorkerArgs) -> ExitCode {
    let log = match log_settings(&args.settings) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: worker {}: {error:#}", args.id);
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = logging::init(&log, &format!("worker-{}", args.id)) {
        eprintln!("error: worker {}: {error:#}", args.id);
        return ExitCode::FAILURE;
    }
    // SAFETY: the master cleared close-on-exec on exactly these two fds for
    // this process and passed their numbers; nothing else here owns them.
    let channel = unsafe { std::os::unix::net::UnixStream::from_raw_fd(args.channel_fd) };
    // SAFETY: as above.
    let scm = unsafe { std::os::unix::net::UnixStream::from_raw_fd(args.scm_fd) };
    // Neither must leak into anything this worker might start.
    for fd in [args.channel_fd, args.scm_fd] {
        // SAFETY: plain fcntl on an fd we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let settings = args.settings;
    let channel: Channel<WorkerResponse, WorkerRequest> = Channel::new(
        channel,
        settings.command_buffer_size,
        settings.max_command_buffer_size,
    );
    let scm = match ScmSocket::new(scm) {
        Ok(scm) => scm,
        Err(error) => {
            tracing::error!(worker = args.id, %error, "unusable fd-passing socket");
            return ExitCode::FAILURE;
        }
    };
    let config = ServerConfig {
        worker_id: args.id,
        seed: random_seed(),
        hash_seed: settings.hash_seed,
        buffer_size: settings.buffer_size,
        max_connections: settings.max_connections,
        statsd: settings.statsd.map(|statsd| StatsdConfig {
            address: statsd.address,
            prefix: statsd.prefix,
            tagged: statsd.tagged,
            flush_interval: STATSD_FLUSH_INTERVAL,
        }),
        adopted_sockets: Vec::new(),
        scm: Some(scm),
        listen_sockets_from_master: true,
        raise_fd_limit: true,
        log_level: Some(LogLevelHook::new(|directives| {
            logging::set_level(directives).map_err(|error| format!("{error:#}"))
        })),
        worker_count: settings.worker_count,
        upstream_source_addresses: settings.upstream_source_addresses,
    };
    let server = match Server::new(channel, config) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(worker = args.id, error = %error_chain(&error), "the worker cannot start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(worker = args.id, pid = std::process::id(), "worker running");
    match server.run() {
        Ok(exit) => {
            tracing::info!(worker = args.id, ?exit, "worker stopped");
            ExitCode::from(u8::try_from(exit.exit_code()).unwrap_or(1))
        }
        Err(error) => {
            tracing::error!(worker = args.id, error = %error_chain(&error), "the worker failed");
            ExitCode::FAILURE
        }
    }
}

/// How often metrics are pushed to statsd.
const STATSD_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// A per-process random seed for the flow tables' hashers and RANDOM /
/// POWER_OF_TWO balancing, so a client cannot precompute which flows collide.
/// The affinity hash is NOT keyed by it (`hash_seed`): placement must agree
/// across workers, restarts and instances.
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No entropy source: fall back to something that still differs per
        // process (pid and the address-space layout).
        let fallback = u64::from(std::process::id()) ^ (&bytes as *const _ as u64);
        return fallback.rotate_left(17);
    }
    u64::from_ne_bytes(bytes)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn log_settings(settings: &WorkerSettings) -> anyhow::Result<LogSettings> {
    Ok(LogSettings {
        level: settings.log_level.clone(),
        target: logging::parse_target(&settings.log_target)?,
        access_target: settings
            .access_logs_target
            .as_deref()
            .map(logging::parse_target)
            .transpose()?,
        access_format: settings.access_logs_format.into(),
        audit_target: None,
    })
}
