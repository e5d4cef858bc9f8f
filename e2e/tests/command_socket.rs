//! The command socket against hostile or broken clients: malformed,
//! oversized and half frames get an error answer or that client is closed,
//! and the master keeps serving; the socket is mode 0600.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use prost::Message;
use sozu_command_lib::command::{Response, ResponseStatus};
use sozu_e2e::ports::free_v4;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpListener};

fn start() -> (Sozu, UdpBackend) {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    (
        Sozu::start(SozuConfig::udp(2, UdpListener::new(frontend), cluster)),
        backend,
    )
}

/// What the master did with a bad frame.
#[derive(Debug)]
enum Outcome {
    /// Answered FAILURE with this message.
    Failure(String),
    /// Closed the connection without an answer.
    Closed,
}

/// Reads whatever comes back within a bound: a FAILURE answer, or EOF.
fn outcome(stream: &mut UnixStream) -> Outcome {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut header = [0u8; 8];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Outcome::Closed,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Outcome::Closed,
        Err(e) => panic!("neither an answer nor a close within 10 s: {e}"),
    }
    let len = u64::from_le_bytes(header) as usize;
    assert!((8..1 << 20).contains(&len), "answer frame length {len}");
    let mut body = vec![0u8; len - 8];
    stream.read_exact(&mut body).expect("the answer body");
    let response = Response::decode(body.as_slice()).expect("a Response");
    assert_eq!(
        response.status,
        ResponseStatus::Failure as i32,
        "{response:?}"
    );
    assert!(!response.message.is_empty(), "a FAILURE must say why");
    Outcome::Failure(response.message)
}

/// A whole `status` request frame (length prefix included).
fn status_frame() -> Vec<u8> {
    use sozu_command_lib::command::{request::RequestType, Request, Status};
    let body = Request {
        request_type: Some(RequestType::Status(Status {})),
    }
    .encode_to_vec();
    let mut frame = ((body.len() + 8) as u64).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// The first answer on `stream` that is not PROCESSING, within 10 s.
fn final_answer(stream: &mut UnixStream) -> Response {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    loop {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).expect("an answer header");
        let len = u64::from_le_bytes(header) as usize;
        assert!((8..1 << 20).contains(&len), "answer frame length {len}");
        let mut body = vec![0u8; len - 8];
        stream.read_exact(&mut body).expect("the answer body");
        let response = Response::decode(body.as_slice()).expect("a Response");
        if response.status != ResponseStatus::Processing as i32 {
            return response;
        }
    }
}

fn assert_still_serving(sozu: &Sozu) {
    let workers = sozu.status().expect("status after a bad client");
    assert_eq!(workers.len(), 2);
}

#[test]
fn the_command_socket_is_mode_0600() {
    let (sozu, _b) = start();
    let mode = std::fs::metadata(sozu.socket_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);
}

#[test]
fn an_undecodable_frame_gets_an_error_and_the_connection_stays_usable() {
    let (sozu, _b) = start();
    let mut stream = UnixStream::connect(sozu.socket_path()).unwrap();
    let garbage = [0xFFu8; 5];
    stream
        .write_all(&(8 + garbage.len() as u64).to_le_bytes())
        .unwrap();
    stream.write_all(&garbage).unwrap();
    match outcome(&mut stream) {
        Outcome::Failure(_) => {}
        Outcome::Closed => panic!("a well-framed undecodable request deserves a FAILURE answer"),
    }
    // doc/protocol.md: the frame was skipped, the connection still works.
    let mut channel: sozu_e2e::sozu::CommandChannel =
        sozu_command_lib::channel::Channel::new(stream, 16_384, 163_840);
    let answer = sozu_e2e::sozu::send_order(
        &mut channel,
        sozu_command_lib::command::request::RequestType::Status(
            sozu_command_lib::command::Status {},
        ),
    )
    .expect("a status on the same connection");
    assert_eq!(answer.status, ResponseStatus::Ok as i32, "{answer:?}");
    assert_still_serving(&sozu);
}

#[test]
fn an_empty_request_gets_an_error() {
    let (sozu, _b) = start();
    let mut stream = UnixStream::connect(sozu.socket_path()).unwrap();
    stream.write_all(&8u64.to_le_bytes()).unwrap();
    match outcome(&mut stream) {
        Outcome::Failure(message) => assert!(!message.is_empty()),
        Outcome::Closed => panic!("a request with no order deserves a FAILURE answer"),
    }
    assert_still_serving(&sozu);
}

/// A frame the stream cannot recover from: a FAILURE saying `why`, then
/// the master closes this connection (and only it).
fn expect_refused_then_closed(stream: &mut UnixStream, why: &str) {
    match outcome(stream) {
        Outcome::Failure(message) => assert!(
            message.contains(why) && message.contains("closing the connection"),
            "expected a FAILURE saying {why:?} and that it closes: {message:?}"
        ),
        Outcome::Closed => panic!("closed without saying why ({why:?})"),
    }
    match outcome(stream) {
        Outcome::Closed => {}
        Outcome::Failure(message) => panic!("a second answer after the refusal: {message:?}"),
    }
}

#[test]
fn an_oversized_frame_is_refused_without_taking_the_master_down() {
    let (sozu, _b) = start();
    for declared in [1u64 << 40, u64::MAX, 10_000_000, 163_841] {
        let mut stream = UnixStream::connect(sozu.socket_path()).unwrap();
        stream.write_all(&declared.to_le_bytes()).unwrap();
        let _ = stream.write_all(&[0u8; 64]);
        // max_command_buffer_size is 163,840 by default.
        expect_refused_then_closed(
            &mut stream,
            &format!("frame of {declared} bytes exceeds the maximum of 163840 bytes"),
        );
        assert_still_serving(&sozu);
    }
}

#[test]
fn a_frame_shorter_than_its_header_is_refused() {
    let (sozu, _b) = start();
    for declared in [3u64, 0, 7] {
        let mut stream = UnixStream::connect(sozu.socket_path()).unwrap();
        stream.write_all(&declared.to_le_bytes()).unwrap();
        expect_refused_then_closed(
            &mut stream,
            &format!("frame length {declared} is below the 8-byte header"),
        );
    }
    assert_still_serving(&sozu);
}

#[test]
fn half_frames_neither_block_other_clients_nor_crash_the_master() {
    let (sozu, _b) = start();
    let frame = status_frame();
    // A client that stalls in the middle of a frame, kept open.
    let mut stalled = UnixStream::connect(sozu.socket_path()).unwrap();
    stalled.write_all(&frame[..10]).unwrap();
    // A client that stalls in the middle of the length prefix.
    let mut stalled_header = UnixStream::connect(sozu.socket_path()).unwrap();
    stalled_header.write_all(&frame[..3]).unwrap();
    assert_still_serving(&sozu);
    // Both were waited for, not dropped: the rest of their frame gets the
    // answer.
    stalled.write_all(&frame[10..]).unwrap();
    stalled_header.write_all(&frame[3..]).unwrap();
    for stream in [&mut stalled, &mut stalled_header] {
        let answer = final_answer(stream);
        assert_eq!(answer.status, ResponseStatus::Ok as i32, "{answer:?}");
    }
    // A client that hangs up mid-frame.
    let mut hangs_up = UnixStream::connect(sozu.socket_path()).unwrap();
    hangs_up.write_all(&100u64.to_le_bytes()).unwrap();
    hangs_up.write_all(&[1u8; 20]).unwrap();
    drop(hangs_up);
    assert_still_serving(&sozu);
    drop(stalled);
    drop(stalled_header);
    assert_still_serving(&sozu);
    let out = sozu.cli_ok(&["status"]);
    assert!(!out.stdout.is_empty());
}

#[test]
fn a_raw_client_gets_sozu_2_answers_for_lists() {
    use sozu_command_lib::command::request::RequestType;
    use sozu_command_lib::command::response_content::ContentType;
    use sozu_command_lib::command::{ListListeners, ListWorkers};
    let (sozu, _b) = start();
    // One connection, several orders in turn, as a Sōzu 2.x client does.
    let mut channel = sozu.channel().unwrap();
    let workers =
        sozu_e2e::sozu::send_order(&mut channel, RequestType::ListWorkers(ListWorkers {}))
            .expect("list_workers");
    match workers.content.and_then(|c| c.content_type) {
        Some(ContentType::Workers(w)) => assert_eq!(w.vec.len(), 2),
        other => panic!("list_workers answered {other:?}"),
    }
    let listeners =
        sozu_e2e::sozu::send_order(&mut channel, RequestType::ListListeners(ListListeners {}))
            .expect("list_listeners");
    match listeners.content.and_then(|c| c.content_type) {
        Some(ContentType::ListenersList(l)) => {
            let frontend = sozu.config().udp_listeners[0].address.to_string();
            assert!(
                l.udp_listeners.contains_key(&frontend),
                "{:?}",
                l.udp_listeners.keys()
            );
        }
        other => panic!("list_listeners answered {other:?}"),
    }
}

#[test]
fn a_stale_socket_file_left_by_a_dead_master_is_replaced() {
    let dir = Sozu::temp_dir();
    // A socket file nobody listens on, as a killed master leaves behind.
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join("sozu.sock")).unwrap();
    drop(stale);
    assert!(dir.path().join("sozu.sock").exists());
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let sozu = Sozu::start_in(dir, SozuConfig::udp(2, UdpListener::new(frontend), cluster));
    assert_still_serving(&sozu);
    let mode = std::fs::metadata(sozu.socket_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);
}

#[test]
fn a_second_master_on_a_live_socket_refuses_to_start() {
    let (sozu, _b) = start();
    let mut second = std::process::Command::new(sozu_e2e::binary::sozu_binary())
        .arg("start")
        .arg("-c")
        .arg(sozu.config_path())
        .env(sozu_e2e::sozu::INSTANCE_ENV, sozu.dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn a second master");
    let status =
        sozu_e2e::wait::poll_until(Duration::from_secs(10), || second.try_wait().ok().flatten());
    if status.is_none() {
        let _ = second.kill();
        let _ = second.wait();
    }
    let status = status.expect("the second master kept running on a live socket");
    assert!(!status.success(), "the second master exited 0");
    assert_still_serving(&sozu);
}
