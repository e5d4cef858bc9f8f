//! Worker processes seen from the master: starting one (fork + exec of this
//! same binary as the hidden `sozu worker` subcommand, with a channel
//! socketpair and an fd-passing socketpair), its run state, and the queue of
//! orders waiting to be written to its channel.
//!
//! Owns the worker table's entries and the child side of process creation.
//! It never decides when to start or restart a worker (the loop in `mod.rs`
//! does) and never blocks on a worker.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use mio::Token;
use nix::unistd::Pid;
use sozu_command_lib::channel::{Channel, ChannelError, FlushStatus};
use sozu_command_lib::command::{RunState, WorkerInfo, WorkerRequest, WorkerResponse};

use super::gather::OrderId;
use crate::worker::WorkerSettings;

/// The master's end of a worker channel.
pub(crate) type WorkerChannel = Channel<WorkerRequest, WorkerResponse>;

/// What every worker is started with.
#[derive(Debug, Clone)]
pub(crate) struct WorkerLaunch {
    /// The binary to exec (resolved once at master start, so an upgrade
    /// picks up the file on disk).
    pub executable: PathBuf,
    /// Every knob, passed as one argument (`bin/src/worker.rs`).
    pub settings: WorkerSettings,
}

/// A started process and the master's ends of its sockets.
pub(crate) struct Spawned {
    pub pid: Pid,
    pub channel: UnixStream,
    pub scm: UnixStream,
}

/// Starts `sozu worker --id ID ...` with its two socketpairs.
///
/// The child's ends are close-on-exec in the master (std creates them so);
/// only in the forked child, just before exec, is the flag cleared on exactly
/// those two fds, so no other child ever inherits them.
pub(crate) fn spawn(launch: &WorkerLaunch, id: u32) -> io::Result<Spawned> {
    let (master_channel, worker_channel) = UnixStream::pair()?;
    let (master_scm, worker_scm) = UnixStream::pair()?;
    let channel_fd = worker_channel.as_raw_fd();
    let scm_fd = worker_scm.as_raw_fd();

    let mut command = Command::new(&launch.executable);
    command
        .args(worker_arguments(&launch.settings, id, channel_fd, scm_fd))
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls fcntl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            clear_cloexec(channel_fd)?;
            clear_cloexec(scm_fd)?;
            Ok(())
        });
    }
    let child = command.spawn()?;
    // The worker's ends now live in the worker only.
    drop(worker_channel);
    drop(worker_scm);
    let pid = Pid::from_raw(child.id() as i32);
    // Reaping is done by waitpid(-1) on SIGCHLD; dropping the handle does not
    // kill or wait.
    drop(child);
    master_channel.set_nonblocking(true)?;
    Ok(Spawned {
        pid,
        channel: master_channel,
        scm: master_scm,
    })
}

/// The command line of `sozu worker` (after the program name).
pub(crate) fn worker_arguments(
    settings: &WorkerSettings,
    id: u32,
    channel_fd: RawFd,
    scm_fd: RawFd,
) -> Vec<String> {
    vec![
        "worker".to_owned(),
        "--id".to_owned(),
        id.to_string(),
        "--channel-fd".to_owned(),
        channel_fd.to_string(),
        "--scm-fd".to_owned(),
        scm_fd.to_string(),
        "--settings".to_owned(),
        settings.to_json(),
    ]
}

/// Clears FD_CLOEXEC on `fd` so it survives exec.
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd number; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets FD_CLOEXEC on `fd` again (after an inherited fd was adopted).
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd number.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One worker as the master tracks it.
pub(crate) struct Worker {
    pub id: u32,
    pub pid: Pid,
    pub token: Token,
    pub channel: WorkerChannel,
    /// The fd-passing socket (listening sockets during upgrades).
    pub scm: sozu_command_lib::scm::ScmSocket,
    pub run_state: RunState,
    /// Orders not yet accepted by the channel's bounded queue, oldest first.
    pub outbox: VecDeque<WorkerRequest>,
    pub started_at: Instant,
    /// True once the worker answered every order of its initial state (the
    /// status that ends the replay included) and accepted them all: only
    /// then is it reported serving. A worker that refuses part of its state
    /// never becomes ready (`lifecycle.rs` stops it).
    pub ready: bool,
    /// The replay of the initial state while it is in flight.
    pub boot: Option<Boot>,
    /// Why its boot failed, when the master killed it for that: its exit
    /// is then reported with this cause instead of "killed by SIGKILL".
    pub boot_failure: Option<String>,
    /// True once its channel failed or closed: nothing more is written.
    pub channel_closed: bool,
    /// Consecutive restarts of this worker slot that died soon after start.
    pub quick_failures: u32,
}

/// The initial state replayed to a worker, as one gathered order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Boot {
    pub order: OrderId,
    /// Requests in the replay (the closing status included).
    pub total: u64,
}

impl Worker {
    /// This worker for `status`; `waiting` is how many answers its boot
    /// order still waits for (`None` once that order is finished).
    pub(crate) fn info(&self, waiting: Option<usize>) -> WorkerInfo {
        let serving = self.is_serving();
        let progress = match (serving, self.boot) {
            (false, Some(boot)) => waiting.map(|left| {
                let left = u64::try_from(left).unwrap_or(u64::MAX);
                (boot.total.saturating_sub(left), boot.total)
            }),
            _ => None,
        };
        WorkerInfo {
            id: self.id,
            pid: self.pid.as_raw(),
            run_state: self.run_state as i32,
            serving: Some(serving),
            state_orders_applied: progress.map(|(applied, _)| applied),
            state_orders_total: progress.map(|(_, total)| total),
        }
    }

    /// Whether this worker serves its configuration: it took its whole
    /// initial state and its process still runs.
    pub(crate) fn is_serving(&self) -> bool {
        self.ready && !self.channel_closed && self.run_state != RunState::Stopped
    }

    /// Whether state changes should still be sent to this worker: a
    /// draining worker still serves flows, so a removed backend must reach it.
    pub(crate) fn receives_orders(&self) -> bool {
        !self.channel_closed && self.run_state != RunState::Stopped
    }

    /// Whether this worker serves normally (not draining, not stopped).
    pub(crate) fn is_live(&self) -> bool {
        !self.channel_closed && matches!(self.run_state, RunState::Running | RunState::NotAnswering)
    }

    /// Queues `request` behind anything already waiting.
    pub(crate) fn send(&mut self, request: WorkerRequest) {
        self.outbox.push_back(request);
    }

    /// Moves queued orders into the channel and writes what the socket
    /// takes. Returns an error when the channel is broken.
    pub(crate) fn pump(&mut self) -> Result<(), ChannelError> {
        if self.channel_closed {
            return Ok(());
        }
        loop {
            while let Some(next) = self.outbox.front() {
                match self.channel.queue_message(next) {
                    Ok(()) => {
                        self.outbox.pop_front();
                    }
                    // The channel's queue is full: write some, then retry.
                    Err(ChannelError::OutgoingBufferFull { .. }) => break,
                    Err(e) => {
                        // A single message too large for the channel: drop
                        // it (the gather timeout will report it) rather than
                        // wedge every later order.
                        tracing::error!(worker = self.id, error = %e, "cannot send an order to the worker");
                        self.outbox.pop_front();
                    }
                }
            }
            match self.channel.flush()? {
                FlushStatus::Pending => return Ok(()),
                FlushStatus::Done if self.outbox.is_empty() => return Ok(()),
                FlushStatus::Done => {}
            }
        }
    }

    /// Readiness to register for.
    pub(crate) fn interest(&self) -> mio::Interest {
        if self.channel.wants_write() || !self.outbox.is_empty() {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        }
    }
}

/// Resolves the binary to exec for workers and upgrades: the path this
/// process was started from.
pub(crate) fn current_executable() -> io::Result<PathBuf> {
    let path = std::env::current_exe()?;
    // After the file is replaced on disk (an upgrade), /proc reports
    // "PATH (deleted)": the path itself is what we want.
    let text = path.to_string_lossy();
    if let Some(stripped) = text.strip_suffix(" (deleted)") {
        return Ok(Path::new(stripped).to_path_buf());
    }
    Ok(path)
}
