//! Small TCP and HTTP backends for e2e tests, each naming itself in what it
//! sends, so a test can tell which backend a connection or request reached,
//! and a client helper that reads one HTTP answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a client helper waits for an answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// A loopback TCP backend: sends `<name>\n` on every new connection, then
/// echoes what it receives. Its thread lives as long as the test process.
#[derive(Debug, Clone)]
pub struct NamedTcpBackend {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl NamedTcpBackend {
    pub fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a TCP backend");
        let address = listener.local_addr().expect("local address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let greeting = format!("{name}\n");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                std::thread::spawn(move || {
                    if stream.write_all(greeting.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 16_384];
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
/// `200` with body `backend=<name>`, keep-alive.
#[derive(Debug, Clone)]
pub struct NamedHttpBackend {
    address: SocketAddr,
}

impl NamedHttpBackend {
    pub fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an HTTP backend");
        let address = listener.local_addr().expect("local address");
        let body = format!("backend={name}");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let body = body.clone();
                std::thread::spawn(move || {
                    let Ok(mut writer) = stream.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        while reader.read_line(&mut line).unwrap_or(0) > 2 {
                            line.clear();
                        }
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
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

/// One `GET path` for `host` on a new connection to `proxy`.
pub fn http_get(proxy: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(proxy).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(ANSWER_WAIT))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    read_answer(&mut reader)
}
