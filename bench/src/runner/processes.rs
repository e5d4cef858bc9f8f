//! Child processes of the scenario runner and what `/proc` says about them.
//!
//! Owns spawning (optionally pinned with `taskset`, with a parent-death
//! signal so nothing outlives the runner), stopping a child and all its
//! descendants by pid (SIGTERM, bounded wait, SIGKILL), the Ctrl-C flag,
//! and reading RSS / open fds of a process tree. It never signals a
//! process it did not start (descendants are found from the started pid).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM handlers that only raise the interrupted flag;
/// the runner checks it and unwinds, killing its children on the way.
pub(crate) fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Fails when Ctrl-C (or SIGTERM) was received.
pub(crate) fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Path of `taskset` when installed (looked up once).
fn taskset() -> Option<&'static Path> {
    static TASKSET: OnceLock<Option<PathBuf>> = OnceLock::new();
    TASKSET.get_or_init(|| find_on_path("taskset")).as_deref()
}

/// Finds an executable on PATH.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A started child; dropping it stops it and its descendants.
pub(crate) struct Proc {
    /// Short name for messages.
    pub name: String,
    child: Child,
    /// Where stdout/stderr went when captured to a file.
    pub log: Option<PathBuf>,
}

/// How to start a child.
pub(crate) struct Spawn<'a> {
    /// Short name for messages.
    pub name: &'a str,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// CPU to pin to with taskset (ignored when taskset is missing).
    pub cpu: Option<usize>,
    /// File receiving stdout and stderr; `None` pipes stdout to the runner
    /// and sends stderr to a null device.
    pub log: Option<PathBuf>,
}

impl Proc {
    /// Starts a child as described.
    pub(crate) fn spawn(spec: Spawn<'_>) -> anyhow::Result<Proc> {
        let mut argv = spec.argv.clone();
        if let (Some(cpu), Some(taskset)) = (spec.cpu, taskset()) {
            let mut pinned = vec![
                taskset.display().to_string(),
                "-c".to_string(),
                cpu.to_string(),
            ];
            pinned.append(&mut argv);
            argv = pinned;
        }
        let Some((program, args)) = argv.split_first() else {
            bail!("empty command line for {}", spec.name);
        };
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        match &spec.log {
            Some(path) => {
                let file = fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                command.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                command.stdout(Stdio::piped()).stderr(Stdio::inherit());
            }
        }
        // SAFETY: prctl is async-signal-safe; runs in the forked child.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.name, argv.join(" ")))?;
        Ok(Proc {
            name: spec.name.to_string(),
            child,
            log: spec.log,
        })
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Exit status when it has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Reads the first stdout line, failing after `limit`.
    pub(crate) fn first_line(&mut self, limit: Duration) -> anyhow::Result<String> {
        let Some(stdout) = self.child.stdout.take() else {
            bail!("{} has no piped stdout", self.name);
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let result = reader.read_line(&mut line).map(|_| line);
            // Keep draining so the child never blocks on a full pipe.
            let _ = tx.send(result);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(line)) if !line.is_empty() => Ok(line.trim_end().to_string()),
            Ok(Ok(_)) => bail!("{} closed stdout without a line", self.name),
            Ok(Err(e)) => Err(e).context(format!("reading {} stdout", self.name)),
            Err(_) => bail!("{} printed nothing within {limit:?}", self.name),
        }
    }

    /// Waits for exit and returns its whole stdout, killing it after
    /// `limit` or on Ctrl-C.
    #[allow(clippy::disallowed_methods)] // runner shell: bounded wait
    pub(crate) fn wait_output(mut self, limit: Duration) -> anyhow::Result<String> {
        let Some(mut stdout) = self.child.stdout.take() else {
            bail!("{} has no piped stdout", self.name);
        };
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut out).map(|_| out)
        });
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                let out = reader
                    .join()
                    .map_err(|_| anyhow::anyhow!("stdout reader of {} panicked", self.name))??;
                if !status.success() {
                    bail!("{} failed ({status})", self.name);
                }
                return Ok(out);
            }
            check_interrupted()?;
            if Instant::now() >= deadline {
                bail!("{} did not finish within {limit:?}; killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ready` as it is, or its error with the last lines of this
    /// process's log attached: a proxy that never became ready says why.
    pub(crate) fn ready_or_log(&self, ready: anyhow::Result<()>) -> anyhow::Result<()> {
        ready.map_err(|e| e.context(self.log_tail()))
    }

    /// Last lines of the log file, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "{} (last lines):\n{}",
            path.display(),
            lines[from..].join("\n")
        )
    }

    /// Stops the child and every descendant: SIGTERM, up to 3 s, SIGKILL.
    #[allow(clippy::disallowed_methods)] // runner shell: bounded wait
    pub(crate) fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let root = self.pid();
        let tree = process_tree(root);
        for pid in &tree {
            // SAFETY: plain kill(2) on pids we started or their children.
            unsafe { libc::kill(*pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let root_gone = self.exited().is_some();
            if root_gone && tree.iter().skip(1).all(|p| !is_alive(*p)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in &tree {
            if is_alive(*pid) {
                // SAFETY: as above.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; treat state Z as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// `root` followed by all its live descendants (from /proc/*/stat ppid).
pub(crate) fn process_tree(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name: state, ppid, ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids.iter().copied());
        }
        i += 1;
    }
    tree
}

/// Resident memory and open fds of a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TreeUsage {
    /// Sum of VmRSS over the tree, bytes.
    pub rss_bytes: u64,
    /// Sum of entries in /proc/<pid>/fd over the tree.
    pub fds: u64,
}

/// Measures RSS and fds of `root` and its descendants.
pub(crate) fn tree_usage(root: i32) -> TreeUsage {
    let mut usage = TreeUsage::default();
    for pid in process_tree(root) {
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok());
            usage.rss_bytes += kib.unwrap_or(0) * 1024;
        }
        if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
            usage.fds += fds.count() as u64;
        }
    }
    usage
}

/// CPU time and sleeps of a process tree, summed over every thread.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct TreeCpu {
    /// Time on CPU, nanoseconds: the scheduler's exact runtime
    /// (`/proc/<pid>/task/<tid>/schedstat`, first field). `utime + stime`
    /// from `/proc/<pid>/stat` are sampled at the timer tick on this kernel
    /// (tick accounting), which is biased for a process that sleeps and
    /// wakes thousands of times per tick period.
    pub cpu_ns: u64,
    /// Voluntary context switches: how many times a thread went to sleep
    /// waiting for something (`voluntary_ctxt_switches`).
    pub sleeps: u64,
}

impl TreeCpu {
    /// What happened between `earlier` and `self`.
    pub(crate) fn since(self, earlier: TreeCpu) -> TreeCpu {
        TreeCpu {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            sleeps: self.sleeps.saturating_sub(earlier.sleeps),
        }
    }
}

/// Reads [`TreeCpu`] for `root` and its descendants. A thread that exits
/// between two readings takes its time with it; the processes measured
/// here (proxy masters and workers) keep theirs for the whole phase.
pub(crate) fn tree_cpu(root: i32) -> TreeCpu {
    let mut total = TreeCpu::default();
    for pid in process_tree(root) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            if let Ok(schedstat) = fs::read_to_string(dir.join("schedstat")) {
                total.cpu_ns += parse_schedstat(&schedstat).unwrap_or(0);
            }
            if let Ok(status) = fs::read_to_string(dir.join("status")) {
                total.sleeps += parse_voluntary_switches(&status).unwrap_or(0);
            }
        }
    }
    total
}

/// First field of a `schedstat` line: nanoseconds spent on a CPU.
fn parse_schedstat(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

/// `voluntary_ctxt_switches` of a `status` file.
fn parse_voluntary_switches(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        assert_eq!(parse_schedstat("123456789 42 7\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
        let status = "Name:\tsozu\nvoluntary_ctxt_switches:\t812\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_voluntary_switches(status), Some(812));
        assert_eq!(parse_voluntary_switches("Name:\tx\n"), None);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // bounded wait on the clock
    fn time_on_cpu_and_sleeps_of_a_child_tree_are_counted() {
        // A child shell of its own (this test process's other threads come
        // and go with the other tests): it spins, then waits on `sleep`.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exec sleep 30",
            ])
            .spawn()
            .expect("spawn sh");
        let root = child.id() as i32;
        let before = tree_cpu(root);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut spent = TreeCpu::default();
        while std::time::Instant::now() < deadline {
            spent = tree_cpu(root).since(before);
            if spent.cpu_ns >= 10_000_000 && spent.sleeps >= 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(spent.cpu_ns >= 10_000_000, "{spent:?}");
        assert!(spent.sleeps >= 1, "{spent:?}");
    }
}
