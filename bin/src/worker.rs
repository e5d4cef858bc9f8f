//! `sozu worker`: the entry of one worker process, started by the master
//! (never by hand) with its end of the channel and of the fd-passing socket
//! as inherited file descriptors.
//!
//! Owns turning those fds and the command-line settings into a running
//! worker loop (`sozu_lib`'s server); it holds no proxy logic itself.

use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

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
    /// The master's configuration file, for process-wide settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    drop((channel, scm));
    tracing::error!(
        worker = args.id,
        "the worker event loop is not available in this build"
    );
    ExitCode::FAILURE
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
        audit_target: None,
    })
}
