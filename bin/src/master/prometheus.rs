//! The master's Prometheus listener (`metrics_listener`): a small
//! non-blocking HTTP/1.1 server in the master's mio loop answering
//! `GET /metrics` with every worker's metrics in the text format.
//!
//! A scrape fans a `query_metrics` out to every live worker (as
//! `Purpose::Scrape`) and answers once each worker answered or the order
//! timed out (`worker_timeout`); a worker that did not answer reads
//! `sozu_worker_answered{worker} 0` and its series are absent from that
//! page. The master adds its own gauges (workers by state, command clients,
//! scrape clients). It never blocks: bounded clients
//! ([`MAX_CLIENTS`], the newest refused past it), a bounded request head
//! ([`MAX_HEAD`], else 431), a deadline to send the head ([`HEAD_TIMEOUT`],
//! else closed) and to take the answer ([`WRITE_TIMEOUT`]); one request per
//! connection (`Connection: close`). The rendering itself is
//! `sozu_lib::metrics::prometheus`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{QueryMetricsOptions, Request, RunState};
use sozu_lib::metrics::prometheus::{Exposition, FamilyKind, CONTENT_TYPE};

use super::gather::Gathered;
use super::{now, Master, Purpose};

/// Scrape connections open at once; a new one past this is closed at once.
pub(crate) const MAX_CLIENTS: usize = 16;
/// Largest request head read (request line and headers).
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the whole answer.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// Reading the request head until this deadline.
    Reading(Instant),
    /// The workers are being asked (bounded by the gather's timeout).
    Waiting,
    /// Sending the answer until this deadline, then closing.
    Writing(Instant),
}

#[derive(Debug)]
struct HttpClient {
    stream: TcpStream,
    head: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    stage: Stage,
}

/// What a request asks.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    Answer(u16, &'static str),
}

/// The listener and its clients.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    listener: TcpListener,
    token: Token,
    clients: HashMap<Token, HttpClient>,
    next_token: usize,
    /// Clients refused because [`MAX_CLIENTS`] were open.
    pub refused: u64,
}

impl MetricsServer {
    /// Binds `addr` and registers it under `token`; client tokens are taken
    /// from `client_tokens` upwards (a range no other part of the master
    /// uses).
    pub(crate) fn bind(
        addr: SocketAddr,
        registry: &Registry,
        token: Token,
        client_tokens: usize,
    ) -> anyhow::Result<Self> {
        let mut listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot bind metrics_listener {addr}"))?;
        registry
            .register(&mut listener, token, Interest::READABLE)
            .context("cannot register the metrics listener")?;
        tracing::info!(address = %addr, "serving Prometheus metrics on GET /metrics");
        Ok(MetricsServer {
            listener,
            token,
            clients: HashMap::new(),
            next_token: client_tokens,
            refused: 0,
        })
    }

    /// Whether `token` is this server's (listener or client).
    pub(crate) fn owns(&self, token: Token) -> bool {
        token == self.token || self.clients.contains_key(&token)
    }

    /// Clients connected now.
    pub(crate) fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The earliest client deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .values()
            .filter_map(|c| match c.stage {
                Stage::Reading(at) | Stage::Writing(at) => Some(at),
                Stage::Waiting => None,
            })
            .min()
    }

    /// Closes the clients past their deadline.
    pub(crate) fn expire(&mut self, registry: &Registry, now: Instant) {
        let late: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| match c.stage {
                Stage::Reading(at) | Stage::Writing(at) => at <= now,
                Stage::Waiting => false,
            })
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            tracing::debug!(client = token.0, "metrics client too slow, closed");
            self.close(registry, token);
        }
    }

    fn close(&mut self, registry: &Registry, token: Token) {
        if let Some(mut client) = self.clients.remove(&token) {
            let _ = registry.deregister(&mut client.stream);
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a metrics client");
                    return;
                }
            };
            if self.clients.len() >= MAX_CLIENTS {
                self.refused += 1;
                tracing::debug!(%peer, max = MAX_CLIENTS, "too many metrics clients, closed");
                continue;
            }
            let token = Token(self.next_token);
            self.next_token += 1;
            if let Err(error) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                tracing::warn!(%error, "cannot register a metrics client");
                continue;
            }
            self.clients.insert(
                token,
                HttpClient {
                    stream,
                    head: Vec::new(),
                    out: Vec::new(),
                    written: 0,
                    stage: Stage::Reading(now + HEAD_TIMEOUT),
                },
            );
        }
    }

    /// Handles an event; `true` when the client asked for the metrics (the
    /// caller gathers them and calls [`Self::answer`]).
    fn on_event(&mut self, registry: &Registry, token: Token, now: Instant) -> bool {
        if token == self.token {
            self.accept(registry, now);
            return false;
        }
        let Some(client) = self.clients.get_mut(&token) else {
            return false;
        };
        let mut scrape = false;
        if matches!(client.stage, Stage::Reading(_)) {
            match read_head(client) {
                Ok(None) => {}
                Ok(Some(Asked::Metrics)) => {
                    client.stage = Stage::Waiting;
                    scrape = true;
                }
                Ok(Some(Asked::Answer(status, reason))) => {
                    respond(
                        client,
                        status,
                        reason,
                        "text/plain; charset=utf-8",
                        reason.as_bytes(),
                        now,
                    );
                }
                Err(()) => {
                    self.close(registry, token);
                    return false;
                }
            }
        }
        if self.flush(token) {
            self.close(registry, token);
        }
        scrape
    }

    /// Writes what is pending; `true` when the client is done (answer sent
    /// or connection broken).
    fn flush(&mut self, token: Token) -> bool {
        let Some(client) = self.clients.get_mut(&token) else {
            return false;
        };
        if !matches!(client.stage, Stage::Writing(_)) {
            return false;
        }
        while client.written < client.out.len() {
            match client.stream.write(&client.out[client.written..]) {
                Ok(0) => return true,
                Ok(n) => client.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        let _ = client.stream.shutdown(std::net::Shutdown::Write);
        true
    }

    /// Sends the page to a waiting client (if it is still there).
    pub(crate) fn answer(&mut self, registry: &Registry, token: Token, body: String) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        respond(client, 200, "OK", CONTENT_TYPE, body.as_bytes(), now());
        if self.flush(token) {
            self.close(registry, token);
        }
    }
}

/// Reads what is there; `Ok(Some)` once the head is complete, `Err` when
/// the client is gone.
fn read_head(client: &mut HttpClient) -> Result<Option<Asked>, ()> {
    let mut buf = [0u8; 2048];
    loop {
        match client.stream.read(&mut buf) {
            Ok(0) => return Err(()),
            Ok(n) => {
                client.head.extend_from_slice(&buf[..n]);
                if let Some(end) = find_head_end(&client.head) {
                    return Ok(Some(parse_request(&client.head[..end])));
                }
                if client.head.len() > MAX_HEAD {
                    return Ok(Some(Asked::Answer(431, "Request Header Fields Too Large")));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(()),
        }
    }
}

fn find_head_end(head: &[u8]) -> Option<usize> {
    head.windows(4).position(|w| w == b"\r\n\r\n")
}

/// What a request head asks: the metrics for `GET /metrics` (any query
/// string), else the error to answer.
fn parse_request(head: &[u8]) -> Asked {
    let Ok(text) = std::str::from_utf8(head) else {
        return Asked::Answer(400, "Bad Request");
    };
    let line = text.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Answer(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Asked::Answer(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Asked::Answer(404, "Not Found");
    }
    if method != "GET" {
        return Asked::Answer(405, "Method Not Allowed");
    }
    Asked::Metrics
}

fn respond(
    client: &mut HttpClient,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    now: Instant,
) {
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    client.out = out;
    client.written = 0;
    client.stage = Stage::Writing(now + WRITE_TIMEOUT);
}

impl Master {
    /// A readiness event on the metrics listener or one of its clients.
    pub(super) fn on_metrics_event(&mut self, token: Token, now: Instant) {
        let Some(server) = self.metrics_server.as_mut() else {
            return;
        };
        if server.on_event(self.poll.registry(), token, now) {
            let request = Request {
                request_type: Some(RequestType::QueryMetrics(QueryMetricsOptions::default())),
            };
            let timeout = Some(self.config.worker_timeout);
            self.fan_out(
                Purpose::Scrape { client: token },
                vec![request],
                timeout,
                now,
            );
        }
    }

    /// The workers answered (or timed out): renders and sends the page.
    pub(super) fn on_scrape_gathered(&mut self, client: Token, gathered: Gathered<()>) {
        let mut page = Exposition::new();
        let mut answered: BTreeMap<u32, bool> = BTreeMap::new();
        for (worker, content) in &gathered.contents {
            if matches!(content.content_type, Some(ContentType::Metrics(_))) {
                answered.insert(*worker, true);
            }
        }
        // Each worker's own figures, as the CLI's `--workers` view has them.
        let aggregated = super::metrics::aggregate(&gathered.contents);
        for (worker, metrics) in &aggregated.workers {
            page.add_worker(worker, metrics);
        }
        for worker in gathered.failures.keys().chain(gathered.timed_out.iter()) {
            answered.entry(*worker).or_insert(false);
        }
        for (worker, ok) in &answered {
            page.sample(
                "sozu_worker_answered",
                FamilyKind::Gauge,
                "1 if the worker answered this scrape's metrics query in time, else 0",
                &[("worker", worker.to_string())],
                if *ok { 1.0 } else { 0.0 },
            );
        }
        let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::from([
            ("booting", 0),
            ("running", 0),
            ("stopping", 0),
            ("stopped", 0),
            ("not_answering", 0),
        ]);
        for worker in self.workers.values() {
            let state = match worker.run_state {
                // Started, still applying the state replayed to it.
                RunState::Running if !worker.ready => "booting",
                RunState::Running => "running",
                RunState::Stopping => "stopping",
                RunState::Stopped => "stopped",
                RunState::NotAnswering => "not_answering",
            };
            *by_state.entry(state).or_default() += 1;
        }
        for (state, n) in by_state {
            page.sample(
                "sozu_master_workers",
                FamilyKind::Gauge,
                "worker processes of the master, by state",
                &[("state", state.to_owned())],
                n as f64,
            );
        }
        page.sample(
            "sozu_master_command_clients",
            FamilyKind::Gauge,
            "clients connected to the command socket",
            &[],
            self.clients.len() as f64,
        );
        if let Some(server) = self.metrics_server.as_mut() {
            page.sample(
                "sozu_master_metrics_clients",
                FamilyKind::Gauge,
                "clients connected to the metrics listener",
                &[],
                server.client_count() as f64,
            );
            page.sample(
                "sozu_master_metrics_clients_refused_total",
                FamilyKind::Counter,
                "metrics clients closed at once because too many were connected",
                &[],
                server.refused as f64,
            );
            server.answer(self.poll.registry(), client, page.render());
        }
    }

    /// Closes the metrics clients past their deadline.
    pub(super) fn expire_metrics_clients(&mut self, now: Instant) {
        if let Some(server) = self.metrics_server.as_mut() {
            server.expire(self.poll.registry(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Asked::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics?name[]=x HTTP/1.0"),
            Asked::Metrics
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1"),
            Asked::Answer(404, "Not Found")
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1"),
            Asked::Answer(405, "Method Not Allowed")
        );
        for garbage in [
            &b"\xff\xfe\x00"[..],
            b"GET",
            b"GET /metrics",
            b"GET /metrics HTTP/1.1 extra",
            b"GET metrics HTTP/1.1",
            b"GET /metrics SPDY/3",
        ] {
            assert_eq!(
                parse_request(garbage),
                Asked::Answer(400, "Bad Request"),
                "{garbage:?}"
            );
        }
    }
}
