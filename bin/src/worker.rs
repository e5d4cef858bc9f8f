//! `sozu worker`: the entry of one worker process, started by the master
//! (never by hand) with its end of the channel and of the fd-passing socket
//! as inherited file descriptors.
//!
//! Owns turning those fds and the command-line settings into a running
//! worker loop (`sozu_lib`'s server); it holds no proxy logic itself.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sozu_command_lib::channel::Channel;
use sozu_command_lib::command::{WorkerRequest, WorkerResponse};
use sozu_command_lib::config::AccessLogFormat;
use sozu_command_lib::scm::ScmSocket;
use sozu_lib::server::{LogLevelHook, Server, ServerConfig, StatsdConfig};

use crate::logging::{self, LogSettings};

/// Arguments the master passes to a worker it starts.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Worker id given by the master.
    #[arg(long)]
    pub id: u32,
    /// File descriptor of the worker's end of the channel socketpair.
    #[arg(long)]
    pub channel_fd: RawFd,
    /// File descriptor of the worker's end of the fd-passing socketpair.
    #[arg(long)]
    pub scm_fd: RawFd,
    /// Initial size of the channel buffers, bytes.
    #[arg(long, default_value_t = 16_384)]
    pub command_buffer_size: usize,
    /// Largest message on the channel, bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_command_buffer_size: usize,
    /// Log filter (the master's `log_level`).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log target (the master's `log_target`).
    #[arg(long, default_value = "stdout")]
    pub log_target: String,
    /// Access log target (the master's `access_logs_target`).
    #[arg(long)]
    pub access_logs_target: Option<String>,
    /// Access log format (the master's `access_logs_format`).
    #[arg(long, default_value = "ascii", value_parser = ["ascii", "json"])]
    pub access_logs_format: String,
    /// The configured `buffer_size` (UDP `max_rx_datagram_size` is clamped
    /// to it).
    #[arg(long, default_value_t = 16_393)]
    pub buffer_size: usize,
    /// The configured `max_connections`: client connections (TCP and HTTP
    /// together) this worker keeps open at once (0: unlimited).
    #[arg(long, default_value_t = 500)]
    pub max_connections: usize,
    /// Workers of the master (`worker_count`): they share the host's
    /// ephemeral ports, so each sizes its UDP flow pool to its part.
    #[arg(long, default_value_t = 1)]
    pub worker_count: u32,
    /// `upstream_source_addresses`, one flag per address.
    #[arg(long = "upstream-source-address")]
    pub upstream_source_addresses: Vec<std::net::IpAddr>,
    /// statsd server to push metrics to (`[metrics] address`).
    #[arg(long)]
    pub statsd_address: Option<SocketAddr>,
    /// Prefix of every statsd metric name.
    #[arg(long, default_value = "sozu")]
    pub statsd_prefix: String,
    /// Scopes as dogstatsd tags instead of in the name.
    #[arg(long)]
    pub statsd_tagged: bool,
    /// Key of the UDP affinity hash (the master's `hash_seed`); absent: the
    /// fixed default, the same in every process.
    #[arg(long)]
    pub hash_seed: Option<u64>,
}

/// Runs the worker until it is stopped; exit 0 after a soft or hard stop.
pub fn run(args: WorkerArgs) -> ExitCode {
    let settings = match log_settings(&args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: worker {}: {error:#}", args.id);
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = logging::init(&settings, &format!("worker-{}", args.id)) {
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
    let channel: Channel<WorkerResponse, WorkerRequest> = Channel::new(
        channel,
        args.command_buffer_size,
        args.max_command_buffer_size,
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
        hash_seed: args.hash_seed,
        buffer_size: args.buffer_size,
        max_connections: args.max_connections,
        statsd: args.statsd_address.map(|address| StatsdConfig {
            address,
            prefix: args.statsd_prefix.clone(),
            tagged: args.statsd_tagged,
            flush_interval: STATSD_FLUSH_INTERVAL,
        }),
        adopted_sockets: Vec::new(),
        scm: Some(scm),
        listen_sockets_from_master: true,
        raise_fd_limit: true,
        log_level: Some(LogLevelHook::new(|directives| {
            logging::set_level(directives).map_err(|error| format!("{error:#}"))
        })),
        worker_count: args.worker_count,
        upstream_source_addresses: args.upstream_source_addresses.clone(),
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

fn log_settings(args: &WorkerArgs) -> anyhow::Result<LogSettings> {
    Ok(LogSettings {
        level: args.log_level.clone(),
        target: logging::parse_target(&args.log_target)?,
        access_target: args
            .access_logs_target
            .as_deref()
            .map(logging::parse_target)
            .transpose()?,
        access_format: if args.access_logs_format == "json" {
            AccessLogFormat::Json
        } else {
            AccessLogFormat::Ascii
        },
        audit_target: None,
    })
}
