//! One running sozu: a master started from a generated configuration in a
//! temp dir, its workers, and the ways to talk to it (CLI, raw channel).
//!
//! Every process it starts carries `SOZU_E2E_INSTANCE=<temp dir>` in its
//! environment, so [`Drop`] finds and kills all of them by pid (the master,
//! its workers, restarted or upgraded ones): SIGTERM, a bounded wait, then
//! SIGKILL. The master's stdout and stderr go to `master.log` in the temp
//! dir; it is printed when a test fails.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sozu_command_lib::channel::Channel;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{Request, Response, ResponseStatus, RunState, Status, WorkerInfo};

use crate::binary::sozu_binary;
use crate::config::{ClusterConfig, SozuConfig, UdpListener};
use crate::metrics::Metrics;
use crate::ports::free_v4;
use crate::procfs;
use crate::udp::UdpBackend;
use crate::wait::{poll_until, wait_until, Deadline};

/// Environment variable tagging every process of one instance.
pub const INSTANCE_ENV: &str = "SOZU_E2E_INSTANCE";
/// How long a master may take to have every worker RUNNING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one order may take to be answered.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a CLI command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace between SIGTERM and SIGKILL when tearing down.
const TERM_GRACE: Duration = Duration::from_millis(1500);

/// A raw client of the command socket.
pub type CommandChannel = Channel<Request, Response>;

/// The result of one CLI run.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit code (`-1` if killed by a signal).
    pub code: i32,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

/// A running master and its workers.
#[derive(Debug)]
pub struct Sozu {
    dir: tempfile::TempDir,
    config: SozuConfig,
    config_path: PathBuf,
    socket: PathBuf,
    master: Mutex<Child>,
    master_pid: i32,
    tag: String,
    seen_pids: Mutex<BTreeSet<i32>>,
}

impl Sozu {
    /// Writes `config` in a fresh temp dir, starts `sozu start -c`, and waits
    /// until every worker is RUNNING; panics (with the master's log) if it
    /// does not get there within [`READY_TIMEOUT`].
    pub fn start(config: SozuConfig) -> Sozu {
        let sozu = Self::spawn(config).unwrap_or_else(|e| panic!("cannot start sozu: {e:#}"));
        if let Err(e) = sozu.wait_ready(READY_TIMEOUT) {
            panic!(
                "sozu did not become ready: {e:#}\n--- master.log ---\n{}",
                sozu.log_tail(80)
            );
        }
        sozu
    }

    /// The set-up most UDP tests start from: `workers` workers, one UDP
    /// listener on a fresh loopback port, and cluster `c` over `backends`
    /// (each backend's id is its name). Returns the master and the
    /// listener's address.
    pub fn start_udp(workers: u32, backends: &[&UdpBackend]) -> (Sozu, SocketAddr) {
        let frontend = free_v4();
        let cluster = backends
            .iter()
            .fold(ClusterConfig::new("c", frontend), |cluster, backend| {
                cluster.backend(backend.name(), backend.addr())
            });
        let config = SozuConfig::udp(workers, UdpListener::new(frontend), cluster);
        (Sozu::start(config), frontend)
    }

    /// Like [`Sozu::start`], in a directory the test prepared (e.g. with a
    /// stale `sozu.sock` in it); the directory is removed on drop.
    pub fn start_in(dir: tempfile::TempDir, config: SozuConfig) -> Sozu {
        let sozu =
            Self::spawn_in(dir, config).unwrap_or_else(|e| panic!("cannot start sozu: {e:#}"));
        if let Err(e) = sozu.wait_ready(READY_TIMEOUT) {
            panic!(
                "sozu did not become ready: {e:#}\n--- master.log ---\n{}",
                sozu.log_tail(80)
            );
        }
        sozu
    }

    /// Like [`Sozu::start`], with the master's `RLIMIT_NOFILE` (soft and
    /// hard, inherited by its workers) set to `fd_limit` before it runs.
    pub fn start_with_fd_limit(config: SozuConfig, fd_limit: u64) -> Sozu {
        let sozu = Self::spawn_with(Self::temp_dir(), config, Some(fd_limit), &[])
            .unwrap_or_else(|e| panic!("cannot start sozu: {e:#}"));
        if let Err(e) = sozu.wait_ready(READY_TIMEOUT) {
            panic!(
                "sozu did not become ready: {e:#}\n--- master.log ---\n{}",
                sozu.log_tail(80)
            );
        }
        sozu
    }

    /// A fresh temp dir for one instance.
    pub fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("sozu-e2e-")
            .tempdir()
            .expect("create a temp dir")
    }

    /// Writes the configuration and spawns the master, without waiting.
    pub fn spawn(config: SozuConfig) -> anyhow::Result<Sozu> {
        Self::spawn_in(Self::temp_dir(), config)
    }

    /// Writes the configuration in `dir` and spawns the master there.
    pub fn spawn_in(dir: tempfile::TempDir, config: SozuConfig) -> anyhow::Result<Sozu> {
        Self::spawn_with(dir, config, None, &[])
    }

    /// Like [`Self::spawn_in`], with extra environment variables for the
    /// master (e.g. `NOTIFY_SOCKET`).
    pub fn spawn_in_with_env(
        dir: tempfile::TempDir,
        config: SozuConfig,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Sozu> {
        Self::spawn_with(dir, config, None, env)
    }

    fn spawn_with(
        dir: tempfile::TempDir,
        config: SozuConfig,
        fd_limit: Option<u64>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Sozu> {
        let binary = sozu_binary();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config.render(dir.path())).context("write config.toml")?;
        let log = File::create(dir.path().join("master.log")).context("create master.log")?;
        let tag = dir.path().to_string_lossy().into_owned();
        let mut command = Command::new(&binary);
        if let Some(limit) = fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec and only calls
            // setrlimit(2), which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command
            .arg("start")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .env(INSTANCE_ENV, &tag)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log fd")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} start", binary.display()))?;
        let master_pid = child.id() as i32;
        Ok(Sozu {
            socket: dir.path().join("sozu.sock"),
            dir,
            config,
            config_path,
            master: Mutex::new(child),
            master_pid,
            tag,
            seen_pids: Mutex::new(BTreeSet::new()),
        })
    }

    /// The temp dir holding the configuration, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &SozuConfig {
        &self.config
    }

    /// Path of its `config.toml`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Path of its command socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The master's pid.
    pub fn master_pid(&self) -> i32 {
        self.master_pid
    }

    /// The master's exit status if it has exited (reaps it).
    pub fn master_exit(&self) -> Option<ExitStatus> {
        self.master
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .ok()
            .flatten()
    }

    /// Waits for the master to exit.
    pub fn wait_master_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.master_exit())
    }

    /// The last `lines` lines of the master's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The whole master log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    /// A new raw connection to the command socket.
    pub fn channel(&self) -> anyhow::Result<CommandChannel> {
        let stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect to {}", self.socket.display()))?;
        Ok(Channel::new(stream, 16_384, 163_840))
    }

    /// Sends one order on a new connection and returns the final answer
    /// (PROCESSING answers skipped).
    pub fn request(&self, order: RequestType) -> anyhow::Result<Response> {
        let mut channel = self.channel()?;
        send_order(&mut channel, order)
    }

    /// `status`: every worker with its pid and run state.
    pub fn status(&self) -> anyhow::Result<Vec<WorkerInfo>> {
        let response = self.request(RequestType::Status(Status {}))?;
        if response.status != ResponseStatus::Ok as i32 {
            bail!("status answered {}: {}", response.status, response.message);
        }
        let workers = match response.content.and_then(|c| c.content_type) {
            Some(ContentType::Workers(workers)) => workers.vec,
            other => bail!("status answer has no workers: {other:?}"),
        };
        let mut seen = self.seen_pids.lock().unwrap_or_else(|e| e.into_inner());
        seen.extend(workers.iter().map(|w| w.pid));
        Ok(workers)
    }

    /// Pids of the RUNNING workers.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.status()
            .unwrap_or_else(|e| panic!("status failed: {e:#}\n{}", self.log_tail(40)))
            .iter()
            .filter(|w| w.run_state == RunState::Running as i32)
            .map(|w| w.pid)
            .collect()
    }

    /// Waits until `status` shows `worker_count` workers, all serving (see
    /// [`is_serving`]) and alive.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let want = self.config.worker_count as usize;
        let deadline = Deadline::after(timeout);
        let mut last: String;
        // The same serving pids on two polls in a row: a worker that took
        // its state may still crash on the next order (a fault test), and
        // be listed for an instant before its exit is reaped.
        let mut previous: Option<Vec<i32>> = None;
        loop {
            if let Some(status) = self.master_exit() {
                bail!("the master exited with {status} before being ready");
            }
            match self.status() {
                Ok(workers) => {
                    let running: Vec<i32> = workers
                        .iter()
                        .filter(|w| is_serving(w))
                        .map(|w| w.pid)
                        .collect();
                    if running.len() == want && running.iter().all(|p| procfs::is_alive(*p)) {
                        if previous.as_ref() == Some(&running) {
                            return Ok(());
                        }
                        previous = Some(running);
                    } else {
                        previous = None;
                    }
                    last = format!("workers {workers:?}");
                }
                Err(e) => {
                    previous = None;
                    last = format!("{e:#}");
                }
            }
            if deadline.is_past() {
                bail!("not ready after {timeout:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the worker set is `worker_count` serving workers (see
    /// [`is_serving`]) whose pids differ from `old` (after a restart or an
    /// upgrade); returns them.
    pub fn wait_new_workers(&self, old: &[i32], timeout: Duration) -> Vec<i32> {
        let want = self.config.worker_count as usize;
        wait_until("new workers to be serving", timeout, || {
            let pids = self.status().ok()?;
            let running: Vec<i32> = pids
                .iter()
                .filter(|w| is_serving(w))
                .map(|w| w.pid)
                .collect();
            (running.len() == want
                && running
                    .iter()
                    .all(|p| !old.contains(p) && procfs::is_alive(*p)))
            .then_some(running)
        })
    }

    /// Runs `sozu -c <config> <args>` and returns its exit code and output.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let mut full = vec![
            "-c".to_owned(),
            self.config_path.to_string_lossy().into_owned(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        run_cli(self.dir.path(), &full)
    }

    /// `sozu backend add -i CLUSTER --backend-id ID -a ADDRESS`, which must
    /// succeed.
    pub fn backend_add(&self, cluster: &str, backend_id: &str, address: &str) -> CliOutput {
        self.backend_order("add", cluster, backend_id, address)
    }

    /// `sozu backend remove -i CLUSTER --backend-id ID -a ADDRESS`, which
    /// must succeed.
    pub fn backend_remove(&self, cluster: &str, backend_id: &str, address: &str) -> CliOutput {
        self.backend_order("remove", cluster, backend_id, address)
    }

    fn backend_order(&self, verb: &str, cluster: &str, id: &str, address: &str) -> CliOutput {
        self.cli_ok(&[
            "backend",
            verb,
            "-i",
            cluster,
            "--backend-id",
            id,
            "-a",
            address,
        ])
    }

    /// Runs a CLI command that must succeed; panics with its output and the
    /// master's log otherwise.
    pub fn cli_ok(&self, args: &[&str]) -> CliOutput {
        let out = self.cli(args);
        if !out.success() {
            panic!(
                "sozu {} exited {}\nstdout: {}\nstderr: {}\n--- master.log ---\n{}",
                args.join(" "),
                out.code,
                out.stdout,
                out.stderr,
                self.log_tail(40)
            );
        }
        out
    }

    /// `sozu metrics get --json`, decoded.
    pub fn metrics(&self) -> Metrics {
        let out = self.cli_ok(&["--json", "metrics", "get"]);
        Metrics::from_cli_json(&out.stdout).unwrap_or_else(|e| panic!("cannot read metrics: {e:#}"))
    }

    /// Polls metrics until `check` accepts them.
    pub fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Metrics) -> bool,
    ) -> Metrics {
        let mut last = Metrics::default();
        let found = poll_until(timeout, || {
            last = self.metrics();
            check(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for metrics: {what}\nlast proxying: {:?}\nlast clusters: {:?}",
                last.0.proxying, last.0.clusters
            )
        })
    }

    /// Every live process of this instance: the master, workers seen in
    /// `status`, and any process tagged with this instance.
    pub fn live_pids(&self) -> BTreeSet<i32> {
        let mut pids: BTreeSet<i32> = self
            .seen_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        pids.insert(self.master_pid);
        pids.extend(procfs::pids_with_env(INSTANCE_ENV, &self.tag));
        pids.retain(|p| procfs::is_alive(*p));
        pids
    }

    /// Kills every process of this instance (SIGTERM, bounded wait,
    /// SIGKILL) and reaps the master.
    pub fn kill_all(&self) {
        let pids = self.live_pids();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        let gone = poll_until(TERM_GRACE, || {
            let _ = self.master_exit();
            self.live_pids().is_empty().then_some(())
        });
        if gone.is_none() {
            for pid in self.live_pids() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let mut master = self.master.lock().unwrap_or_else(|e| e.into_inner());
        if master.try_wait().ok().flatten().is_none() {
            let _ = master.kill();
            let _ = master.wait();
        }
        drop(master);
        // Workers orphaned by the master are reaped by init; wait until they
        // are gone so a test's fds and ports are released before the next.
        let _ = poll_until(Duration::from_secs(2), || {
            let left = self.live_pids();
            for pid in &left {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            left.is_empty().then_some(())
        });
    }
}

impl Drop for Sozu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sozu master.log ({}) ---\n{}\n--- end ---",
                self.dir.path().display(),
                self.log_tail(80)
            );
        }
        self.kill_all();
    }
}

/// Whether `status` reports `worker` as serving its configuration: RUNNING
/// and done applying the initial state the master replayed to it (`serving`
/// true; the master always sends it, so an absent field is not serving).
pub fn is_serving(worker: &WorkerInfo) -> bool {
    worker.run_state == RunState::Running as i32 && worker.serving == Some(true)
}

/// The arguments of `sozu http frontend VERB -i CLUSTER -a LISTENER
/// --hostname HOST MORE…`, for [`Sozu::cli`] or [`Sozu::cli_ok`].
pub fn http_frontend_args<'a>(
    verb: &'a str,
    cluster: &'a str,
    listener: &'a str,
    hostname: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "http",
        "frontend",
        verb,
        "-i",
        cluster,
        "-a",
        listener,
        "--hostname",
        hostname,
    ];
    args.extend_from_slice(more);
    args
}

/// Sends `order` on `channel` and reads answers until a final one.
pub fn send_order(channel: &mut CommandChannel, order: RequestType) -> anyhow::Result<Response> {
    channel
        .write_message(&Request {
            request_type: Some(order),
        })
        .context("send the order")?;
    read_final(channel)
}

/// Reads answers until one is not PROCESSING.
pub fn read_final(channel: &mut CommandChannel) -> anyhow::Result<Response> {
    let deadline = Deadline::after(ORDER_TIMEOUT);
    loop {
        let response = channel
            .read_message_timeout(deadline.remaining().max(Duration::from_millis(1)))
            .context("read the answer")?;
        if response.status != ResponseStatus::Processing as i32 {
            return Ok(response);
        }
        if deadline.is_past() {
            return Err(anyhow!("only PROCESSING answers within {ORDER_TIMEOUT:?}"));
        }
    }
}

/// Runs the sozu binary with `args` in `dir`, bounded by [`CLI_TIMEOUT`].
pub fn run_cli(dir: &Path, args: &[String]) -> CliOutput {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let out_path = dir.join(format!("cli-{n}.out"));
    let err_path = dir.join(format!("cli-{n}.err"));
    let stdout = File::create(&out_path).expect("create a CLI output file");
    let stderr = File::create(&err_path).expect("create a CLI error file");
    let mut child = Command::new(sozu_binary())
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn the sozu CLI");
    let status = poll_until(CLI_TIMEOUT, || child.try_wait().ok().flatten());
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sozu {} did not exit within {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
    };
    let output = CliOutput {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(out_path);
    let _ = std::fs::remove_file(err_path);
    output
}
