//! Upgrades without dropping traffic.
//!
//! `upgrade_worker N`: the old worker hands its listening sockets back
//! (`return_listen_sockets`; the fds and their manifest arrive on its
//! fd-passing socket), a new worker is started and adopts exactly those
//! sockets (`adopt_listen_sockets` + the same fds, then the state orders and
//! a status), then the old worker soft-stops and drains its flows. The
//! sockets are never re-bound, so the kernel keeps queueing datagrams and
//! connections on them throughout.
//!
//! `upgrade_main`: the master re-executes the binary on disk in place
//! (`execve` keeps its pid, so the workers stay its children). The command
//! socket, the worker channels and fd-passing sockets, and the requesting
//! client's connection survive the exec (their close-on-exec flag is cleared
//! on exactly those fds); the state and the tables travel in a memfd whose fd
//! number is passed as `--upgrade-fd`. The new master rebuilds its tables
//! from it and answers the client that asked.
//!
//! Live flows: between "sockets returned" and "new worker booted" the old
//! worker passes its UDP flows (`return_flows`), and the new worker adopts
//! them before it reads any listener (`flow_handover.rs`, doc/udp.md).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::UnixListener;
use mio::{Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{
    ListenSocketManifest, Request, ResponseStatus, ReturnListenSockets, RunState, SoftStop,
};
use sozu_command_lib::config::Config;
use sozu_command_lib::scm::{ListenSocket, ScmSocket, DEFAULT_MAX_MANIFEST_SIZE};
use sozu_command_lib::state::ConfigState;

use super::clients::{response, Client, ClientChannel};
use super::flow_handover::{self, HeldFlows};
use super::gather::Gathered;
use super::orders::audit;
use super::workers::{clear_cloexec, set_cloexec, Worker, WorkerChannel};
use super::{command_socket, worker_channel_max, Master, Phase, Purpose};

/// A step of a worker upgrade, awaiting worker answers.
#[derive(Debug)]
pub(crate) enum Step {
    /// The old worker was asked for its listening sockets.
    ReturnSockets { old: u32 },
    /// The old worker was asked for its live flows.
    ReturnFlows { old: u32 },
    /// The new worker failed: the old one gets its flows back.
    GiveBack { old: u32 },
    /// The new worker received the sockets, the state and a status.
    BootNew { old: u32, new: u32 },
}

/// The worker upgrade in progress (one at a time).
#[derive(Debug)]
pub(crate) struct WorkerUpgrade {
    client: Token,
    old: u32,
    /// The listening sockets returned by the old worker, until the new
    /// worker is started with them.
    sockets: Option<(ListenSocketManifest, Vec<ListenSocket>)>,
    /// The flows handed over, held until the new worker is booted.
    flows: HeldFlows,
}

/// `upgrade_worker N` from client `token`.
pub(super) fn begin_worker(master: &mut Master, token: Token, old: u32, now: Instant) {
    if master.upgrade.is_some() {
        master.answer(
            token,
            response(ResponseStatus::Failure, "an upgrade is already in progress"),
        );
        return;
    }
    if !master
        .workers
        .get(&old)
        .is_some_and(|w| w.is_live() && w.ready)
    {
        master.answer(
            token,
            response(
                ResponseStatus::Failure,
                format!("upgrade_worker: no running worker with id {old}"),
            ),
        );
        return;
    }
    master.upgrade = Some(WorkerUpgrade {
        client: token,
        old,
        sockets: None,
        flows: HeldFlows::default(),
    });
    let order = master.gather.open(
        Purpose::Upgrade(Step::ReturnSockets { old }),
        now,
        Some(master.config.worker_timeout),
    );
    master.send_to_worker(
        order,
        old,
        vec![Request {
            request_type: Some(RequestType::ReturnListenSockets(ReturnListenSockets {})),
        }],
    );
    master.pump_worker(old);
    master.answer(
        token,
        response(
            ResponseStatus::Processing,
            format!("asking worker {old} for its listening sockets"),
        ),
    );
}

/// A step's answers are in.
pub(super) fn on_step_done(master: &mut Master, step: Step, gathered: Gathered<()>, now: Instant) {
    match step {
        Step::ReturnSockets { old } => sockets_returned(master, old, gathered, now),
        Step::ReturnFlows { old } => {
            let flows = flow_handover::receive(master, old, &gathered);
            boot_new(master, old, flows, now);
        }
        Step::BootNew { old, new } => new_worker_booted(master, old, new, gathered, now),
        Step::GiveBack { old } => {
            if !gathered.is_ok() {
                tracing::error!(
                    worker = old,
                    failure = gathered.failure_summary(),
                    "the old worker did not take its flows back"
                );
            }
        }
    }
}

fn fail(master: &mut Master, message: String) {
    tracing::error!(message, "worker upgrade failed");
    if let Some(upgrade) = master.upgrade.take() {
        master.answer(upgrade.client, response(ResponseStatus::Failure, message));
    }
}

fn sockets_returned(master: &mut Master, old: u32, gathered: Gathered<()>, now: Instant) {
    if !gathered.is_ok() {
        let summary = gathered.failure_summary();
        fail(
            master,
            format!("upgrade_worker {old}: the worker did not return its sockets: {summary}"),
        );
        return;
    }
    let manifest = match gathered
        .contents
        .get(&old)
        .and_then(|c| c.content_type.clone())
    {
        Some(ContentType::ListenSockets(manifest)) => manifest,
        _ => ListenSocketManifest::default(),
    };
    let Some(worker) = master.workers.get(&old) else {
        fail(master, format!("upgrade_worker {old}: the worker is gone"));
        return;
    };
    let received = worker
        .scm
        .set_timeout(Some(master.config.worker_timeout))
        .and_then(|()| worker.scm.receive_listen_sockets(DEFAULT_MAX_MANIFEST_SIZE));
    let sockets = match received {
        Ok(sockets) => sockets,
        Err(error) => {
            fail(
                master,
                format!("upgrade_worker {old}: cannot receive the listening sockets: {error}"),
            );
            return;
        }
    };
    let received_entries: Vec<_> = sockets.iter().map(ListenSocket::entry).collect();
    if received_entries != manifest.entries {
        fail(
            master,
            format!(
                "upgrade_worker {old}: the sockets received ({}) do not match the worker's manifest ({})",
                received_entries.len(),
                manifest.entries.len()
            ),
        );
        return;
    }
    if let Some(upgrade) = master.upgrade.as_mut() {
        upgrade.sockets = Some((manifest, sockets));
    }
    flow_handover::ask(master, old, now);
}

/// Starts the new worker with the listening sockets and the flows.
fn boot_new(master: &mut Master, old: u32, flows: HeldFlows, now: Instant) {
    let Some((manifest, sockets)) = master.upgrade.as_mut().and_then(|u| u.sockets.take()) else {
        return;
    };
    let new = master.next_worker_id;
    master.next_worker_id += 1;
    // The flow sequence follows even when empty: `adopt_flows` is what
    // starts the new worker's listeners.
    let prelude = vec![
        flow_handover::adopt_sockets_order(manifest.clone()),
        flow_handover::adopt_order(),
    ];
    let started = master.start_worker_with(
        new,
        now,
        0,
        prelude,
        Purpose::Upgrade(Step::BootNew { old, new }),
    );
    if let Err(error) = started {
        flow_handover::give_back(master, old, &flows, now);
        fail(master, format!("upgrade_worker {old}: {error:#}"));
        return;
    }
    // The orders are queued on the channel; the fds follow on the
    // fd-passing socket (the worker reads them when it reads the first
    // order): the listening sockets, then the flows.
    let Some(worker) = master.workers.get(&new) else {
        flow_handover::give_back(master, old, &flows, now);
        fail(
            master,
            format!("upgrade_worker {old}: the new worker {new} is gone"),
        );
        return;
    };
    let fds: Vec<_> = sockets.iter().map(|s| s.fd.as_fd()).collect();
    let sent = worker
        .scm
        .set_timeout(Some(master.config.worker_timeout))
        .and_then(|()| worker.scm.send_listen_sockets(&manifest, &fds))
        .map_err(|e| anyhow::anyhow!("cannot pass the sockets to worker {new}: {e}"))
        .and_then(|()| flow_handover::send(master, new, &flows));
    let pid = worker.pid.as_raw();
    // The master's copies of the listening sockets: the new worker holds
    // its own now. The flows' are kept until the new worker is booted.
    drop(fds);
    drop(sockets);
    if let Err(error) = sent {
        abandon_new_worker(master, new);
        flow_handover::give_back(master, old, &flows, now);
        fail(master, format!("upgrade_worker {old}: {error:#}"));
        return;
    }
    let summary = flows.summary();
    if let Some(upgrade) = master.upgrade.as_mut() {
        upgrade.flows = flows;
        let client = upgrade.client;
        master.answer(
            client,
            response(
                ResponseStatus::Processing,
                format!(
                    "worker {new} (pid {pid}) started with {} listening socket(s) from worker {old}; {summary}",
                    manifest.entries.len()
                ),
            ),
        );
    }
}

fn new_worker_booted(
    master: &mut Master,
    old: u32,
    new: u32,
    gathered: Gathered<()>,
    now: Instant,
) {
    if !gathered.is_ok() {
        let summary = gathered.failure_summary();
        abandon_new_worker(master, new);
        if let Some(flows) = master
            .upgrade
            .as_mut()
            .map(|u| std::mem::take(&mut u.flows))
        {
            flow_handover::give_back(master, old, &flows, now);
        }
        fail(master, format!("upgrade_worker {old}: the new worker {new} failed to start: {summary}; worker {old} keeps serving"));
        return;
    }
    if let Some(worker) = master.workers.get_mut(&new) {
        worker.ready = true;
        worker.boot = None;
    }
    master.listen_sockets.succeed(old, new);
    let stop = master.gather.open(Purpose::StopForward, now, None);
    master.send_to_worker(
        stop,
        old,
        vec![Request {
            request_type: Some(RequestType::SoftStop(SoftStop {})),
        }],
    );
    if let Some(worker) = master.workers.get_mut(&old) {
        worker.run_state = RunState::Stopping;
    }
    master.pump_worker(old);
    let pid = master.workers.get(&new).map_or(0, |w| w.pid.as_raw());
    if let Some(upgrade) = master.upgrade.take() {
        // Dropping `upgrade` closes the master's copies of the flows' fds.
        let summary = upgrade.flows.summary();
        master.answer(
            upgrade.client,
            response(
                ResponseStatus::Ok,
                format!("worker {old} replaced by worker {new} (pid {pid}); {summary}; worker {old} is draining what it kept"),
            ),
        );
    }
}

/// Kills a new worker that could not take over; its exit is expected.
fn abandon_new_worker(master: &mut Master, new: u32) {
    if let Some(worker) = master.workers.get_mut(&new) {
        worker.run_state = RunState::Stopping;
        let _ = kill(worker.pid, Signal::SIGKILL);
    }
}

/// A worker exited: nothing to do beyond what the gathered orders report
/// (the steps fail with "exited before answering").
pub(super) fn on_worker_exit(master: &mut Master, id: u32, _now: Instant) {
    if master.upgrade.as_ref().is_some_and(|u| u.old == id) {
        tracing::warn!(worker = id, "the worker being upgraded exited");
    }
}

// ---- upgrade_main ----

/// What the new master needs to take over, written by the old one.
#[derive(Debug, Serialize, Deserialize)]
struct Handover {
    /// Format version: a new master refuses a handover it does not know.
    version: u32,
    command_socket: PathBuf,
    listener_fd: RawFd,
    client_fd: Option<RawFd>,
    workers: Vec<WorkerHandover>,
    next_worker_id: u32,
    /// The state as the orders that rebuild it.
    state: Vec<Request>,
    /// Worker slots that were down (the new master starts them).
    #[serde(default)]
    down_slots: Vec<u32>,
    /// The listening sockets the master holds (absent from a master that
    /// did not hold them).
    #[serde(default)]
    listen_sockets: super::listen_sockets::Handover,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerHandover {
    id: u32,
    pid: i32,
    channel_fd: RawFd,
    scm_fd: RawFd,
    run_state: i32,
    quick_failures: u32,
}

const HANDOVER_VERSION: u32 = 1;

/// `upgrade_main` from client `token`: checked now, executed at the top of
/// the next loop turn (after this turn's writes).
pub(super) fn begin_main(master: &mut Master, token: Token) {
    // Draining workers (a soft stop forwarded after a worker upgrade) may
    // take as long as their flows: they do not block the exec; their final
    // answer to the old master is simply ignored by the new one.
    let busy = master
        .gather
        .count_where(|p| !matches!(p, Purpose::StopForward | Purpose::Heartbeat));
    if master.upgrade.is_some() || busy > 0 || !matches!(master.phase, Phase::Running) {
        master.answer(
            token,
            response(
                ResponseStatus::Failure,
                "upgrade_main refused: orders or an upgrade are in progress; retry when they are done",
            ),
        );
        return;
    }
    master.exec_requested = Some(token);
}

/// Re-executes the master. Returns only if the exec failed (the client got
/// a FAILURE and the master goes on as before).
pub(super) fn exec_new_master(master: &mut Master, token: Token) {
    match prepare_and_exec(master, token) {
        Ok(never) => match never {},
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "upgrade_main failed");
            master.answer(
                token,
                response(
                    ResponseStatus::Failure,
                    format!("upgrade_main failed: {error:#}"),
                ),
            );
        }
    }
}

enum Never {}

fn prepare_and_exec(master: &mut Master, token: Token) -> anyhow::Result<Never> {
    let flush_timeout = Duration::from_secs(2);
    // Every queued order must be on the wire and no answer half-read: the
    // channel buffers do not survive the exec.
    for worker in master.workers.values_mut() {
        if worker.channel_closed {
            continue;
        }
        loop {
            worker
                .pump()
                .with_context(|| format!("worker {} channel", worker.id))?;
            if worker.outbox.is_empty() && !worker.channel.wants_write() {
                break;
            }
            flush_blocking(&mut worker.channel, flush_timeout)
                .with_context(|| format!("worker {} does not read its channel", worker.id))?;
        }
        if worker.channel.buffered_bytes() > 0 {
            anyhow::bail!("worker {} has a half-read answer; retry", worker.id);
        }
    }
    let client = master
        .clients
        .get_mut(&token)
        .context("the requesting client is gone")?;
    if client.channel.buffered_bytes() > 0 {
        anyhow::bail!("the client sent more orders after upgrade_main; send it alone");
    }
    let client_fd = client.channel.as_raw_fd();

    let handover = Handover {
        version: HANDOVER_VERSION,
        command_socket: master.config.command_socket.clone(),
        listener_fd: master.listener.as_raw_fd(),
        client_fd: Some(client_fd),
        workers: master
            .workers
            .values()
            .filter(|w| !w.channel_closed)
            .map(|w| WorkerHandover {
                id: w.id,
                pid: w.pid.as_raw(),
                channel_fd: w.channel.as_raw_fd(),
                scm_fd: w.scm.as_fd().as_raw_fd(),
                run_state: w.run_state as i32,
                quick_failures: w.quick_failures,
            })
            .collect(),
        next_worker_id: master.next_worker_id,
        state: master.state.generate_requests(),
        down_slots: master
            .workers
            .values()
            .filter(|w| w.channel_closed && w.run_state == RunState::Stopped)
            .map(|w| w.id)
            .collect(),
        listen_sockets: master.listen_sockets.handover(),
    };
    let json = serde_json::to_vec(&handover).context("cannot encode the handover")?;
    // SAFETY: memfd_create with a static C string; flags 0 = no CLOEXEC, so
    // the new image inherits it.
    let raw = unsafe { libc::memfd_create(c"sozu-upgrade".as_ptr(), 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh fd we own.
    let mut memfd = unsafe { File::from_raw_fd(raw) };
    memfd
        .write_all(&json)
        .context("cannot write the handover")?;
    memfd
        .seek(SeekFrom::Start(0))
        .context("cannot rewind the handover")?;

    let mut inherited = vec![handover.listener_fd, client_fd];
    for w in &handover.workers {
        inherited.push(w.channel_fd);
        inherited.push(w.scm_fd);
    }
    inherited.extend(handover.listen_sockets.fds());
    for fd in &inherited {
        clear_cloexec(*fd).context("cannot keep a socket across exec")?;
    }
    let executable = master.launch.executable.clone();
    let config_path = master.config_path.clone();
    check_runs(&executable)?;
    tracing::info!(executable = %executable.display(), "upgrade_main: executing the new master");
    let _ = std::io::stdout().flush();
    let error = exec(&executable, &config_path, memfd.as_raw_fd());
    // Still here: the exec failed. Put things back.
    for fd in &inherited {
        let _ = set_cloexec(*fd);
    }
    Err(error).with_context(|| format!("cannot execute {}", executable.display()))
}

/// Refuses to exec a binary that does not even run (`--version`): a failed
/// exec is recoverable, a new image that dies at once is not.
fn check_runs(executable: &std::path::Path) -> anyhow::Result<()> {
    let output = std::process::Command::new(executable)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", executable.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{} --version failed ({})",
            executable.display(),
            output.status
        );
    }
    Ok(())
}

fn flush_blocking(channel: &mut WorkerChannel, timeout: Duration) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    while channel.wants_write() {
        if channel.flush()? == sozu_command_lib::channel::FlushStatus::Done {
            break;
        }
        let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLOUT)];
        if poll(&mut fds, PollTimeout::from(millis))? == 0 {
            anyhow::bail!("timed out");
        }
    }
    Ok(())
}

fn exec(executable: &std::path::Path, config: &std::path::Path, fd: RawFd) -> std::io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let to_c = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let args = (|| {
        Ok::<_, std::io::Error>(vec![
            to_c(executable.as_os_str().as_bytes())?,
            to_c(b"start")?,
            to_c(b"--config")?,
            to_c(config.as_os_str().as_bytes())?,
            to_c(b"--upgrade-fd")?,
            to_c(fd.to_string().as_bytes())?,
        ])
    })();
    let args = match args {
        Ok(args) => args,
        Err(e) => return e,
    };
    match nix::unistd::execv(&args[0], &args) {
        Ok(never) => match never {},
        Err(errno) => std::io::Error::from(errno),
    }
}

/// The new master's side: rebuilds the tables from the handover in `fd`.
pub(super) fn resume(
    mut config: Config,
    config_path: PathBuf,
    fd: RawFd,
) -> anyhow::Result<Master> {
    // SAFETY: the fd number was passed by the previous master, which left
    // this memfd open for us; we take ownership once.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let mut json = Vec::new();
    file.read_to_end(&mut json)
        .context("cannot read the upgrade handover")?;
    drop(file);
    let handover: Handover =
        serde_json::from_slice(&json).context("the upgrade handover is not readable")?;
    if handover.version != HANDOVER_VERSION {
        anyhow::bail!(
            "upgrade handover version {} is not supported",
            handover.version
        );
    }
    // The socket path in use wins over an edited configuration file.
    config.command_socket = handover.command_socket.clone();
    let mut state = ConfigState::new();
    for order in &handover.state {
        state
            .dispatch(order)
            .map_err(|e| anyhow::anyhow!("the handed-over state does not rebuild: {e}"))?;
    }
    set_cloexec(handover.listener_fd)?;
    // SAFETY: inherited from the previous master, owned by nobody else here.
    let std_listener =
        unsafe { std::os::unix::net::UnixListener::from_raw_fd(handover.listener_fd) };
    std_listener.set_nonblocking(true)?;
    let mut master = Master::new(
        config,
        config_path,
        state,
        UnixListener::from_std(std_listener),
    )?;
    master.next_worker_id = handover.next_worker_id;
    master.listen_sockets = super::listen_sockets::ListenSockets::resume(
        master.config.worker_count.get() as usize,
        handover.listen_sockets,
    )
    .context("cannot take over the listening sockets")?;
    let now = super::now();
    for w in &handover.workers {
        set_cloexec(w.channel_fd)?;
        set_cloexec(w.scm_fd)?;
        // SAFETY: inherited fds, owned here from now on.
        let channel_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(w.channel_fd) };
        // SAFETY: as above.
        let scm_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(w.scm_fd) };
        channel_stream.set_nonblocking(true)?;
        let mut channel = WorkerChannel::new(
            channel_stream,
            master.config.command_buffer_size.get(),
            worker_channel_max(&master.config),
        );
        let token = master.allocate_token();
        master.poll.registry().register(
            channel.source_mut(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let scm =
            ScmSocket::new(scm_stream).map_err(|e| anyhow::anyhow!("worker {}: {e}", w.id))?;
        let run_state = RunState::try_from(w.run_state).unwrap_or(RunState::Running);
        master.workers.insert(
            w.id,
            Worker {
                id: w.id,
                pid: Pid::from_raw(w.pid),
                token,
                channel,
                scm,
                run_state,
                outbox: Default::default(),
                started_at: now,
                // `upgrade_main` is refused while a worker boots (its boot
                // is an open order), so every worker handed over took its
                // whole state: it serves, as it did under the old master.
                ready: true,
                boot: None,
                boot_failure: None,
                channel_closed: false,
                quick_failures: w.quick_failures,
            },
        );
        master.worker_tokens.insert(token, w.id);
    }
    master.phase = Phase::Running;
    for &id in &handover.down_slots {
        // Failures are retried with a backoff by the supervision.
        master.restart_slot(id, 0, now);
    }
    master.register_listener();
    if let Some(client_fd) = handover.client_fd {
        set_cloexec(client_fd)?;
        // SAFETY: inherited, owned here from now on.
        let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(client_fd) };
        stream.set_nonblocking(true)?;
        let peer = command_socket::peer_credentials(&stream)?;
        let channel = ClientChannel::new(
            stream,
            master.config.command_buffer_size.get(),
            master.config.max_command_buffer_size.get(),
        );
        let token = master.allocate_token();
        let mut client = Client::new(token, channel, peer, super::now());
        master.poll.registry().register(
            client.channel.source_mut(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        client.busy = true;
        master.clients.insert(token, client);
        audit(
            peer,
            "upgrade_main",
            "ok",
            &format!("pid {}", std::process::id()),
        );
        let executable = master.launch.executable.display().to_string();
        master.answer(
            token,
            response(
                ResponseStatus::Ok,
                format!(
                    "main process upgraded in place: pid {}, {} worker(s) kept, executable {executable}",
                    std::process::id(),
                    master.workers.len()
                ),
            ),
        );
    }
    tracing::info!(
        pid = std::process::id(),
        workers = master.workers.len(),
        "new master took over"
    );
    Ok(master)
}
