//! Order handling through a real `Master` whose workers are fake: each
//! fake worker is the far end of a socketpair the test reads orders from and
//! answers on, and each client is the far end of another. No process is
//! started and the loop is driven by hand, so every step is deterministic.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::Token;
use nix::unistd::Pid;
use sozu_command_lib::channel::Channel;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{
    AddBackend, Cluster, Request, Response, ResponseStatus, RunState, WorkerRequest, WorkerResponse,
};
use sozu_command_lib::config::Config;
use sozu_command_lib::state::ConfigState;

use super::clients::{Client, ClientChannel};
use super::command_socket::Peer;
use super::workers::{Worker, WorkerChannel};
use super::{command_socket, Master, Phase};

mod boot;

type FakeWorker = Channel<WorkerResponse, WorkerRequest>;
type FakeClient = Channel<Request, Response>;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A pid that cannot exist (above any `pid_max`): killing it is a no-op.
const NO_SUCH_PID: i32 = i32::MAX - 1;

fn master(dir: &Path) -> Master {
    let config_path = dir.join("config.toml");
    let text = format!(
        "command_socket = \"{}\"\nworker_count = 2\nworker_timeout = 5\n",
        dir.join("sozu.sock").display()
    );
    let config = Config::from_str(&text, &config_path).unwrap();
    let listener = command_socket::bind(&config.command_socket).unwrap();
    let mut master = Master::new(
        config,
        config_path,
        ConfigState::new(),
        UnixListener::from_std(listener),
    )
    .unwrap();
    master.phase = Phase::Running;
    master
}

fn add_worker(master: &mut Master, id: u32) -> FakeWorker {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let (scm_ours, _scm_theirs) = UnixStream::pair().unwrap();
    let token = master.allocate_token();
    let worker = Worker {
        id,
        pid: Pid::from_raw(NO_SUCH_PID),
        token,
        channel: WorkerChannel::new(ours, 4096, 1 << 20),
        scm: sozu_command_lib::scm::ScmSocket::new(scm_ours).unwrap(),
        run_state: RunState::Running,
        outbox: VecDeque::new(),
        started_at: now(),
        ready: true,
        boot: None,
        boot_failure: None,
        channel_closed: false,
        quick_failures: 0,
    };
    master.workers.insert(id, worker);
    master.worker_tokens.insert(token, id);
    Channel::new(theirs, 4096, 1 << 20)
}

fn add_client(master: &mut Master) -> (Token, FakeClient) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let token = master.allocate_token();
    let peer = Peer {
        uid: 1000,
        gid: 1000,
        pid: 4242,
    };
    master.clients.insert(
        token,
        Client::new(token, ClientChannel::new(ours, 4096, 1 << 20), peer, now()),
    );
    (token, Channel::new(theirs, 4096, 1 << 20))
}

#[allow(clippy::disallowed_methods)] // a base instant for the hand-driven loop
fn now() -> Instant {
    Instant::now()
}

fn order(request_type: RequestType) -> Request {
    Request {
        request_type: Some(request_type),
    }
}

fn cluster(id: &str) -> Request {
    order(RequestType::AddCluster(Cluster {
        cluster_id: id.to_owned(),
        ..Default::default()
    }))
}

fn send(master: &mut Master, token: Token, request: Request) {
    if let Some(client) = master.clients.get_mut(&token) {
        client.busy = true;
    }
    master.handle_request(token, request, now());
}

/// Reads the next order a fake worker received (the master flushed it).
fn next_order(worker: &mut FakeWorker) -> WorkerRequest {
    worker.read_message_timeout(TIMEOUT).unwrap()
}

fn reply(
    master: &mut Master,
    id: u32,
    worker: &mut FakeWorker,
    to: &WorkerRequest,
    status: ResponseStatus,
    message: &str,
) {
    worker
        .write_message(&WorkerResponse {
            id: to.id.clone(),
            status: status as i32,
            message: message.to_owned(),
            content: None,
        })
        .unwrap();
    master.read_worker(id, now());
}

/// A master with workers 0 and 1 and one client: the set-up most tests
/// share. The temp dir holds the command socket for the test's life.
type Rig = (
    tempfile::TempDir,
    Master,
    FakeWorker,
    FakeWorker,
    Token,
    FakeClient,
);

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let w0 = add_worker(&mut master, 0);
    let w1 = add_worker(&mut master, 1);
    let (token, client) = add_client(&mut master);
    (dir, master, w0, w1, token, client)
}

/// The client sends `add_cluster dns`; worker 0 takes it, worker 1 refuses
/// it (`cannot bind 127.0.0.1:53`). Nothing is committed while the order is
/// out.
fn worker_1_refuses_dns(
    master: &mut Master,
    token: Token,
    w0: &mut FakeWorker,
    w1: &mut FakeWorker,
) {
    send(master, token, cluster("dns"));
    let o0 = next_order(w0);
    let o1 = next_order(w1);
    assert!(
        master.state.cluster("dns").is_none(),
        "nothing is committed while the order is out"
    );
    reply(master, 0, w0, &o0, ResponseStatus::Ok, "");
    reply(
        master,
        1,
        w1,
        &o1,
        ResponseStatus::Failure,
        "cannot bind 127.0.0.1:53",
    );
}

/// The client's answer after [`worker_1_refuses_dns`]: a failure naming
/// worker 1 and its reason. Returns the message.
fn failure_naming_worker_1(client: &mut FakeClient) -> String {
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(
        answer
            .message
            .contains("worker 1: cannot bind 127.0.0.1:53"),
        "{}",
        answer.message
    );
    answer.message
}

fn nothing_pending(worker: &mut FakeWorker) -> bool {
    worker.set_blocking(false).unwrap();
    matches!(worker.try_read_message(), Ok(None))
}

#[test]
fn refused_order_reaches_no_worker_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut worker = add_worker(&mut master, 0);
    let (token, mut client) = add_client(&mut master);
    let backend = order(RequestType::AddBackend(AddBackend {
        cluster_id: "nope".into(),
        backend_id: "b1".into(),
        address: "127.0.0.1:9000"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
        ..Default::default()
    }));
    send(&mut master, token, backend);
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(answer.message.contains("nope"), "{}", answer.message);
    assert!(
        nothing_pending(&mut worker),
        "a refused order must not reach a worker"
    );
    assert!(
        master.state.is_empty(),
        "a refused order must leave the state unchanged"
    );
}

#[test]
fn accepted_order_reaches_every_worker_and_is_answered_once() {
    let (_dir, mut master, mut w0, mut w1, token, mut client) = rig();
    send(&mut master, token, cluster("dns"));
    let o0 = next_order(&mut w0);
    let o1 = next_order(&mut w1);
    assert!(
        matches!(o0.content.request_type, Some(RequestType::AddCluster(ref c)) if c.cluster_id == "dns")
    );
    assert_ne!(o0.id, o1.id, "each worker request has its own id");
    reply(&mut master, 0, &mut w0, &o0, ResponseStatus::Ok, "");
    client.set_blocking(false).unwrap();
    assert!(
        matches!(client.try_read_message(), Ok(None)),
        "no answer before every worker answered"
    );
    reply(&mut master, 1, &mut w1, &o1, ResponseStatus::Ok, "");
    client.set_blocking(true).unwrap();
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Ok, "{}", answer.message);
    client.set_blocking(false).unwrap();
    assert!(
        matches!(client.try_read_message(), Ok(None)),
        "exactly one answer"
    );
    assert!(master.state.cluster("dns").is_some());
}

#[test]
fn worker_failure_is_named_in_the_answer() {
    let (_dir, mut master, mut w0, mut w1, token, mut client) = rig();
    worker_1_refuses_dns(&mut master, token, &mut w0, &mut w1);
    failure_naming_worker_1(&mut client);
}

#[test]
fn silent_worker_times_out_and_shows_not_answering() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let _w1 = add_worker(&mut master, 1);
    let (token, mut client) = add_client(&mut master);
    let start = now();
    master.handle_request(token, cluster("dns"), start);
    let o0 = next_order(&mut w0);
    reply(&mut master, 0, &mut w0, &o0, ResponseStatus::Ok, "");
    // Worker 1 never answers: the deadline passes.
    master.on_time(start + master.config.worker_timeout + Duration::from_millis(1));
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(
        answer.message.contains("worker 1: did not answer"),
        "{}",
        answer.message
    );
    assert_eq!(master.workers[&1].run_state, RunState::NotAnswering);
    assert_eq!(master.workers[&0].run_state, RunState::Running);
}

#[test]
fn dead_worker_channel_answers_its_orders() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let w1 = add_worker(&mut master, 1);
    let (token, mut client) = add_client(&mut master);
    send(&mut master, token, cluster("dns"));
    let o0 = next_order(&mut w0);
    drop(w1);
    master.read_worker(1, now());
    reply(&mut master, 0, &mut w0, &o0, ResponseStatus::Ok, "");
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    // A worker that dies is not a refusal: it comes back with the
    // committed state, so the order commits and the answer says so.
    assert_eq!(answer.status(), ResponseStatus::Ok, "{}", answer.message);
    assert!(master.state.cluster("dns").is_some());
    assert!(
        answer.message.contains("worker 1 exited before answering"),
        "{}",
        answer.message
    );
}

#[test]
fn status_lists_workers_from_master_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let _w3 = add_worker(&mut master, 3);
    let (token, mut client) = add_client(&mut master);
    send(
        &mut master,
        token,
        order(RequestType::Status(Default::default())),
    );
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Ok);
    let Some(ContentType::Workers(infos)) = answer.content.and_then(|c| c.content_type) else {
        panic!("status must carry WorkerInfos");
    };
    let ids: Vec<u32> = infos.vec.iter().map(|w| w.id).collect();
    assert_eq!(ids, vec![0, 3]);
    assert!(infos
        .vec
        .iter()
        .all(|w| w.run_state() == RunState::Running && w.pid == NO_SUCH_PID));
    assert!(
        nothing_pending(&mut w0),
        "status is answered without asking workers"
    );
}

#[test]
fn save_state_to_unwritable_place_is_a_failure_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let (token, mut client) = add_client(&mut master);
    let path = dir.path().join("missing-dir").join("state.json");
    send(
        &mut master,
        token,
        order(RequestType::SaveState(path.display().to_string())),
    );
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(answer.message.contains("missing-dir"), "{}", answer.message);
}

#[test]
fn saved_state_loads_back_and_is_sent_to_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    {
        let mut master = master(dir.path());
        master.state.dispatch(&cluster("dns")).unwrap();
        let (token, mut client) = add_client(&mut master);
        send(
            &mut master,
            token,
            order(RequestType::SaveState(path.display().to_string())),
        );
        let answer = client.read_message_timeout(TIMEOUT).unwrap();
        assert_eq!(answer.status(), ResponseStatus::Ok, "{}", answer.message);
    }
    let other = tempfile::tempdir().unwrap();
    let mut master = master(other.path());
    let mut w0 = add_worker(&mut master, 0);
    let (token, mut client) = add_client(&mut master);
    send(
        &mut master,
        token,
        order(RequestType::LoadState(path.display().to_string())),
    );
    let o0 = next_order(&mut w0);
    assert!(
        matches!(o0.content.request_type, Some(RequestType::AddCluster(ref c)) if c.cluster_id == "dns")
    );
    reply(&mut master, 0, &mut w0, &o0, ResponseStatus::Ok, "");
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Ok, "{}", answer.message);
    assert!(master.state.cluster("dns").is_some());
}

#[test]
fn malformed_state_file_is_a_failure_answer_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(&path, "{ not json\n").unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let (token, mut client) = add_client(&mut master);
    send(
        &mut master,
        token,
        order(RequestType::LoadState(path.display().to_string())),
    );
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(answer.message.contains("line 1"), "{}", answer.message);
    assert!(nothing_pending(&mut w0));
    assert!(master.state.is_empty());
}

#[test]
fn internal_orders_are_refused_from_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let (token, mut client) = add_client(&mut master);
    send(
        &mut master,
        token,
        order(RequestType::ReturnListenSockets(Default::default())),
    );
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(nothing_pending(&mut w0));
}

#[test]
fn orders_are_refused_while_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let (token, mut client) = add_client(&mut master);
    master.phase = Phase::Stopping {
        hard: false,
        waiting: Vec::new(),
        kill_at: None,
        progress_at: now() + Duration::from_secs(5),
    };
    send(&mut master, token, cluster("dns"));
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(answer.message.contains("stopping"), "{}", answer.message);
    assert!(master.state.is_empty());
}

#[test]
fn heartbeat_reports_a_silent_worker_and_clears_when_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let mut w1 = add_worker(&mut master, 1);
    let beat = master.next_heartbeat;
    master.on_time(beat);
    let h0 = next_order(&mut w0);
    let h1 = next_order(&mut w1);
    assert!(matches!(
        h0.content.request_type,
        Some(RequestType::Status(_))
    ));
    reply(&mut master, 0, &mut w0, &h0, ResponseStatus::Ok, "running");
    // No second heartbeat while the first is out.
    master.on_time(beat + Duration::from_millis(1));
    w0.set_blocking(false).unwrap();
    assert!(matches!(w0.try_read_message(), Ok(None)));
    master.on_time(beat + master.config.worker_timeout);
    assert_eq!(master.workers[&0].run_state, RunState::Running);
    assert_eq!(master.workers[&1].run_state, RunState::NotAnswering);
    // The late answer to the expired heartbeat still proves it is alive.
    reply(&mut master, 1, &mut w1, &h1, ResponseStatus::Ok, "running");
    assert_eq!(master.workers[&1].run_state, RunState::Running);
}

#[test]
fn a_long_soft_stop_keeps_telling_the_client_who_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    // A real process stands in for the draining worker, so the stop waits.
    let mut stand_in = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let stand_in_pid = Pid::from_raw(stand_in.id() as i32);
    master.workers.get_mut(&0).unwrap().pid = stand_in_pid;
    let (token, mut client) = add_client(&mut master);
    let start = now();
    if let Some(c) = master.clients.get_mut(&token) {
        c.busy = true;
    }
    master.handle_request(
        token,
        order(RequestType::SoftStop(Default::default())),
        start,
    );
    let forwarded = next_order(&mut w0);
    assert!(matches!(
        forwarded.content.request_type,
        Some(RequestType::SoftStop(_))
    ));
    let first = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(first.status(), ResponseStatus::Processing);
    assert_eq!(master.workers[&0].run_state, RunState::Stopping);

    master.on_time(start + Duration::from_secs(5));
    let progress = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(progress.status(), ResponseStatus::Processing);
    assert!(
        progress.message.contains(&format!("pid {stand_in_pid}")),
        "{}",
        progress.message
    );
    assert!(master.exit.is_none(), "the master waits for its worker");

    stand_in.kill().unwrap();
    // Reaped here (or by nobody: no loop runs in this test).
    let _ = stand_in.wait();
    master.workers.remove(&0);
    master.check_stopped();
    let done = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(done.status(), ResponseStatus::Ok, "{}", done.message);
    assert!(master.exit.is_some());
}

fn http_frontend(host: &str, kind: sozu_command_lib::command::PathRuleKind) -> Request {
    use sozu_command_lib::command::{PathRule, RequestHttpFrontend};
    order(RequestType::AddHttpFrontend(RequestHttpFrontend {
        cluster_id: Some("web".to_owned()),
        address: "127.0.0.1:8080"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
        hostname: host.to_owned(),
        path: PathRule {
            kind: kind as i32,
            value: "(".to_owned(),
        },
        ..Default::default()
    }))
}

/// The master's state with an HTTP listener on 127.0.0.1:8080 and cluster
/// `web`, as if both had been committed.
fn with_http_listener(master: &mut Master) {
    use sozu_command_lib::command::HttpListenerConfig;
    let listener = order(RequestType::AddHttpListener(HttpListenerConfig {
        address: "127.0.0.1:8080"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
        ..Default::default()
    }));
    master.state.dispatch(&listener).unwrap();
    master.state.dispatch(&cluster("web")).unwrap();
}

#[test]
fn refused_order_is_undone_on_the_workers_that_applied_it() {
    let (_dir, mut master, mut w0, mut w1, token, mut client) = rig();
    worker_1_refuses_dns(&mut master, token, &mut w0, &mut w1);
    let message = failure_naming_worker_1(&mut client);
    assert!(message.contains("undone on worker(s) 0"), "{message}");
    assert!(master.state.is_empty(), "a refused order leaves no trace");
    // Worker 0 applied it: it is told to remove the cluster again.
    let undo = next_order(&mut w0);
    assert!(
        matches!(undo.content.request_type, Some(RequestType::RemoveCluster(ref id)) if id == "dns"),
        "{undo:?}"
    );
    reply(&mut master, 0, &mut w0, &undo, ResponseStatus::Ok, "");
    // Worker 1 refused it, so it kept its state: nothing more to send.
    assert!(nothing_pending(&mut w1));
    assert!(master.workers.get(&0).is_some_and(|w| !w.channel_closed));
}

#[test]
fn a_worker_refusing_the_undo_is_restarted() {
    let (_dir, mut master, mut w0, mut w1, token, mut client) = rig();
    send(&mut master, token, cluster("dns"));
    let o0 = next_order(&mut w0);
    let o1 = next_order(&mut w1);
    reply(&mut master, 0, &mut w0, &o0, ResponseStatus::Ok, "");
    reply(&mut master, 1, &mut w1, &o1, ResponseStatus::Failure, "no");
    let _ = client.read_message_timeout(TIMEOUT).unwrap();
    let undo = next_order(&mut w0);
    reply(
        &mut master,
        0,
        &mut w0,
        &undo,
        ResponseStatus::Failure,
        "stuck",
    );
    assert!(
        master.workers.get(&0).is_some_and(|w| w.channel_closed),
        "a worker that cannot return to the committed state is cut off (and restarts)"
    );
}

#[test]
fn state_changes_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let (t1, mut c1) = add_client(&mut master);
    let (t2, mut c2) = add_client(&mut master);
    send(&mut master, t1, cluster("a"));
    send(&mut master, t2, cluster("b"));
    let first = next_order(&mut w0);
    assert!(
        matches!(first.content.request_type, Some(RequestType::AddCluster(ref c)) if c.cluster_id == "a")
    );
    assert!(
        nothing_pending(&mut w0),
        "the second change waits for the first"
    );
    w0.set_blocking(true).unwrap();
    reply(&mut master, 0, &mut w0, &first, ResponseStatus::Ok, "");
    assert_eq!(
        c1.read_message_timeout(TIMEOUT).unwrap().status(),
        ResponseStatus::Ok
    );
    let second = next_order(&mut w0);
    assert!(
        matches!(second.content.request_type, Some(RequestType::AddCluster(ref c)) if c.cluster_id == "b")
    );
    reply(&mut master, 0, &mut w0, &second, ResponseStatus::Ok, "");
    assert_eq!(
        c2.read_message_timeout(TIMEOUT).unwrap().status(),
        ResponseStatus::Ok
    );
    assert!(master.state.cluster("a").is_some() && master.state.cluster("b").is_some());
}

#[test]
fn a_worker_started_during_a_change_catches_up_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let (token, mut client) = add_client(&mut master);
    send(&mut master, token, cluster("dns"));
    let o0 = next_order(&mut w0);
    // Worker 1 appears (a restart) while the order is out.
    let mut w1 = add_worker(&mut master, 1);
    reply(&mut master, 0, &mut w0, &o0, ResponseStatus::Ok, "");
    assert_eq!(
        client.read_message_timeout(TIMEOUT).unwrap().status(),
        ResponseStatus::Ok
    );
    let caught_up = next_order(&mut w1);
    assert!(
        matches!(caught_up.content.request_type, Some(RequestType::AddCluster(ref c)) if c.cluster_id == "dns"),
        "{caught_up:?}"
    );
}

#[test]
fn worker_side_refusals_the_master_can_see_never_reach_a_worker() {
    use sozu_command_lib::command::PathRuleKind;
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    with_http_listener(&mut master);
    let before = master.state.clone();
    let mut w0 = add_worker(&mut master, 0);
    let (token, mut client) = add_client(&mut master);
    // A regex path rule whose pattern (`(`) does not compile: the workers'
    // router refuses it, so the master refuses it first, naming the value.
    send(
        &mut master,
        token,
        http_frontend("localhost", PathRuleKind::Regex),
    );
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(
        answer.message.contains("path.value \"(\"")
            && answer.message.contains("regular expression"),
        "{}",
        answer.message
    );
    // The same route under another spelling of the hostname.
    send(
        &mut master,
        token,
        http_frontend("web.local", PathRuleKind::Prefix),
    );
    let o = next_order(&mut w0);
    reply(&mut master, 0, &mut w0, &o, ResponseStatus::Ok, "");
    assert_eq!(
        client.read_message_timeout(TIMEOUT).unwrap().status(),
        ResponseStatus::Ok
    );
    let committed = master.state.clone();
    send(
        &mut master,
        token,
        http_frontend("WEB.local.", PathRuleKind::Prefix),
    );
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(answer.message.contains("hostname"), "{}", answer.message);
    assert!(nothing_pending(&mut w0));
    assert_eq!(master.state, committed);
    assert_ne!(master.state, before);
}

#[test]
fn a_saved_state_loses_at_start_only_the_orders_the_workers_would_refuse() {
    use sozu_command_lib::command::PathRuleKind;
    let dir = tempfile::tempdir().unwrap();
    let mut scratch = master(dir.path());
    with_http_listener(&mut scratch);
    // A file an older version may have saved: a regex rule whose pattern
    // (`(`) does not compile, beside a prefix rule.
    let mut saved = scratch.state.clone();
    saved
        .dispatch(&http_frontend("regex.local", PathRuleKind::Regex))
        .unwrap();
    saved
        .dispatch(&http_frontend("prefix.local", PathRuleKind::Prefix))
        .unwrap();
    let path = dir.path().join("saved.state");
    saved.save_to_path(&path).unwrap();

    let mut loaded = ConfigState::new();
    let applied = super::state_file::load_into(&mut loaded, &path, &scratch.config).unwrap();
    let hosts: Vec<String> = loaded
        .http_frontends()
        .map(|f| f.hostname.clone())
        .collect();
    assert_eq!(hosts, vec!["prefix.local".to_owned()]);
    assert_eq!(applied, 3, "listener, cluster and the prefix frontend");
}

#[test]
fn unsupported_sozu_orders_are_refused_by_name_and_reach_no_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    let mut w0 = add_worker(&mut master, 0);
    let (token, mut client) = add_client(&mut master);
    for (request_type, name) in [
        (
            RequestType::SubscribeEvents(Default::default()),
            "subscribe_events",
        ),
        (
            RequestType::RemoveHealthCheck("c".to_owned()),
            "remove_health_check",
        ),
        (
            RequestType::SetMaxConnectionsPerIp(3),
            "set_max_connections_per_ip",
        ),
        (RequestType::LaunchWorker(String::new()), "launch_worker"),
    ] {
        send(&mut master, token, order(request_type));
        let answer = client.read_message_timeout(TIMEOUT).unwrap();
        assert_eq!(answer.status(), ResponseStatus::Failure);
        assert!(answer.message.contains(name), "{answer:?}");
        assert!(answer.message.contains("not supported"), "{answer:?}");
    }
    assert!(nothing_pending(&mut w0));
    assert!(master.state.is_empty());
}

#[test]
fn configure_metrics_reaches_every_worker_and_is_replayed_to_a_new_one() {
    use sozu_command_lib::command::MetricsConfiguration;
    let (_dir, mut master, mut w0, mut w1, token, mut client) = rig();
    let disable = order(RequestType::ConfigureMetrics(
        MetricsConfiguration::Disabled as i32,
    ));
    send(&mut master, token, disable.clone());
    for (id, worker) in [(0, &mut w0), (1, &mut w1)] {
        let received = next_order(worker);
        assert_eq!(received.content, disable);
        reply(&mut master, id, worker, &received, ResponseStatus::Ok, "");
    }
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Ok, "{answer:?}");
    assert!(answer.message.contains("configure_metrics"), "{answer:?}");
    // A worker started now (after a crash) must not count either.
    assert_eq!(master.sozu.boot_orders(), vec![disable]);

    // CLEAR is not a setting: the replayed one stays DISABLED; ENABLED
    // ends the replay.
    for (value, replayed) in [
        (MetricsConfiguration::Clear, 1),
        (MetricsConfiguration::Enabled, 0),
    ] {
        send(
            &mut master,
            token,
            order(RequestType::ConfigureMetrics(value as i32)),
        );
        for (id, worker) in [(0, &mut w0), (1, &mut w1)] {
            let received = next_order(worker);
            reply(&mut master, id, worker, &received, ResponseStatus::Ok, "");
        }
        let answer = client.read_message_timeout(TIMEOUT).unwrap();
        assert_eq!(answer.status(), ResponseStatus::Ok, "{answer:?}");
        assert_eq!(master.sozu.boot_orders().len(), replayed);
    }

    send(&mut master, token, order(RequestType::ConfigureMetrics(9)));
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Failure);
    assert!(answer.message.contains('9'), "{answer:?}");
    assert!(nothing_pending(&mut w0));
}

/// A fake worker whose raw stream is also kept, to write frames the typed
/// channel would refuse to send.
fn add_worker_with_raw(master: &mut Master, id: u32) -> (FakeWorker, UnixStream) {
    let worker = add_worker(master, id);
    let raw = worker_stream(&worker);
    (worker, raw)
}

fn worker_stream(worker: &FakeWorker) -> UnixStream {
    use std::os::fd::AsFd;
    UnixStream::from(worker.as_fd().try_clone_to_owned().unwrap())
}

/// The master ↔ worker frame bound (doc/security.md): a worker's answer of
/// exactly the channel's maximum is read; a frame declaring one byte more
/// closes that worker's channel only (it is restarted), and the master
/// goes on answering its clients.
#[test]
fn a_worker_frame_at_the_bound_is_read_and_one_byte_over_closes_only_that_worker() {
    use prost::Message;
    use std::io::Write;
    const LIMIT: usize = 1 << 20; // add_worker's channel maximum

    let dir = tempfile::tempdir().unwrap();
    let mut master = master(dir.path());
    // The real bound: 16 MiB at least, whatever max_command_buffer_size.
    assert_eq!(super::worker_channel_max(&master.config), 16 * 1024 * 1024);
    let (mut w0, mut raw) = add_worker_with_raw(&mut master, 0);
    let (token, mut client) = add_client(&mut master);

    send(&mut master, token, cluster("dns"));
    let pending = next_order(&mut w0);
    let answer = |n: usize| WorkerResponse {
        id: pending.id.clone(),
        status: ResponseStatus::Ok as i32,
        message: "x".repeat(n),
        content: None,
    };
    let mut n = LIMIT - 64;
    while 8 + answer(n).encoded_len() < LIMIT {
        n += 1;
    }
    let full = answer(n);
    assert_eq!(
        8 + full.encoded_len(),
        LIMIT,
        "a frame of exactly the bound"
    );
    let mut frame = (LIMIT as u64).to_le_bytes().to_vec();
    frame.extend(full.encode_to_vec());
    // The socket buffer is smaller than the frame: a thread writes while
    // the master reads (bounded: 10,000 rounds of 1 ms).
    let mut writer_stream = raw.try_clone().unwrap();
    let writer = std::thread::spawn(move || writer_stream.write_all(&frame));
    let mut answered = None;
    for _ in 0..10_000 {
        master.read_worker(0, now());
        client.set_blocking(false).unwrap();
        if let Ok(Some(response)) = client.try_read_message() {
            answered = Some(response);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().unwrap().unwrap();
    let answered = answered.expect("the order's answer after a frame at the bound");
    assert_eq!(
        answered.status(),
        ResponseStatus::Ok,
        "{}",
        answered.message
    );
    assert!(!master.workers[&0].channel_closed);

    // One byte over: refused on the declared length, before any allocation.
    raw.write_all(&((LIMIT as u64) + 1).to_le_bytes()).unwrap();
    master.read_worker(0, now());
    assert!(
        master
            .workers
            .get(&0)
            .is_none_or(|w| w.channel_closed || w.pid.as_raw() != NO_SUCH_PID),
        "the worker's channel is closed (or the slot already restarted)"
    );
    // The master still serves its clients.
    client.set_blocking(true).unwrap();
    send(
        &mut master,
        token,
        order(RequestType::Status(Default::default())),
    );
    let status = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(status.status(), ResponseStatus::Ok, "{}", status.message);
}

#[test]
fn the_worker_command_line_carries_every_setting_the_configuration_gives() {
    use crate::cli::{Cli, Command, WorkerCommand};
    use crate::worker::{AccessLogFormatSetting, StatsdSettings, WorkerSettings};
    use clap::Parser;

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "command_socket = \"{}\"\nworker_count = 3\nhash_seed = 77\nmax_connections = 9\n\
         buffer_size = 20000\nlog_level = \"debug\"\nlog_target = \"stderr\"\n\
         access_logs_target = \"file://{}\"\naccess_logs_format = \"json\"\n\
         upstream_source_addresses = [\"127.0.0.2\", \"::1\"]\n\
         [metrics]\naddress = \"127.0.0.1:8125\"\ntagged_metrics = true\n",
        dir.path().join("sozu.sock").display(),
        dir.path().join("access.log").display(),
    );
    let config = Config::from_str(&text, &dir.path().join("config.toml")).unwrap();
    let settings = super::worker_settings(&config);
    assert_eq!(
        settings,
        WorkerSettings {
            command_buffer_size: config.command_buffer_size.get(),
            max_command_buffer_size: super::worker_channel_max(&config),
            log_level: "debug".to_owned(),
            log_target: "stderr".to_owned(),
            access_logs_target: Some(format!(
                "file://{}",
                dir.path().join("access.log").display()
            )),
            access_logs_format: AccessLogFormatSetting::Json,
            buffer_size: 20_000,
            max_connections: 9,
            worker_count: 3,
            upstream_source_addresses: vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()],
            statsd: Some(StatsdSettings {
                address: "127.0.0.1:8125".parse().unwrap(),
                prefix: "sozu".to_owned(),
                tagged: true,
            }),
            hash_seed: Some(77),
        }
    );
    // What the master execs is what the worker parses.
    let arguments = super::workers::worker_arguments(&settings, 4, 10, 11);
    let cli = Cli::try_parse_from(std::iter::once("sozu".to_owned()).chain(arguments)).unwrap();
    let Command::Worker(WorkerCommand {
        process: Some(args),
        action: None,
    }) = cli.command
    else {
        panic!("not the worker process form: {:?}", cli.command);
    };
    assert_eq!((args.id, args.channel_fd, args.scm_fd), (4, 10, 11));
    assert_eq!(args.settings, settings);
}

#[test]
fn a_worker_refuses_settings_with_a_missing_or_unknown_field() {
    use crate::worker::WorkerSettings;

    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_str(
        &format!(
            "command_socket = \"{}\"\n",
            dir.path().join("sozu.sock").display()
        ),
        &dir.path().join("config.toml"),
    )
    .unwrap();
    let json = super::worker_settings(&config).to_json();
    assert!(WorkerSettings::from_json(&json).is_ok());
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let object = value.as_object_mut().unwrap();
    object.remove("max_connections");
    let error = WorkerSettings::from_json(&value.to_string()).unwrap_err();
    assert!(error.contains("max_connections"), "{error}");
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value
        .as_object_mut()
        .unwrap()
        .insert("no_such_knob".to_owned(), 1.into());
    let error = WorkerSettings::from_json(&value.to_string()).unwrap_err();
    assert!(error.contains("no_such_knob"), "{error}");
}
