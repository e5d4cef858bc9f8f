//! Who may drive the master: the command socket's file is refused when it is
//! a symlink or owned by another user, it is 0600 whatever the umask, the
//! kernel keeps other uids out, SO_PEERCRED refuses a uid that is not
//! allowed even when the file mode is loosened, `command_allowed_uids` lets
//! one in, and every mutating order leaves an audit line (who, what,
//! result) in `audit_logs_target`.
//!
//! Tests run as root (CI does): they chown files to `nobody` and run the
//! CLI under other uids with `setuid` in the forked child (`Command::uid`).
//! Malformed/oversized/half frames and the plain 0600 check at start live
//! in `command_socket.rs`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use prost::Message;
use sozu_command_lib::command::{Response, ResponseStatus};
use sozu_e2e::binary::sozu_binary;
use sozu_e2e::ports::free_v4;
use sozu_e2e::wait::poll_until;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpListener};

/// The `nobody` uid and gid on Debian.
const NOBODY: u32 = 65534;
/// A uid with no account, listed in `command_allowed_uids`.
const ALLOWED_UID: u32 = 4242;
/// Bound on a master that must refuse to start, or a CLI run.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn config(extra: &str) -> (SozuConfig, UdpBackend) {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let mut config = SozuConfig::udp(1, UdpListener::new(frontend), cluster);
    config.extra = extra.to_owned();
    (config, backend)
}

/// Runs `command` to completion within [`EXIT_TIMEOUT`] (killed otherwise).
fn run_bounded(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let exited = poll_until(EXIT_TIMEOUT, || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("collect the output");
    assert!(
        exited.is_some(),
        "still running after {EXIT_TIMEOUT:?}: {output:?}"
    );
    output
}

/// `sozu start` on a configuration written in `dir`, expected to refuse
/// to start; returns its combined output.
fn start_expecting_refusal(dir: &Path) -> String {
    let (config, _backend) = config("");
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config.render(dir)).unwrap();
    let mut command = Command::new(sozu_binary());
    command
        .arg("start")
        .arg("-c")
        .arg(&config_path)
        .current_dir(dir);
    let output = run_bounded(command);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "the master started: {text}");
    text
}

/// The CLI run as `uid`/`gid` (setuid in the forked child before exec).
fn cli_as(uid: u32, socket: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(sozu_binary());
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .current_dir("/")
        .uid(uid)
        .gid(NOBODY);
    run_bounded(command)
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_symlink_at_the_socket_path_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // The symlink points at a file an attacker would like clobbered.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let socket = dir.path().join("sozu.sock");
    std::os::unix::fs::symlink(&victim, &socket).unwrap();

    let output = start_expecting_refusal(dir.path());
    assert!(output.contains("symlink"), "{output}");
    assert!(socket.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_socket_owned_by_another_user_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sozu.sock");
    // A leftover socket (nobody listens) that belongs to someone else:
    // removing and re-creating it would steal that user's path.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    std::os::unix::fs::chown(&socket, Some(NOBODY), Some(NOBODY)).unwrap();

    let output = start_expecting_refusal(dir.path());
    assert!(
        output.contains(&format!("owned by uid {NOBODY}")),
        "{output}"
    );
    assert_eq!(std::fs::metadata(&socket).unwrap().uid(), NOBODY);
}

#[test]
fn the_socket_is_0600_even_under_a_zero_umask() {
    let (config, _backend) = config("");
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config.render(dir.path())).unwrap();
    let mut command = Command::new(sozu_binary());
    command
        .arg("start")
        .arg("-c")
        .arg(&config_path)
        .current_dir(dir.path())
        .env(sozu_e2e::sozu::INSTANCE_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: umask(2) is async-signal-safe and touches no Rust state.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut master = command.spawn().unwrap();
    let socket = dir.path().join("sozu.sock");
    let mode = poll_until(EXIT_TIMEOUT, || {
        std::fs::metadata(&socket)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
    });
    let _ = master.kill();
    let _ = master.wait();
    kill_tagged(dir.path());
    assert_eq!(mode, Some(0o600), "socket mode under umask 000");
}

/// Kills the workers of a master started outside the harness, by pid.
fn kill_tagged(dir: &Path) {
    let tag = dir.to_string_lossy();
    for pid in sozu_e2e::procfs::pids_with_env(sozu_e2e::sozu::INSTANCE_ENV, &tag) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Opens the path to the socket for every user (directory searchable,
/// socket 0666) so the test reaches the master's SO_PEERCRED check.
fn loosen(sozu: &Sozu) -> PathBuf {
    std::fs::set_permissions(sozu.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = sozu.socket_path().to_path_buf();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    socket
}

#[test]
fn another_uid_cannot_even_connect_to_the_0600_socket() {
    let (config, _backend) = config("");
    let sozu = Sozu::start(config);
    // Only the directory is opened: the socket keeps its 0600.
    std::fs::set_permissions(sozu.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let output = cli_as(NOBODY, sozu.socket_path(), &["status"]);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains("denied"),
        "the kernel refuses the connect: {out}"
    );
    // The master never saw that client: it is still serving.
    sozu.worker_pids();
}

#[test]
fn peer_credentials_refuse_a_uid_not_allowed_even_on_a_loosened_socket() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let (config, _backend) = config(&format!(
        "command_allowed_uids = [{ALLOWED_UID}]\naudit_logs_target = \"file://{}\"\n",
        audit.display()
    ));
    let sozu = Sozu::start(config);
    let socket = loosen(&sozu);

    // What the master sends a refused peer, read by a raw client.
    let answer = answer_on_connect_as(NOBODY, &socket);
    assert_eq!(answer.status, ResponseStatus::Failure as i32, "{answer:?}");
    assert!(
        answer
            .message
            .contains(&format!("uid {NOBODY} is not allowed")),
        "{answer:?}"
    );
    // The CLI run as that uid fails and its order is not applied.
    let refused = cli_as(NOBODY, &socket, &["cluster", "remove", "-i", "c"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!("uid {NOBODY} is not allowed")),
        "the CLI shows the master's refusal: {}",
        text(&refused)
    );

    let allowed = cli_as(ALLOWED_UID, &socket, &["status"]);
    assert!(allowed.status.success(), "{}", text(&allowed));

    // The refused client changed nothing, and the refusal is audited.
    let clusters = sozu.cli_ok(&["--json", "cluster", "list"]).stdout;
    assert!(
        clusters.contains("\"c\""),
        "cluster c is still there: {clusters}"
    );
    let log = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("uid={NOBODY}")) && l.contains("refused")),
        "no audit line for the refused uid:\n{log}"
    );
}

/// Connects to `socket` as `uid` in a forked child (setgid/setuid, then
/// only raw system calls: the test process has other threads) and returns
/// the frame the master sends before closing; panics if there is none.
fn answer_on_connect_as(uid: u32, socket: &Path) -> Response {
    use std::os::unix::ffi::OsStrExt;
    // Everything the child needs is prepared before the fork.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_bytes();
    assert!(path.len() < address.sun_path.len(), "socket path too long");
    for (dst, src) in address.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    let mut pipe = [0; 2];
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let timeout = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: the child calls only async-signal-safe functions on memory
    // prepared before the fork, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            libc::close(pipe[0]);
            if libc::setgid(NOBODY) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(2);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if fd < 0 || libc::connect(fd, std::ptr::addr_of!(address).cast(), len) != 0 {
                libc::_exit(3);
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                libc::write(pipe[1], buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(0);
        }
    }
    unsafe { libc::close(pipe[1]) };
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut bytes).unwrap();
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child as uid {uid} could not connect (wait status {status})"
    );
    assert!(bytes.len() > 8, "no answer before the close: {bytes:?}");
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    Response::decode(&bytes[8..len]).expect("a Response frame")
}

/// Audit lines that mention `order`.
fn audit_lines<'a>(log: &'a str, order: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(order)).collect()
}

#[test]
fn every_mutating_order_leaves_an_audit_line_with_who_what_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let (config, _backend) = config(&format!(
        "audit_logs_target = \"file://{}\"\n",
        audit.display()
    ));
    let sozu = Sozu::start(config);
    let state = dir.path().join("state.jsonl");
    let state = state.to_string_lossy();
    let other = free_v4().to_string();

    sozu.cli_ok(&["cluster", "add", "-i", "extra"]);
    sozu.backend_add("extra", "x", &other);
    sozu.cli_ok(&["udp", "listener", "add", "-a", &other]);
    sozu.cli_ok(&["state", "save", "-f", &state]);
    let refused = sozu.cli(&[
        "backend",
        "add",
        "-i",
        "nope",
        "--backend-id",
        "y",
        "-a",
        &other,
    ]);
    assert!(
        !refused.success(),
        "a backend of an unknown cluster is refused"
    );
    // Queries are not audited.
    sozu.cli_ok(&["status"]);
    sozu.cli_ok(&["cluster", "list"]);

    let log = poll_until(EXIT_TIMEOUT, || {
        let log = std::fs::read_to_string(&audit).ok()?;
        (log.lines().count() >= 5).then_some(log)
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than 5 audit lines:\n{}",
            std::fs::read_to_string(&audit).unwrap_or_default()
        )
    });
    let me = format!("uid={}", nix::unistd::geteuid().as_raw());
    for (order, result) in [
        ("add_cluster", "ok"),
        ("add_backend", "ok"),
        ("add_udp_listener", "ok"),
        ("save_state", "ok"),
        ("add_backend", "refused"),
    ] {
        let lines = audit_lines(&log, order);
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&me) && l.contains("pid=") && l.contains(result)),
            "no audit line for {order} with {me}, a pid and result {result}:\n{log}"
        );
    }
    assert!(
        audit_lines(&log, "status").is_empty() && audit_lines(&log, "list_clusters").is_empty(),
        "queries are not mutating orders:\n{log}"
    );
}
