//! The real `sozu` binary as a client: argument errors before any connection,
//! connection errors, and round trips against a fake master (a thread
//! answering on a temporary command socket with the real framed channel).

use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

use sozu_command_lib::channel::{Channel, ChannelError};
use sozu_command_lib::command::{
    request::RequestType, response_content::ContentType, Cluster, ClusterInformation,
    ClusterInformations, Request, Response, ResponseContent, ResponseStatus, RunState,
    UdpClusterConfig, WorkerInfo, WorkerInfos,
};

fn sozu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sozu"))
        .args(args)
        .output()
        .expect("run the sozu binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn error_lines(output: &Output) -> Vec<String> {
    stderr(output)
        .lines()
        .filter(|line| line.starts_with("error:"))
        .map(str::to_owned)
        .collect()
}

fn answer(status: ResponseStatus, message: &str, content: Option<ContentType>) -> Response {
    Response {
        status: status as i32,
        message: message.to_owned(),
        content: content.map(|content| ResponseContent {
            content_type: Some(content),
        }),
    }
}

/// A fake master on `dir/sozu.sock`: accepts one client and, for each
/// request, sends the next group of answers. Returns the requests it read
/// once the client has gone away.
fn fake_master(dir: &Path, script: Vec<Vec<Response>>) -> (PathBuf, JoinHandle<Vec<Request>>) {
    let path = dir.join("sozu.sock");
    let listener = UnixListener::bind(&path).expect("bind the fake command socket");
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept the client");
        let mut channel: Channel<Response, Request> = Channel::new(stream, 4096, 1 << 20);
        let mut seen = Vec::new();
        for answers in script {
            match channel.read_message_timeout(Duration::from_secs(20)) {
                Ok(request) => seen.push(request),
                Err(ChannelError::PeerClosed) => return seen,
                Err(error) => panic!("fake master read: {error}"),
            }
            for response in answers {
                channel.write_message(&response).expect("answer the client");
            }
        }
        // Wait for the client to hang up (or send an unexpected order).
        if let Ok(request) = channel.read_message_timeout(Duration::from_secs(20)) {
            seen.push(request);
        }
        seen
    });
    (path, handle)
}

#[test]
fn a_bad_address_is_one_error_line_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let output = sozu(&[
        "--socket",
        socket.to_str().unwrap(),
        "udp",
        "listener",
        "add",
        "-a",
        "not-an-address",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let errors = error_lines(&output);
    assert_eq!(errors.len(), 1, "{}", stderr(&output));
    assert!(errors[0].contains("not-an-address"), "{errors:?}");
    assert!(!stderr(&output).contains("cannot connect"));
    assert!(stdout(&output).is_empty());
}

#[test]
fn an_unknown_flag_is_refused() {
    let output = sozu(&["cluster", "add", "-i", "dns", "--bogus-knob", "1"]);
    assert_eq!(output.status.code(), Some(2));
    let errors = error_lines(&output);
    assert_eq!(errors.len(), 1, "{}", stderr(&output));
    assert!(errors[0].contains("--bogus-knob"), "{errors:?}");
}

#[test]
fn a_bad_knob_value_is_refused() {
    let output = sozu(&["cluster", "add", "-i", "dns", "--health-mode", "icmp"]);
    assert_eq!(output.status.code(), Some(2));
    let errors = error_lines(&output);
    assert_eq!(errors.len(), 1, "{}", stderr(&output));
    assert!(errors[0].contains("icmp"), "{errors:?}");
}

#[test]
fn a_missing_socket_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sozu.sock");
    let output = sozu(&["--socket", socket.to_str().unwrap(), "status"]);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        stderr(&output),
        format!(
            "error: cannot connect to {}: No such file or directory (is sozu running?)\n",
            socket.display()
        )
    );
}

#[test]
fn status_prints_progress_then_the_worker_table() {
    let dir = tempfile::tempdir().unwrap();
    let workers = WorkerInfos {
        vec: vec![
            WorkerInfo {
                id: 0,
                pid: 1000,
                run_state: RunState::Running as i32,
                ..Default::default()
            },
            WorkerInfo {
                id: 1,
                pid: 1001,
                run_state: RunState::Stopping as i32,
                ..Default::default()
            },
        ],
    };
    let (socket, master) = fake_master(
        dir.path(),
        vec![vec![
            answer(ResponseStatus::Processing, "asking 2 workers", None),
            answer(ResponseStatus::Ok, "", Some(ContentType::Workers(workers))),
        ]],
    );
    let output = sozu(&["--socket", socket.to_str().unwrap(), "status"]);
    let seen = master.join().unwrap();

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "WORKER  PID   STATE\n0       1000  running\n1       1001  stopping\n"
    );
    assert!(stderr(&output).contains("processing: asking 2 workers"));
    assert!(matches!(seen[0].request_type, Some(RequestType::Status(_))));
}

#[test]
fn a_failure_answer_exits_non_zero_with_the_masters_message() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, master) = fake_master(
        dir.path(),
        vec![vec![answer(
            ResponseStatus::Failure,
            "no cluster named dns",
            None,
        )]],
    );
    let output = sozu(&[
        "--socket",
        socket.to_str().unwrap(),
        "backend",
        "add",
        "-i",
        "dns",
        "--backend-id",
        "b1",
        "-a",
        "127.0.0.1:5300",
    ]);
    let seen = master.join().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "error: no cluster named dns\n");
    assert!(stdout(&output).is_empty());
    assert_eq!(seen.len(), 1);
}

#[test]
fn listener_add_through_the_config_socket_is_one_active_add() {
    let dir = tempfile::tempdir().unwrap();
    let (_socket, master) = fake_master(
        dir.path(),
        vec![vec![answer(ResponseStatus::Ok, "listener added", None)]],
    );
    // A relative command_socket resolves against the config file's directory.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "command_socket = \"sozu.sock\"\nworker_count = 2\n",
    )
    .unwrap();
    let output = sozu(&[
        "-c",
        config.to_str().unwrap(),
        "listener",
        "udp",
        "add",
        "-a",
        "127.0.0.1:5353",
    ]);
    let seen = master.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "listener added\n");
    // One order that also activates: a listener that cannot be activated
    // is refused whole (doc/cli.md).
    assert_eq!(seen.len(), 1, "{seen:?}");
    let address: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    match &seen[0].request_type {
        Some(RequestType::AddUdpListener(listener)) => {
            assert_eq!(listener.address, address.into());
            assert!(listener.active, "added active");
        }
        other => panic!("expected add_udp_listener, got {other:?}"),
    }
}

#[test]
fn json_mode_prints_the_answer_content() {
    let dir = tempfile::tempdir().unwrap();
    let clusters = ClusterInformations {
        vec: vec![ClusterInformation {
            configuration: Some(Cluster {
                cluster_id: "dns".into(),
                udp: Some(UdpClusterConfig {
                    responses: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
    };
    let (socket, master) = fake_master(
        dir.path(),
        vec![vec![answer(
            ResponseStatus::Ok,
            "",
            Some(ContentType::Clusters(clusters)),
        )]],
    );
    let output = sozu(&[
        "--socket",
        socket.to_str().unwrap(),
        "cluster",
        "list",
        "-i",
        "dns",
        "--json",
    ]);
    let seen = master.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["status"], "OK");
    let cluster = &value["content"]["clusters"]["vec"][0]["configuration"];
    assert_eq!(cluster["cluster_id"], "dns");
    assert_eq!(cluster["udp"]["responses"], 1);
    assert_eq!(
        seen[0].request_type,
        Some(RequestType::QueryClusterById("dns".into()))
    );
}

#[test]
fn a_silent_master_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, master) = fake_master(dir.path(), vec![vec![]]);
    let output = sozu(&[
        "--socket",
        socket.to_str().unwrap(),
        "--timeout",
        "1",
        "status",
    ]);
    master.join().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).starts_with("error: no answer from the master within 1s"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_refused_add_prints_the_masters_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, master) = fake_master(
        dir.path(),
        vec![vec![answer(
            ResponseStatus::Failure,
            "listener 127.0.0.1:5353 already exists",
            None,
        )]],
    );
    let output = sozu(&[
        "--socket",
        socket.to_str().unwrap(),
        "--json",
        "udp",
        "listener",
        "add",
        "-a",
        "127.0.0.1:5353",
    ]);
    // The fake master records anything sent after the failure.
    let seen = master.join().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        stderr(&output),
        "error: listener 127.0.0.1:5353 already exists\n"
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["status"], "FAILURE");
    assert!(value["content"].is_null());
}
