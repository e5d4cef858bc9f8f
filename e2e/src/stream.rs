//! Small TCP and HTTP backends for e2e tests, each naming itself in what it
//! sends, so a test can tell which backend a connection or request reached;
//! client helpers that read HTTP answers; and the TCP + HTTP configuration
//! most stream tests start from ([`tcp_http_config`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a client helper waits for an answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// A loopback TCP backend: sends `<name>\n` on every new connection (none
/// for [`NamedTcpBackend::echo`]), then echoes what it receives and closes
/// its side when the client closes its own. Its thread lives as long as the
/// test process.
#[derive(Debug, Clone)]
pub struct NamedTcpBackend {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl NamedTcpBackend {
    /// A backend that greets every connection with its name.
    pub fn start(name: &str) -> Self {
        Self::serve(format!("{name}\n"))
    }

    /// A plain echo backend (no greeting).
    pub fn echo() -> Self {
        Self::serve(String::new())
    }

    fn serve(greeting: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a TCP backend");
        let address = listener.local_addr().expect("local address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                std::thread::spawn(move || {
                    if stream.write_all(greeting.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 65_536];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = stream.shutdown(Shutdown::Write);
                                return;
                            }
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        NamedTcpBackend {
            address,
            connections,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// Connections it accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Connects to a TCP proxy and reads the greeting line of the backend it
/// reached: `Ok(name)`, or `Err` describing how the connection ended
/// (closed, reset, timed out) without one.
pub fn tcp_greeting(proxy: SocketAddr) -> Result<(TcpStream, String), String> {
    let stream = TcpStream::connect(proxy).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(ANSWER_WAIT))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("closed without a greeting".to_owned()),
        Ok(_) => Ok((stream, line.trim_end().to_owned())),
        Err(e) => Err(format!("read: {e} ({:?})", e.kind())),
    }
}

/// A loopback HTTP/1.1 backend answering every request (without a body)
/// `200` with body `backend=<name>` (`backend=<name> path=<path>` for
/// [`NamedHttpBackend::showing_path`] and [`NamedHttpBackend::holding`]),
/// keep-alive. Its threads live as long as the test process.
#[derive(Debug, Clone)]
pub struct NamedHttpBackend {
    address: SocketAddr,
}

/// The backend's ends of a [`Hold`]: where it announces a held request,
/// and where it waits for its release (shared by its connections).
type BackendHold = (Sender<()>, Arc<Mutex<Receiver<()>>>);

/// The two ends a test holds of a [`NamedHttpBackend::holding`] backend.
#[derive(Debug)]
pub struct Hold {
    /// One `()` per request for `/hold` that arrived.
    pub held: Receiver<()>,
    /// Each `()` sent lets one held request be answered (after
    /// [`ANSWER_WAIT`] it is answered anyway).
    pub release: Sender<()>,
}

impl NamedHttpBackend {
    /// Answers `backend=<name>`.
    pub fn start(name: &str) -> Self {
        Self::serve(name, false, None, "")
    }

    /// Answers `backend=<name>` with `headers` (lines ending `\r\n`) in
    /// its heads.
    pub fn with_headers(name: &str, headers: &'static str) -> Self {
        Self::serve(name, false, None, headers)
    }

    /// Answers `backend=<name> path=<path>`.
    pub fn showing_path(name: &str) -> Self {
        Self::serve(name, true, None, "")
    }

    /// Like [`NamedHttpBackend::showing_path`], and a request for `/hold` is
    /// announced on [`Hold::held`] and answered only once `()` arrives on
    /// [`Hold::release`].
    pub fn holding(name: &str) -> (Self, Hold) {
        let (held_tx, held) = channel();
        let (release, release_rx) = channel::<()>();
        let backend = Self::serve(
            name,
            true,
            Some((held_tx, Arc::new(Mutex::new(release_rx)))),
            "",
        );
        (backend, Hold { held, release })
    }

    fn serve(
        name: &str,
        show_path: bool,
        hold: Option<BackendHold>,
        headers: &'static str,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an HTTP backend");
        let address = listener.local_addr().expect("local address");
        let name = name.to_owned();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (name, hold) = (name.clone(), hold.clone());
                std::thread::spawn(move || {
                    let Ok(mut writer) = stream.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut line = String::new();
                        while reader.read_line(&mut line).unwrap_or(0) > 2 {
                            line.clear();
                        }
                        let path = request_line.split(' ').nth(1).unwrap_or("?");
                        if let (Some((held, release)), "/hold") = (&hold, path) {
                            let _ = held.send(());
                            if let Ok(release) = release.lock() {
                                let _ = release.recv_timeout(ANSWER_WAIT);
                            }
                        }
                        let body = if show_path {
                            format!("backend={name} path={path}")
                        } else {
                            format!("backend={name}")
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        NamedHttpBackend { address }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }
}

/// Reads one HTTP answer (status line, headers, `Content-Length` body):
/// `Ok((status, body))`, or `Err` describing how the connection ended.
pub fn read_answer(reader: &mut impl BufRead) -> Result<(u16, String), String> {
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Err("closed without an answer".to_owned()),
        Ok(_) => {}
        Err(e) => return Err(format!("read: {e} ({:?})", e.kind())),
    }
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("closed inside the head".to_owned());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| line.clone())?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A client connection to `proxy` (reads time out after [`ANSWER_WAIT`])
/// and a reader on it, for several requests on one connection with
/// [`get_on`].
pub fn http_connect(proxy: SocketAddr) -> Result<(TcpStream, BufReader<TcpStream>), String> {
    let stream = TcpStream::connect(proxy).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(ANSWER_WAIT))
        .map_err(|e| e.to_string())?;
    let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    Ok((stream, reader))
}

/// One `GET path` for `host` on a connection from [`http_connect`]:
/// `(status, body)`, or `Err` describing how the connection ended.
pub fn get_on(
    stream: &mut TcpStream,
    reader: &mut impl BufRead,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    read_answer(reader)
}

/// One `GET path` for `host` on a new connection to `proxy`.
pub fn http_get(proxy: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let (mut stream, mut reader) = http_connect(proxy)?;
    get_on(&mut stream, &mut reader, host, path)
}

/// A backend line of [`tcp_http_config`].
#[derive(Debug, Clone)]
pub struct StreamBackend {
    /// Its `backend_id`.
    pub id: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// `backup = true`.
    pub backup: bool,
}

impl StreamBackend {
    /// A primary backend.
    pub fn new(id: &str, address: SocketAddr) -> Self {
        StreamBackend {
            id: id.to_owned(),
            address,
            backup: false,
        }
    }

    /// A backup backend (`backup = true`).
    pub fn backup(id: &str, address: SocketAddr) -> Self {
        StreamBackend {
            backup: true,
            ..StreamBackend::new(id, address)
        }
    }
}

/// The `config.toml` text most TCP and HTTP tests share: a TCP listener on
/// `tcp_front` with cluster `echo` (backends `echo`), an HTTP listener on
/// `http_front` with cluster `web` routing `example.com/` (backends `web`).
pub fn tcp_http_config(
    tcp_front: SocketAddr,
    http_front: SocketAddr,
    echo: &[StreamBackend],
    web: &[StreamBackend],
) -> String {
    let backends = |list: &[StreamBackend]| {
        list.iter()
            .map(|b| {
                let backup = if b.backup { ", backup = true" } else { "" };
                format!(
                    "{{ address = \"{}\", backend_id = \"{}\"{backup} }}",
                    b.address, b.id
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
[[listeners]]
protocol = "tcp"
address = "{tcp_front}"

[[listeners]]
protocol = "http"
address = "{http_front}"

[clusters.echo]
protocol = "tcp"
frontends = [{{ address = "{tcp_front}" }}]
backends = [{echo}]

[clusters.web]
protocol = "http"
frontends = [{{ address = "{http_front}", hostname = "example.com", path = "/" }}]
backends = [{web}]
"#,
        echo = backends(echo),
        web = backends(web),
    )
}
