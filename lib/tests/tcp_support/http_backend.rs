//! A blocking HTTP/1.1 test backend (parsed with httparse) and client
//! helpers. Each backend counts the connections it accepted and answers by
//! path: `/download/N` sends N bytes chunked, `/upload` answers the length
//! and checksum of the (chunked or sized) body it read, `/hold` signals its
//! arrival and waits for a release before answering, `/never` never
//! answers, anything else answers `backend=<name>` and the forwarding
//! headers it saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::payload;

/// A running backend.
pub struct HttpBackend {
    pub address: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Receives `()` when a `/hold` request arrives.
    pub held: Arc<Mutex<mpsc::Receiver<()>>>,
    /// Send `()` to release one `/hold` request.
    pub release: mpsc::Sender<()>,
}

/// A parsed message: status (responses) or path (requests), headers, body.
#[derive(Debug, Clone)]
pub struct Message {
    pub status: u16,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one head (up to the blank line) from `r`. `None` on EOF.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            return Some(head);
        }
    }
}

/// Reads a chunked body and decodes it.
fn read_chunked(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
        if size == 0 {
            // Trailers until the blank line.
            loop {
                let mut t = String::new();
                r.read_line(&mut t).unwrap();
                if t == "\r\n" {
                    return body;
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).unwrap();
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).unwrap();
        assert_eq!(&crlf, b"\r\n");
    }
}

fn parse_headers(head: &[u8], response: bool) -> (u16, String, Vec<(String, String)>) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    if response {
        let mut res = httparse::Response::new(&mut headers);
        res.parse(head).unwrap();
        let h = res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        (res.code.unwrap(), String::new(), h)
    } else {
        let mut req = httparse::Request::new(&mut headers);
        req.parse(head).unwrap();
        let h = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        (0, req.path.unwrap().to_owned(), h)
    }
}

fn read_message(
    r: &mut BufReader<TcpStream>,
    response: bool,
    head_request: bool,
) -> Option<Message> {
    let head = read_head(r)?;
    let (status, path, headers) = parse_headers(&head, response);
    let mut m = Message {
        status,
        path,
        headers,
        body: Vec::new(),
    };
    if response && (100..200).contains(&status) {
        return Some(m);
    }
    if head_request || status == 204 || status == 304 {
        return Some(m);
    }
    if m.header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        m.body = read_chunked(r);
    } else if let Some(len) = m.header("content-length") {
        let len: usize = len.trim().parse().unwrap();
        m.body.resize(len, 0);
        r.read_exact(&mut m.body).unwrap();
    } else if response {
        r.read_to_end(&mut m.body).unwrap();
    }
    Some(m)
}

/// Reads one response (a 1xx is returned as is).
pub fn read_response(r: &mut BufReader<TcpStream>) -> Option<Message> {
    read_message(r, true, false)
}

/// A client connection and its reader.
pub fn http_client(address: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = super::client(address);
    let reader = BufReader::new(s.try_clone().unwrap());
    (s, reader)
}

/// Sends a GET and reads the answer.
pub fn get(
    s: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    host: &str,
    path: &str,
) -> Option<Message> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").ok()?;
    read_response(r)
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The `/upload` answer for this body.
pub fn upload_answer(data: &[u8]) -> String {
    format!("len={} sum={:x}", data.len(), checksum(data))
}

fn respond(s: &mut TcpStream, status: &str, body: &[u8], close: bool) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )?;
    s.write_all(body)
}

fn serve(
    name: String,
    stream: TcpStream,
    held_tx: mpsc::Sender<()>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut r) else {
            return;
        };
        let (_, path, headers) = parse_headers(&head, false);
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let expects = find("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects && writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
            return;
        }
        let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            read_chunked(&mut r)
        } else if let Some(len) = find("content-length") {
            let mut b = vec![0u8; len.trim().parse().unwrap()];
            if r.read_exact(&mut b).is_err() {
                return;
            }
            b
        } else {
            Vec::new()
        };
        let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let result = if let Some(n) = path.strip_prefix("/download/") {
            let n: usize = n.parse().unwrap();
            let data = payload(n, 9);
            (|| {
                write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                )?;
                for part in data.chunks(30_000) {
                    write!(writer, "{:x}\r\n", part.len())?;
                    writer.write_all(part)?;
                    writer.write_all(b"\r\n")?;
                }
                writer.write_all(b"0\r\n\r\n")
            })()
        } else if path == "/upload" {
            respond(
                &mut writer,
                "200 OK",
                upload_answer(&body).as_bytes(),
                close,
            )
        } else if path == "/hold" {
            let _ = held_tx.send(());
            let _ = release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(30));
            respond(&mut writer, "200 OK", b"released", close)
        } else if path == "/never" {
            std::thread::sleep(Duration::from_secs(30));
            return;
        } else {
            let text = format!(
                "backend={name} path={path} xff={} proto={} forwarded={}",
                find("x-forwarded-for").unwrap_or_default(),
                find("x-forwarded-proto").unwrap_or_default(),
                find("forwarded").unwrap_or_default(),
            );
            respond(&mut writer, "200 OK", text.as_bytes(), close)
        };
        if result.is_err() || close {
            return;
        }
    }
}

/// Starts a backend named `name`.
pub fn http_backend(name: &str) -> HttpBackend {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let counter = connections.clone();
    let name = name.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let (name, held_tx, release_rx) = (name.clone(), held_tx.clone(), release_rx.clone());
            std::thread::spawn(move || serve(name, stream, held_tx, release_rx));
        }
    });
    HttpBackend {
        address,
        connections,
        held: Arc::new(Mutex::new(held_rx)),
        release: release_tx,
    }
}
