//! The real `sozu start` master on a temporary configuration: readiness by
//! polling the command socket, the socket's mode, orders and queries, bad
//! frames, and a worker restarted after SIGKILL. Every process started is
//! killed by pid when the test ends.

use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sozu_command_lib::channel::Channel;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{
    Cluster, Request, Response, ResponseStatus, RunState, Status, WorkerInfo,
};

type Client = Channel<Request, Response>;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Polling bound: attempts × interval is far above any sane start time.
const POLL_ATTEMPTS: usize = 600;
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A running master; kills it and every worker it reported on drop.
struct Proxy {
    dir: tempfile::TempDir,
    master: Child,
    socket: PathBuf,
    known_workers: Vec<i32>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.master.kill();
        let _ = self.master.wait();
        for pid in &self.known_workers {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(worker_count: u32) -> Proxy {
    start_with(worker_count, "")
}

/// Starts a master; `extra` is added to the global section of its config
/// (`{dir}` in it stands for the test's temporary directory).
fn start_with(worker_count: u32, extra: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let extra = extra.replace("{dir}", &dir.path().display().to_string());
    let socket = dir.path().join("sozu.sock");
    let port = free_udp_port();
    let config = format!(
        r#"
command_socket = "{socket}"
pid_file_path = "sozu.pid"
worker_count = {worker_count}
worker_timeout = 5
log_level = "debug"
log_target = "stdout"
{extra}

[[listeners]]
protocol = "udp"
address = "127.0.0.1:{port}"

[clusters.dns]
protocol = "udp"
frontends = [{{ address = "127.0.0.1:{port}" }}]
backends = [{{ address = "127.0.0.1:9", backend_id = "b1" }}]
"#,
        socket = socket.display(),
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("sozu.log")).unwrap();
    let master = Command::new(env!("CARGO_BIN_EXE_sozu"))
        .arg("start")
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut proxy = Proxy {
        dir,
        master,
        socket,
        known_workers: Vec::new(),
    };
    proxy.wait_ready();
    proxy
}

impl Proxy {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sozu.log")).unwrap_or_default()
    }

    /// Polls the command socket until a status is answered.
    fn wait_ready(&mut self) {
        for _ in 0..POLL_ATTEMPTS {
            if let Ok(Some(exit)) = self.master.try_wait() {
                panic!(
                    "the master exited with {exit} before answering:\n{}",
                    self.log()
                );
            }
            if let Ok(stream) = UnixStream::connect(&self.socket) {
                let mut client = Client::new(stream, 4096, 1 << 20);
                if let Ok(answer) = request(&mut client, status()) {
                    if answer.status() == ResponseStatus::Ok {
                        self.remember_workers(&answer);
                        return;
                    }
                }
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        panic!("the master never answered a status:\n{}", self.log());
    }

    fn client(&self) -> Client {
        Client::new(UnixStream::connect(&self.socket).unwrap(), 4096, 1 << 20)
    }

    fn workers(&mut self) -> Vec<WorkerInfo> {
        let answer = request(&mut self.client(), status()).unwrap();
        self.remember_workers(&answer);
        match answer.content.and_then(|c| c.content_type) {
            Some(ContentType::Workers(infos)) => infos.vec,
            other => panic!("status without workers: {other:?}"),
        }
    }

    fn remember_workers(&mut self, answer: &Response) {
        if let Some(ContentType::Workers(infos)) = answer
            .content
            .as_ref()
            .and_then(|c| c.content_type.as_ref())
        {
            for w in &infos.vec {
                if !self.known_workers.contains(&w.pid) {
                    self.known_workers.push(w.pid);
                }
            }
        }
    }
}

fn status() -> Request {
    Request {
        request_type: Some(RequestType::Status(Status {})),
    }
}

/// Sends one order and returns the final answer (skipping PROCESSING).
fn request(
    client: &mut Client,
    order: Request,
) -> Result<Response, sozu_command_lib::channel::ChannelError> {
    client.write_message(&order)?;
    loop {
        let answer = client.read_message_timeout(ANSWER_TIMEOUT)?;
        if answer.status() != ResponseStatus::Processing {
            return Ok(answer);
        }
    }
}

fn raw_frame(stream: &mut UnixStream, declared_len: u64, body: &[u8]) {
    let mut bytes = declared_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn master_serves_status_and_orders_on_an_owner_only_socket() {
    let mut proxy = start(2);
    assert_eq!(mode(&proxy.socket), 0o600);

    let workers = proxy.workers();
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(
        workers.iter().all(|w| w.run_state() == RunState::Running),
        "{workers:?}\n{}",
        proxy.log()
    );

    // A listed listener comes from the configuration.
    let answer = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::ListListeners(Default::default())),
        },
    )
    .unwrap();
    let Some(ContentType::ListenersList(list)) = answer.content.and_then(|c| c.content_type) else {
        panic!("list_listeners without a list");
    };
    assert_eq!(list.udp_listeners.len(), 1);

    // A refused order names what is wrong; an accepted one reaches both workers.
    let refused = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::RemoveCluster("nope".into())),
        },
    )
    .unwrap();
    assert_eq!(refused.status(), ResponseStatus::Failure);
    assert!(refused.message.contains("nope"), "{}", refused.message);
    let added = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::AddCluster(Cluster {
                cluster_id: "more".into(),
                ..Default::default()
            })),
        },
    )
    .unwrap();
    assert_eq!(
        added.status(),
        ResponseStatus::Ok,
        "{}\n{}",
        added.message,
        proxy.log()
    );
    assert!(added.message.contains("2 worker"), "{}", added.message);
}

#[test]
fn bad_frames_get_an_answer_or_a_close_and_the_master_keeps_serving() {
    let proxy = start(1);

    // Undecodable body inside a well-formed frame: FAILURE, same connection
    // still usable.
    let mut stream = UnixStream::connect(&proxy.socket).unwrap();
    raw_frame(&mut stream, 8 + 4, &[0xff, 0xff, 0xff, 0xff]);
    let mut client = Client::new(stream, 4096, 1 << 20);
    let answer = client.read_message_timeout(ANSWER_TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert_eq!(
        request(&mut client, status()).unwrap().status(),
        ResponseStatus::Ok
    );

    // Oversized declared length: FAILURE then the connection is closed.
    let mut stream = UnixStream::connect(&proxy.socket).unwrap();
    raw_frame(&mut stream, 1 << 40, &[]);
    let mut client = Client::new(stream, 4096, 1 << 20);
    let answer = client.read_message_timeout(ANSWER_TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(answer.message.contains("exceeds"), "{}", answer.message);
    assert!(
        client.read_message_timeout(ANSWER_TIMEOUT).is_err(),
        "the connection must be closed"
    );

    // Declared length below the header: same.
    let mut stream = UnixStream::connect(&proxy.socket).unwrap();
    raw_frame(&mut stream, 3, &[]);
    let mut client = Client::new(stream, 4096, 1 << 20);
    assert_eq!(
        client
            .read_message_timeout(ANSWER_TIMEOUT)
            .unwrap()
            .status(),
        ResponseStatus::Failure
    );

    // Half a frame, then the client goes away.
    let mut stream = UnixStream::connect(&proxy.socket).unwrap();
    stream.write_all(&[40, 0, 0]).unwrap();
    drop(stream);

    // Still serving.
    assert_eq!(
        request(&mut proxy.client(), status()).unwrap().status(),
        ResponseStatus::Ok
    );
}

#[test]
fn a_killed_worker_is_restarted_with_a_new_pid() {
    let mut proxy = start(2);
    let before = proxy.workers();
    let victim = before[0];
    kill(Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();
    let mut restarted = None;
    for _ in 0..POLL_ATTEMPTS {
        let now = proxy.workers();
        if let Some(w) = now.iter().find(|w| w.id == victim.id) {
            if w.pid != victim.pid && w.run_state() == RunState::Running {
                restarted = Some(*w);
                break;
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let restarted = restarted
        .unwrap_or_else(|| panic!("worker {} was not restarted:\n{}", victim.id, proxy.log()));
    assert_ne!(restarted.pid, victim.pid);
}

#[test]
fn a_second_master_on_the_same_socket_is_refused() {
    let proxy = start(1);
    let config_path = proxy.dir.path().join("config.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_sozu"))
        .arg("start")
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another master"), "{stderr}");
    // The first master still answers.
    assert_eq!(
        request(&mut proxy.client(), status()).unwrap().status(),
        ResponseStatus::Ok
    );
}

#[test]
fn a_bad_configuration_is_one_clear_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, "worker_count = \"many\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sozu"))
        .arg("start")
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("worker_count"), "{stderr}");
}

#[test]
fn upgrade_main_keeps_the_pid_the_socket_and_the_workers() {
    let mut proxy = start(2);
    let before = proxy.workers();
    let socket_inode =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&proxy.socket).unwrap());
    let answer = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::UpgradeMain(Default::default())),
        },
    )
    .unwrap();
    assert_eq!(
        answer.status(),
        ResponseStatus::Ok,
        "{}\n{}",
        answer.message,
        proxy.log()
    );
    assert!(
        answer
            .message
            .contains(&format!("pid {}", proxy.master.id())),
        "{}",
        answer.message
    );
    let after = proxy.workers();
    let pids = |ws: &[WorkerInfo]| ws.iter().map(|w| (w.id, w.pid)).collect::<Vec<_>>();
    assert_eq!(pids(&after), pids(&before), "the workers are kept");
    assert!(
        matches!(proxy.master.try_wait(), Ok(None)),
        "the master process is still there"
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&proxy.socket).unwrap()),
        socket_inode,
        "the command socket is the same file"
    );
    assert!(
        proxy.log().contains("new master took over"),
        "{}",
        proxy.log()
    );
}

#[test]
fn soft_stop_answers_processing_then_ok_and_the_master_cleans_up() {
    let mut proxy = start(2);
    let pid_file = proxy.dir.path().join("sozu.pid");
    let written: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, proxy.master.id() as i32);
    let mut client = proxy.client();
    client
        .write_message(&Request {
            request_type: Some(RequestType::SoftStop(Default::default())),
        })
        .unwrap();
    let first = client.read_message_timeout(ANSWER_TIMEOUT).unwrap();
    assert_eq!(
        first.status(),
        ResponseStatus::Processing,
        "{}",
        first.message
    );
    let mut last = first;
    while last.status() == ResponseStatus::Processing {
        last = client.read_message_timeout(ANSWER_TIMEOUT).unwrap();
    }
    assert_eq!(
        last.status(),
        ResponseStatus::Ok,
        "{}\n{}",
        last.message,
        proxy.log()
    );
    let mut exit = None;
    for _ in 0..POLL_ATTEMPTS {
        if let Ok(Some(status)) = proxy.master.try_wait() {
            exit = Some(status);
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let exit = exit.unwrap_or_else(|| panic!("the master did not exit:\n{}", proxy.log()));
    assert!(exit.success(), "{exit}");
    assert!(!proxy.socket.exists(), "the command socket is removed");
    assert!(!pid_file.exists(), "the pid file is removed");
    for pid in &proxy.known_workers {
        assert!(
            kill(Pid::from_raw(*pid), None).is_err(),
            "worker {pid} is gone"
        );
    }
}

#[test]
fn upgrade_worker_replaces_it_with_a_new_id_and_the_old_one_leaves() {
    let mut proxy = start(2);
    let before = proxy.workers();
    let old = before[0];
    let mut client = proxy.client();
    let answer = request(
        &mut client,
        Request {
            request_type: Some(RequestType::UpgradeWorker(old.id)),
        },
    )
    .unwrap();
    assert_eq!(
        answer.status(),
        ResponseStatus::Ok,
        "{}\n{}",
        answer.message,
        proxy.log()
    );
    let mut replaced = false;
    for _ in 0..POLL_ATTEMPTS {
        let now = proxy.workers();
        let running: Vec<_> = now
            .iter()
            .filter(|w| w.run_state() == RunState::Running)
            .collect();
        if running.len() == 2 && now.iter().all(|w| w.id != old.id) {
            replaced = true;
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    assert!(replaced, "{:?}\n{}", proxy.workers(), proxy.log());
    assert!(
        kill(Pid::from_raw(old.pid), None).is_err(),
        "the old worker exited"
    );
}

#[test]
fn query_metrics_has_one_entry_per_worker() {
    let mut proxy = start(2);
    let ids: Vec<String> = proxy.workers().iter().map(|w| w.id.to_string()).collect();
    let answer = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::QueryMetrics(Default::default())),
        },
    )
    .unwrap();
    assert_eq!(answer.status(), ResponseStatus::Ok, "{}", answer.message);
    let Some(ContentType::Metrics(metrics)) = answer.content.and_then(|c| c.content_type) else {
        panic!("query_metrics without metrics");
    };
    let keys: Vec<String> = metrics.workers.keys().cloned().collect();
    assert_eq!(keys, ids);
}

#[test]
fn hard_stop_ends_every_process() {
    let mut proxy = start(2);
    let workers = proxy.workers();
    let answer = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::HardStop(Default::default())),
        },
    )
    .unwrap();
    assert_eq!(answer.status(), ResponseStatus::Ok, "{}", answer.message);
    let mut exit = None;
    for _ in 0..POLL_ATTEMPTS {
        if let Ok(Some(status)) = proxy.master.try_wait() {
            exit = Some(status);
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?}\n{}",
        proxy.log()
    );
    for w in workers {
        assert!(
            kill(Pid::from_raw(w.pid), None).is_err(),
            "worker {} is gone",
            w.pid
        );
    }
}

#[test]
fn state_saved_through_the_socket_loads_back() {
    let proxy = start(1);
    let path = proxy.dir.path().join("state.json");
    let saved = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::SaveState(path.display().to_string())),
        },
    )
    .unwrap();
    assert_eq!(saved.status(), ResponseStatus::Ok, "{}", saved.message);
    assert!(std::fs::read_to_string(&path).unwrap().contains("dns"));
    // Everything in it is already running: loading it changes nothing.
    let loaded = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::LoadState(path.display().to_string())),
        },
    )
    .unwrap();
    assert_eq!(loaded.status(), ResponseStatus::Ok, "{}", loaded.message);
    let unwritable = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::SaveState(
                proxy
                    .dir
                    .path()
                    .join("no/such/dir/state.json")
                    .display()
                    .to_string(),
            )),
        },
    )
    .unwrap();
    assert_eq!(unwritable.status(), ResponseStatus::Failure);
    assert_eq!(
        request(&mut proxy.client(), status()).unwrap().status(),
        ResponseStatus::Ok
    );
}

#[test]
fn client_limit_and_audit_log_target() {
    let proxy = start_with(
        1,
        "max_command_clients = 2\naudit_logs_target = \"file://{dir}/audit.log\"\n",
    );
    let audit_path = proxy.dir.path().join("audit.log");

    // Two clients are served; a third is told why and closed.
    let mut first = proxy.client();
    let mut second = proxy.client();
    assert_eq!(
        request(&mut first, status()).unwrap().status(),
        ResponseStatus::Ok
    );
    assert_eq!(
        request(&mut second, status()).unwrap().status(),
        ResponseStatus::Ok
    );
    let mut third = proxy.client();
    let refused = third.read_message_timeout(ANSWER_TIMEOUT).unwrap();
    assert_eq!(refused.status(), ResponseStatus::Failure);
    assert!(
        refused.message.contains("max_command_clients"),
        "{}",
        refused.message
    );
    drop(third);
    drop(second);

    // A mutating order leaves an audit line naming the peer and the order.
    let added = request(
        &mut first,
        Request {
            request_type: Some(RequestType::AddCluster(Cluster {
                cluster_id: "audited".into(),
                ..Default::default()
            })),
        },
    )
    .unwrap();
    assert_eq!(added.status(), ResponseStatus::Ok, "{}", added.message);
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("add_cluster") && l.contains("result=\"ok\""))
        .unwrap_or_else(|| panic!("no audit line for add_cluster:\n{audit}"));
    assert!(
        line.contains(&format!("pid={}", std::process::id())),
        "{line}"
    );
    assert!(
        !proxy.log().contains("order=\"add_cluster\" result"),
        "audit lines go to their own target"
    );
}

fn cluster_ids(proxy: &Proxy) -> Vec<String> {
    let answer = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::ListClusters(Default::default())),
        },
    )
    .unwrap();
    match answer.content.and_then(|c| c.content_type) {
        Some(ContentType::Clusters(list)) => list
            .vec
            .into_iter()
            .filter_map(|c| c.configuration.map(|c| c.cluster_id))
            .collect(),
        other => panic!("list_clusters without clusters: {other:?}"),
    }
}

#[test]
fn reload_applies_the_edited_configuration() {
    let proxy = start(2);
    assert_eq!(cluster_ids(&proxy), vec!["dns".to_owned()]);
    let config_path = proxy.dir.path().join("config.toml");
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str("\n[clusters.extra]\nprotocol = \"udp\"\n");
    std::fs::write(&config_path, text).unwrap();
    let answer = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::ReloadConfiguration(String::new())),
        },
    )
    .unwrap();
    assert_eq!(
        answer.status(),
        ResponseStatus::Ok,
        "{}\n{}",
        answer.message,
        proxy.log()
    );
    assert_eq!(
        cluster_ids(&proxy),
        vec!["dns".to_owned(), "extra".to_owned()]
    );

    // A broken file is refused with its error, and nothing changes.
    std::fs::write(&config_path, "worker_count = \"many\"\n").unwrap();
    let answer = request(
        &mut proxy.client(),
        Request {
            request_type: Some(RequestType::ReloadConfiguration(String::new())),
        },
    )
    .unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(
        answer.message.contains("worker_count"),
        "{}",
        answer.message
    );
    assert_eq!(
        cluster_ids(&proxy),
        vec!["dns".to_owned(), "extra".to_owned()]
    );
}

#[test]
fn a_master_that_cannot_start_leaves_no_socket_behind() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sozu.sock");
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "command_socket = \"{}\"\npid_file_path = \"no/such/dir/sozu.pid\"\nworker_count = 1\n",
            socket.display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sozu"))
        .arg("start")
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pid file"), "{stderr}");
    assert!(!socket.exists(), "the command socket must be removed");
}

#[test]
fn sighup_reloads_and_sigterm_soft_stops() {
    let mut proxy = start(1);
    let config_path = proxy.dir.path().join("config.toml");
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str("\n[clusters.hup]\nprotocol = \"udp\"\n");
    std::fs::write(&config_path, text).unwrap();
    let master = Pid::from_raw(proxy.master.id() as i32);
    kill(master, Signal::SIGHUP).unwrap();
    let mut reloaded = false;
    for _ in 0..POLL_ATTEMPTS {
        if cluster_ids(&proxy).contains(&"hup".to_owned()) {
            reloaded = true;
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    assert!(reloaded, "SIGHUP did not reload:\n{}", proxy.log());

    kill(master, Signal::SIGTERM).unwrap();
    let mut exit = None;
    for _ in 0..POLL_ATTEMPTS {
        if let Ok(Some(status)) = proxy.master.try_wait() {
            exit = Some(status);
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?}\n{}",
        proxy.log()
    );
    assert!(!proxy.socket.exists());
}
