//! The HTTP set-ups of the tests that check what Sōzu answers and what it
//! forwards (`tests/http_answers.rs`, `tests/http_features.rs`): answers
//! read with their headers ([`request`]), request heads read the way a
//! backend gets them ([`read_request_head`]), a backend that reports each
//! head it got ([`RecordingHttpBackend`]), and the `config.toml` text of
//! one HTTP listener with its clusters ([`HttpConfig`]). The plain client
//! helpers and the named backends are in [`crate::stream`].

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver};

use crate::stream::ANSWER_WAIT;
use crate::{Sozu, SozuConfig};

/// An answer with its headers (names lowercased).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// `(name, value)` in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, `Content-Length` bytes (lossy UTF-8).
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Header lines up to the empty line ending a head: `(name, value)`, names
/// lowercased, values trimmed.
fn read_headers(reader: &mut impl BufRead) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("closed inside the head".to_owned());
        }
        if line == "\r\n" {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// Reads a response head (status line and headers), up to its empty line.
pub fn read_head(reader: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>), String> {
    let mut status_line = String::new();
    if reader
        .read_line(&mut status_line)
        .map_err(|e| e.to_string())?
        == 0
    {
        return Err("closed without an answer".to_owned());
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    Ok((status, read_headers(reader)?))
}

/// Reads one answer (head, then its `Content-Length` body).
pub fn read_full_answer(reader: &mut impl BufRead) -> Result<Answer, String> {
    let (status, headers) = read_head(reader)?;
    let length: usize = match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, v)) => v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?,
        None => return Err("no Content-Length".to_owned()),
    };
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("the body: {e}"))?;
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One `GET path` for `host` on a new connection, with `extra` header
/// lines (each ending `\r\n`); the answer is read to its `Content-Length`.
/// Panics, naming the path, when no such answer comes.
pub fn request(proxy: SocketAddr, host: &str, path: &str, extra: &str) -> Answer {
    let mut stream = TcpStream::connect(proxy).expect("connect to the proxy");
    stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").unwrap();
    read_full_answer(&mut BufReader::new(stream)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A request head as a backend got it.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The request line, without its line end.
    pub line: String,
    /// `(name, value)` in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Every value of header `name` (lowercase), in order.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Reads a request head (request line and headers), up to its empty line;
/// `None` when the connection ends or sends something else.
pub fn read_request_head(reader: &mut impl BufRead) -> Option<RequestHead> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let headers = read_headers(reader).ok()?;
    Some(RequestHead {
        line: line.trim_end().to_owned(),
        headers,
    })
}

/// A loopback HTTP/1.1 backend (keep-alive, requests without a body) that
/// answers each request `200` with the body its `answer` function makes
/// of the head, and reports the head to the test. Its threads live as
/// long as the test process.
#[derive(Debug)]
pub struct RecordingHttpBackend {
    address: SocketAddr,
    seen: Receiver<RequestHead>,
}

impl RecordingHttpBackend {
    /// Starts it; `answer` makes each answer's body from the request head.
    pub fn start(answer: fn(&RequestHead) -> String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an HTTP backend");
        let address = listener.local_addr().expect("local address");
        let (tx, seen) = channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(ANSWER_WAIT));
                    let Ok(mut writer) = stream.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(stream);
                    while let Some(head) = read_request_head(&mut reader) {
                        let body = answer(&head);
                        let _ = tx.send(head);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if writer.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RecordingHttpBackend { address, seen }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// The next request head it got, waiting up to [`ANSWER_WAIT`]; panics
    /// naming `what` when none came.
    pub fn next_request(&self, what: &str) -> RequestHead {
        self.seen
            .recv_timeout(ANSWER_WAIT)
            .unwrap_or_else(|_| panic!("the backend saw no request ({what})"))
    }
}

/// The `config.toml` text of one HTTP listener and the HTTP clusters
/// routed from it: each cluster routes a hostname (every path) on the
/// listener to its backends.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    front: SocketAddr,
    listener: String,
    clusters: String,
}

impl HttpConfig {
    /// An HTTP listener on `front`, no cluster yet.
    pub fn new(front: SocketAddr) -> Self {
        HttpConfig {
            front,
            listener: String::new(),
            clusters: String::new(),
        }
    }

    /// TOML added to the listener's table: keys (`sticky_name = "S"`), then
    /// possibly its sub-tables (`[listeners.answers]`).
    pub fn listener(mut self, toml: &str) -> Self {
        self.listener.push_str(toml);
        self.listener.push('\n');
        self
    }

    /// Cluster `id` routing `hostname` to `backends`.
    pub fn cluster(self, id: &str, hostname: &str, backends: &[SocketAddr]) -> Self {
        self.cluster_with(id, hostname, backends, "")
    }

    /// Like [`HttpConfig::cluster`], with `toml` added to the cluster's
    /// table: keys (`sticky_session = true`), then possibly its sub-tables
    /// (`[clusters.<id>.answers]`).
    pub fn cluster_with(
        self,
        id: &str,
        hostname: &str,
        backends: &[SocketAddr],
        toml: &str,
    ) -> Self {
        let backends = backends
            .iter()
            .map(|b| format!("{{ address = \"{b}\" }}"))
            .collect::<Vec<_>>()
            .join(", ");
        let front = self.front;
        self.cluster_table(
            id,
            &format!(
                "frontends = [{{ address = \"{front}\", hostname = \"{hostname}\" }}]\n\
                 backends = [{backends}]\n{toml}"
            ),
        )
    }

    /// Cluster `id` with a table written by the caller (its frontends and
    /// backends included).
    pub fn cluster_table(mut self, id: &str, toml: &str) -> Self {
        self.clusters
            .push_str(&format!("\n[clusters.{id}]\nprotocol = \"http\"\n{toml}\n"));
        self
    }

    /// The text, for [`SozuConfig::extra`].
    pub fn toml(&self) -> String {
        format!(
            "\n[[listeners]]\nprotocol = \"http\"\naddress = \"{}\"\n{}{}",
            self.front, self.listener, self.clusters
        )
    }

    /// A one-worker configuration with this text.
    pub fn sozu_config(&self) -> SozuConfig {
        SozuConfig {
            worker_count: 1,
            extra: self.toml(),
            ..SozuConfig::default()
        }
    }

    /// Starts Sōzu with [`HttpConfig::sozu_config`].
    pub fn start(&self) -> Sozu {
        Sozu::start(self.sozu_config())
    }
}
