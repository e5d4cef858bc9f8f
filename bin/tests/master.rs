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
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sozu.sock");
    let port = free_udp_port();
    let config = format!(
        r#"
command_socket = "{socket}"
worker_count = {worker_count}
worker_timeout = 5
log_level = "debug"
log_target = "stdout"

[[listeners]]
protocol = "udp"
address = "127.0.0.1:{port}"

[clusters.dns]
protocol = "udp"
frontends = [{{ address = "127.0.0.1:{port}" }}]
backends = [{{ address = "127.0.0.1:9", backend_id = "b1" }}]
"#,
        socket = socket.display()
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
