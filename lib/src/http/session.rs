//! One HTTP/1.1 client connection: request heads parsed and routed, one
//! backend connection at a time (kept across requests to the same cluster),
//! bodies streamed through two bounded buffers, default answers, timeouts.
//!
//! Owns the connection's state machine. Requests on one connection are
//! served in order, one at a time: pipelined bytes wait in the client
//! buffer until the current response is complete. It never blocks, never
//! panics on a peer's bytes (bad framing is a 400 / 502 or a cut), and
//! reads no clock (`now` comes from the loop). Parsing and routing rules
//! live in the pure modules [`super::head`], [`super::body`],
//! [`super::router`]; registration of the listener sockets in
//! [`super::HttpProxy`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sozu_command_lib::command::ProxyProtocolConfig;

use crate::backends::{BackendId, ClusterId};
use crate::load_balancing::stable_hash;
use crate::metrics::{count, gauge_add};
use crate::protocol::http::hsts::Hsts;
use crate::protocol::proxy_protocol::{self, StreamProxyHeader};
use crate::stream::buffer::Buffer;
use crate::stream::context::ProxyContext;
use crate::stream::deadlines::ArmedTimer;
use crate::stream::limit::ConnectionSlot;
use crate::stream::socket::{
    connect_backend, connect_preferred, connect_state, ConnectError, ConnectState, ReadOutcome,
    Side, MAX_CONNECT_ATTEMPTS,
};

use super::access::HttpAccessRecord;
use super::answers::default_answer;
use super::features::{self, HttpFeatures, DEFAULT_STICKY_NAME};
use super::metrics::{HttpHandleCache, HttpHandles};
use super::templates::AnswerValues;
use super::HttpToken;
use crate::protocol::http::body::BodyTracker;
use crate::protocol::http::head::{self, ForwardInfo};
use crate::protocol::http::router::{RouteTarget, Router, Scheme};
use crate::stream::ClusterKnobs;

mod exchange;

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, so closing with unread bytes does not reset the
/// connection before the client read our last answer.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// What the proxy lends a session for one call.
pub(crate) struct Env<'a, 'c> {
    pub ctx: &'a mut ProxyContext<'c, HttpToken>,
    pub router: Option<&'a Router>,
    pub clusters: &'a HashMap<String, ClusterKnobs>,
    /// Custom answers, `https_redirect`, sticky sessions.
    pub features: &'a HttpFeatures,
    pub handles: &'a mut HttpHandleCache,
    pub key: usize,
    pub draining: bool,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the client's PROXY header (`expect_proxy`).
    ExpectProxy,
    /// Waiting for (or reading) a request head.
    Head,
    /// A request is routed; its backend connect is in progress.
    Connecting,
    /// Request and response in flight.
    Exchange,
    /// Writing one of the proxy's own answers.
    Answer,
    /// Our side is shut; discarding what the client still sends.
    Linger,
}

/// Why a connection ended (debug logs, and the access record of a request
/// cut short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// Closed after its last answer, or by the client between requests.
    Completed,
    /// Idle between requests past `front_timeout`.
    IdleTimeout,
    /// No progress on the client side past `front_timeout` mid-exchange.
    FrontTimeout,
    /// No progress on the backend side past `back_timeout` mid-response.
    BackTimeout,
    /// The client went away or failed mid-request.
    ClientAborted,
    /// The backend failed after the response started.
    BackendAborted,
    /// Bad PROXY header on an `expect_proxy` listener.
    ProxyHeaderInvalid,
    /// The listener was removed.
    ListenerRemoved,
    /// Hard stop or soft-stop of an idle connection.
    Shutdown,
}

impl SessionEnd {
    /// The name in records.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Completed => "completed",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::FrontTimeout => "front_timeout",
            SessionEnd::BackTimeout => "back_timeout",
            SessionEnd::ClientAborted => "client_aborted",
            SessionEnd::BackendAborted => "backend_aborted",
            SessionEnd::ProxyHeaderInvalid => "proxy_header_invalid",
            SessionEnd::ListenerRemoved => "listener_removed",
            SessionEnd::Shutdown => "shutdown",
        }
    }

    fn is_timeout(self) -> bool {
        matches!(
            self,
            SessionEnd::IdleTimeout | SessionEnd::FrontTimeout | SessionEnd::BackTimeout
        )
    }
}

/// The listener's timeouts, captured at accept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpTimeouts {
    pub front: Duration,
    pub back: Duration,
    pub connect: Duration,
    pub request: Duration,
}

/// The backend connection of a session.
#[derive(Debug)]
struct BackConn {
    side: Side,
    cluster: ClusterId,
    backend: BackendId,
    address: SocketAddr,
    connected: bool,
    flow_counted: bool,
}

/// What is known of the request being served.
#[derive(Debug)]
struct RequestInfo {
    method: String,
    target: String,
    host: String,
    started: Instant,
    bytes_in: u64,
}

/// The response head being relayed.
#[derive(Debug)]
struct ResponseState {
    status: u16,
    body: BodyTracker,
    close_client: bool,
    backend_keep_alive: bool,
    /// A 101 to an upgrade request: the exchange is a byte tunnel.
    upgraded: bool,
}

/// A routed request and its response.
#[derive(Debug)]
struct Exchange {
    version: u8,
    keep_alive: bool,
    cluster: ClusterId,
    tags: Option<Arc<BTreeMap<String, String>>>,
    /// The HSTS policy stamped on the response (HTTPS listeners only).
    hsts: Option<Hsts>,
    cluster_handles: HttpHandles,
    backend_handles: Option<HttpHandles>,
    request_head: Vec<u8>,
    request_body: BodyTracker,
    req_forwardable: usize,
    response: Option<ResponseState>,
    resp_forwardable: usize,
    bytes_out: u64,
    wrote_to_client: bool,
    /// Sent on a kept backend connection (which the backend may have
    /// closed meanwhile).
    reused: bool,
    /// Request body bytes written to the backend.
    body_forwarded: u64,
    /// The sticky cookie's value, when the cluster has sticky sessions.
    sticky: Option<String>,
    /// The request asked for a protocol upgrade (WebSocket…).
    upgrade: bool,
}

/// Which deadline is next and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Idle,
    Request,
    Connect,
    Backend,
    Front,
    Back,
    Close,
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub listener: usize,
    pub listener_address: SocketAddr,
    pub client: SocketAddr,
    pub front: Side,
    back: Option<BackConn>,
    pub phase: Phase,
    front_in: Buffer,
    back_in: Buffer,
    front_out: Vec<u8>,
    front_out_sent: usize,
    back_out: Vec<u8>,
    back_out_sent: usize,
    request: Option<RequestInfo>,
    exchange: Option<Exchange>,
    timeouts: HttpTimeouts,
    head_started: Option<Instant>,
    attempt: u32,
    connect_started: Option<Instant>,
    linger_until: Option<Instant>,
    pub timer: ArmedTimer,
    listener_handles: HttpHandles,
    received_header: Option<Vec<u8>>,
    /// Its place in the worker's `max_connections` (freed with the session).
    _slot: ConnectionSlot,
}

impl Session {
    /// A new connection from `client` on a listener.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        listener: usize,
        listener_address: SocketAddr,
        client: SocketAddr,
        front: Side,
        expect_proxy: bool,
        timeouts: HttpTimeouts,
        buffer_size: usize,
        listener_handles: HttpHandles,
        slot: ConnectionSlot,
    ) -> Self {
        Session {
            listener,
            listener_address,
            client,
            front,
            back: None,
            phase: if expect_proxy {
                Phase::ExpectProxy
            } else {
                Phase::Head
            },
            front_in: Buffer::new(buffer_size),
            back_in: Buffer::new(buffer_size),
            front_out: Vec::new(),
            front_out_sent: 0,
            back_out: Vec::new(),
            back_out_sent: 0,
            request: None,
            exchange: None,
            timeouts,
            head_started: None,
            attempt: 0,
            connect_started: None,
            linger_until: None,
            timer: ArmedTimer::default(),
            listener_handles,
            received_header: None,
            _slot: slot,
        }
    }

    /// True when waiting for a new request with nothing buffered (an idle
    /// keep-alive connection, closed at once by soft-stop).
    pub(crate) fn is_idle(&self) -> bool {
        self.phase == Phase::Head && self.front_in.is_empty() && self.request.is_none()
    }

    /// The backend socket's token, if any.
    pub(crate) fn back_token(&self) -> Option<mio::Token> {
        self.back.as_ref().map(|b| b.side.token)
    }

    /// Notes readiness of the backend socket.
    pub(crate) fn back_ready(&mut self, readable: bool, writable: bool) {
        if let Some(back) = self.back.as_mut() {
            back.side.readable |= readable;
            back.side.writable |= writable;
        }
    }

    /// The next deadline.
    pub(crate) fn deadline(&self) -> Instant {
        self.due().0
    }

    fn due(&self) -> (Instant, Due) {
        let front_idle = self.front.last_activity + self.timeouts.front;
        match self.phase {
            Phase::ExpectProxy => (front_idle, Due::Idle),
            Phase::Head => match self.head_started {
                Some(started) => (started + self.timeouts.request, Due::Request),
                None => (front_idle, Due::Idle),
            },
            Phase::Connecting => (
                self.connect_started.unwrap_or(self.front.last_activity) + self.timeouts.connect,
                Due::Connect,
            ),
            Phase::Exchange => {
                let back_last = self
                    .back
                    .as_ref()
                    .map_or(self.front.last_activity, |b| b.side.last_activity);
                let back_idle = back_last + self.timeouts.back;
                let responding = self.exchange.as_ref().is_some_and(|e| e.response.is_some());
                if !responding {
                    (back_idle, Due::Backend)
                } else if back_idle < front_idle {
                    (back_idle, Due::Back)
                } else {
                    (front_idle, Due::Front)
                }
            }
            Phase::Answer => (front_idle, Due::Close),
            Phase::Linger => (self.linger_until.unwrap_or(front_idle), Due::Close),
        }
    }

    /// Handles a passed deadline (a default answer, a retry, or the end).
    pub(crate) fn on_timeout(
        &mut self,
        now: Instant,
        env: &mut Env<'_, '_>,
    ) -> Result<(), SessionEnd> {
        let (deadline, due) = self.due();
        if deadline > now {
            return Ok(());
        }
        match due {
            Due::Idle => Err(SessionEnd::IdleTimeout),
            Due::Close => Err(SessionEnd::Completed),
            Due::Request => {
                count(env.ctx.metrics, self.listener_handles.timeouts, 1);
                self.answer(408, "request_timeout", now, env);
                self.drive(now, env)
            }
            Due::Connect => {
                self.connect_failed(now, env, "connect timeout");
                self.drive(now, env)
            }
            Due::Backend => {
                if self.exchange.as_ref().is_some_and(|e| e.wrote_to_client) {
                    return Err(SessionEnd::BackTimeout);
                }
                self.answer(504, "backend_timeout", now, env);
                self.drive(now, env)
            }
            Due::Front => Err(SessionEnd::FrontTimeout),
            Due::Back => Err(SessionEnd::BackTimeout),
        }
    }

    /// Moves everything that can move now. `Err`: close the connection.
    pub(crate) fn drive(&mut self, now: Instant, env: &mut Env<'_, '_>) -> Result<(), SessionEnd> {
        loop {
            let mut progress = self.read_client(now)?;
            match self.phase {
                Phase::ExpectProxy => progress |= self.read_proxy_header()?,
                Phase::Head => progress |= self.on_head(now, env)?,
                Phase::Connecting => progress |= self.check_connect(now, env),
                Phase::Exchange => progress |= self.exchange_io(now, env)?,
                Phase::Answer => progress |= self.write_answer(now)?,
                Phase::Linger => {
                    if self.front.read_closed {
                        return Err(SessionEnd::Completed);
                    }
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    fn read_client(&mut self, now: Instant) -> Result<bool, SessionEnd> {
        if self.phase == Phase::Linger {
            // Discard: the answer is out, nothing more is served.
            let mut scratch = [0u8; 4096];
            let mut progress = false;
            loop {
                match self.front.read_into(&mut scratch, now) {
                    Ok(ReadOutcome::Read(_)) => progress = true,
                    Ok(ReadOutcome::Closed) | Err(_) => return Err(SessionEnd::Completed),
                    Ok(ReadOutcome::Idle) => return Ok(progress),
                }
            }
        }
        if self.phase == Phase::Answer {
            return Ok(false);
        }
        match self.front.read_into(self.front_in.space(), now) {
            Ok(ReadOutcome::Read(n)) => {
                self.front_in.fill(n);
                Ok(true)
            }
            Ok(ReadOutcome::Closed) => Ok(true),
            Ok(ReadOutcome::Idle) => Ok(false),
            Err(error) => {
                tracing::debug!(client = %self.client, %error, "client read failed");
                Err(SessionEnd::ClientAborted)
            }
        }
    }

    fn read_proxy_header(&mut self) -> Result<bool, SessionEnd> {
        match proxy_protocol::parse(self.front_in.data()) {
            Ok(Some(header)) => {
                self.received_header = Some(self.front_in.data()[..header.len].to_vec());
                self.front_in.consume(header.len);
                if let Some(source) = header.source {
                    self.client = source;
                }
                self.phase = Phase::Head;
                Ok(true)
            }
            Ok(None) if self.front.read_closed || self.front_in.is_full() => {
                Err(SessionEnd::ProxyHeaderInvalid)
            }
            Ok(None) => Ok(false),
            Err(error) => {
                tracing::debug!(client = %self.client, %error, "bad PROXY header");
                Err(SessionEnd::ProxyHeaderInvalid)
            }
        }
    }

    // ----- requests -----

    fn on_head(&mut self, now: Instant, env: &mut Env<'_, '_>) -> Result<bool, SessionEnd> {
        self.watch_idle_backend(now, env);
        if self.front_in.is_empty() {
            return if self.front.read_closed {
                Err(SessionEnd::Completed)
            } else {
                Ok(false)
            };
        }
        if self.head_started.is_none() {
            self.head_started = Some(now);
        }
        // The address the client actually reached (a wildcard listener
        // has no useful IP of its own) for `by=` and `X-Forwarded-Port`.
        let info = ForwardInfo {
            client: self.client,
            listener: self
                .front
                .stream
                .local_addr()
                .unwrap_or(self.listener_address),
            tls: self.front.is_tls(),
        };
        match head::parse_request(self.front_in.data(), &info) {
            Ok(Some(request)) => {
                self.on_request(request, now, env);
                Ok(true)
            }
            Ok(None) if self.front_in.is_full() => {
                self.answer(
                    head::RequestError::TooLarge.status(),
                    "head_too_large",
                    now,
                    env,
                );
                Ok(true)
            }
            Ok(None) if self.front.read_closed => Err(SessionEnd::ClientAborted),
            Ok(None) => Ok(false),
            Err(error) => {
                tracing::debug!(client = %self.client, %error, "request refused");
                self.answer(error.status(), "bad_request", now, env);
                Ok(true)
            }
        }
    }

    /// An idle kept backend connection that closes (or talks out of turn)
    /// is dropped.
    fn watch_idle_backend(&mut self, now: Instant, env: &mut Env<'_, '_>) {
        let Some(back) = self.back.as_mut() else {
            return;
        };
        let mut scratch = [0u8; 1];
        match back.side.read_into(&mut scratch, now) {
            Ok(ReadOutcome::Idle) => {}
            _ => self.drop_backend(env),
        }
    }

    fn on_request(&mut self, request: head::Request, now: Instant, env: &mut Env<'_, '_>) {
        self.front_in.consume(request.head_len);
        let started = self.head_started.take().unwrap_or(now);
        self.request = Some(RequestInfo {
            method: request.method.clone(),
            target: request.target.clone(),
            host: request.host.clone(),
            started,
            bytes_in: request.head_len as u64,
        });
        let route = env
            .router
            .and_then(|r| r.lookup(&request.host, &request.target, &request.method))
            .cloned();
        let (cluster, tags, frontend_hsts) = match route {
            None => {
                self.answer(404, "no_route", now, env);
                return;
            }
            Some(RouteTarget::Deny) => {
                self.answer(401, "denied", now, env);
                return;
            }
            Some(RouteTarget::Redirect {
                status,
                scheme,
                cluster,
            }) => {
                let tls = self.front.is_tls();
                let scheme = match scheme {
                    Scheme::Https => "https",
                    Scheme::Http => "http",
                    Scheme::Same if tls => "https",
                    Scheme::Same => "http",
                };
                // The cluster's `https_redirect_port` goes in an https
                // Location.
                let port = cluster
                    .as_ref()
                    .and_then(|c| env.features.cluster(c.as_str())?.https_redirect_port)
                    .filter(|_| scheme == "https");
                match features::redirect_location(scheme, &request.host, port, &request.target) {
                    Some(location) => self.answer_with(
                        status,
                        "redirect",
                        Some(&location),
                        cluster.as_ref(),
                        now,
                        env,
                    ),
                    None => self.answer(400, "bad_request", now, env),
                }
                return;
            }
            Some(RouteTarget::Cluster {
                cluster,
                tags,
                hsts,
            }) => (cluster, tags, hsts),
        };
        let features: &HttpFeatures = env.features;
        // RFC 6797 §7.2: never over plain HTTP.
        let hsts = if self.front.is_tls() {
            frontend_hsts.resolve(features.listener_hsts(self.listener_address))
        } else {
            None
        };
        let cluster_features = features.cluster(cluster.as_str());
        // Over TLS (an HTTPS listener) the client is already where the
        // redirect would send it: answering 301 would loop.
        if !self.front.is_tls() && cluster_features.is_some_and(|c| c.https_redirect) {
            let port = cluster_features.and_then(|c| c.https_redirect_port);
            match features::redirect_location("https", &request.host, port, &request.target) {
                Some(location) => self.answer_with(
                    301,
                    "https_redirect",
                    Some(&location),
                    Some(&cluster),
                    now,
                    env,
                ),
                None => self.answer(400, "bad_request", now, env),
            }
            return;
        }
        let sticky_name = features
            .listener(self.listener_address)
            .map_or(DEFAULT_STICKY_NAME, |l| l.sticky_name.as_str());
        let sticky = cluster_features
            .filter(|c| c.sticky_session)
            .and_then(|_| features::cookie_value(&request.cookies, sticky_name))
            .map(str::to_owned);
        // The sticky cookie is the proxy's: the backend never sees it.
        let request_head =
            features::strip_cookie(&request.forwarded, sticky_name).unwrap_or(request.forwarded);
        let sticky_backend = sticky
            .as_deref()
            .and_then(|v| cluster_features?.backend_for(v));
        let cluster_handles = env.handles.cluster(env.ctx.metrics, &cluster);
        let reuse = self.back.as_ref().is_some_and(|b| {
            b.cluster == cluster
                && b.connected
                && !b.side.read_closed
                && !b.side.write_closed
                && sticky_backend.is_none_or(|s| *s == b.backend)
        });
        let backend_handles = if reuse {
            self.back
                .as_ref()
                .map(|b| env.handles.backend(env.ctx.metrics, &b.cluster, &b.backend))
        } else {
            None
        };
        self.exchange = Some(Exchange {
            version: request.version,
            keep_alive: request.keep_alive,
            cluster,
            tags,
            hsts,
            cluster_handles,
            backend_handles,
            request_head,
            request_body: BodyTracker::new(request.body),
            req_forwardable: 0,
            response: None,
            resp_forwardable: 0,
            bytes_out: 0,
            wrote_to_client: false,
            reused: reuse,
            body_forwarded: 0,
            sticky,
            upgrade: request.upgrade.is_some(),
        });
        if reuse {
            self.back_out = self
                .exchange
                .as_ref()
                .map(|e| e.request_head.clone())
                .unwrap_or_default();
            self.back_out_sent = 0;
            self.phase = Phase::Exchange;
        } else {
            self.drop_backend(env);
            self.attempt = 0;
            self.connect_started = Some(now);
            self.connect(now, env);
        }
    }

    fn connect(&mut self, now: Instant, env: &mut Env<'_, '_>) {
        let Some(exchange) = self.exchange.as_ref() else {
            return;
        };
        let cluster = exchange.cluster.clone();
        let affinity = stable_hash(self.client.ip().to_canonical().to_string().as_bytes());
        // A sticky cookie naming a backend that is up: that backend first
        // (once); otherwise balanced as usual, and the response re-stamped.
        let features: &HttpFeatures = env.features;
        let preferred = exchange
            .sticky
            .as_deref()
            .filter(|_| self.attempt == 0)
            .and_then(|v| features.cluster(cluster.as_str())?.backend_for(v))
            .and_then(|b| connect_preferred(env.ctx.backends, &cluster, b));
        let chosen = match preferred {
            Some(connecting) => Ok(connecting),
            None => connect_backend(env.ctx.backends, &cluster, affinity, self.attempt + 1),
        };
        match chosen {
            Ok(connecting) => {
                let token = env.ctx.tokens.insert(HttpToken::Back(env.key));
                let mut side = Side::new(connecting.stream, token, now);
                side.readable = false;
                side.writable = false;
                if let Err(error) = side.register(env.ctx.registry) {
                    tracing::warn!(%error, "registering a backend connection");
                    env.ctx.tokens.remove(token);
                    self.attempt = MAX_CONNECT_ATTEMPTS;
                    count(env.ctx.metrics, exchange.cluster_handles.no_backend, 1);
                    self.answer(503, "connect_failed", now, env);
                    return;
                }
                self.attempt = connecting.attempt;
                // Each attempt gets its own `connect_timeout`.
                self.connect_started = Some(now);
                let mut out = Vec::with_capacity(exchange.request_head.len() + 64);
                let knobs = env
                    .clusters
                    .get(cluster.as_str())
                    .copied()
                    .unwrap_or_default();
                match knobs.proxy_protocol {
                    Some(ProxyProtocolConfig::SendHeader) => out.extend_from_slice(
                        StreamProxyHeader::new(self.client, self.listener_address).as_bytes(),
                    ),
                    Some(ProxyProtocolConfig::RelayHeader) => match &self.received_header {
                        Some(h) => out.extend_from_slice(h),
                        None => out.extend_from_slice(
                            StreamProxyHeader::new(self.client, self.listener_address).as_bytes(),
                        ),
                    },
                    _ => {}
                }
                out.extend_from_slice(&exchange.request_head);
                self.back_out = out;
                self.back_out_sent = 0;
                self.back = Some(BackConn {
                    side,
                    cluster,
                    backend: connecting.backend,
                    address: connecting.address,
                    connected: false,
                    flow_counted: false,
                });
                self.phase = Phase::Connecting;
            }
            Err(ConnectError::NoBackend { .. }) => {
                count(env.ctx.metrics, exchange.cluster_handles.no_backend, 1);
                self.answer(503, "no_backend", now, env);
            }
            Err(ConnectError::Failed { backend, .. }) => {
                let handles = env.handles.backend(env.ctx.metrics, &cluster, &backend);
                count(env.ctx.metrics, handles.connect_failed, 1);
                count(env.ctx.metrics, exchange.cluster_handles.no_backend, 1);
                self.answer(503, "connect_failed", now, env);
            }
        }
    }

    fn check_connect(&mut self, now: Instant, env: &mut Env<'_, '_>) -> bool {
        let Some(back) = self.back.as_mut() else {
            return false;
        };
        if !(back.side.readable || back.side.writable) {
            return false;
        }
        match connect_state(&back.side.stream) {
            ConnectState::Pending => {
                back.side.readable = false;
                back.side.writable = false;
                false
            }
            ConnectState::Connected => {
                back.connected = true;
                back.side.readable = true;
                back.side.writable = true;
                back.side.last_activity = now;
                let (cluster, backend) = (back.cluster.as_str(), back.backend.as_str());
                env.ctx.backends.mark_responsive(cluster, backend);
                back.flow_counted = env.ctx.backends.flow_opened(cluster, backend);
                let handles = env
                    .handles
                    .backend(env.ctx.metrics, &back.cluster, &back.backend);
                count(env.ctx.metrics, handles.backend_connections, 1);
                if let Some(exchange) = self.exchange.as_mut() {
                    exchange.backend_handles = Some(handles);
                }
                self.phase = Phase::Exchange;
                true
            }
            ConnectState::Failed(error) => {
                let reason = error.to_string();
                self.connect_failed(now, env, &reason);
                true
            }
        }
    }

    /// A connect failed or timed out: try another backend, or answer 503.
    fn connect_failed(&mut self, now: Instant, env: &mut Env<'_, '_>, reason: &str) {
        if let Some(back) = self.back.as_ref() {
            tracing::debug!(client = %self.client, cluster = %back.cluster, backend = %back.backend, address = %back.address, reason, "HTTP backend connect failed");
            let (cluster, backend) = (back.cluster.as_str(), back.backend.as_str());
            if env.ctx.backends.mark_suspect(cluster, backend) {
                env.ctx.health.passive_failure(now, cluster, backend);
            }
            let handles = env
                .handles
                .backend(env.ctx.metrics, &back.cluster, &back.backend);
            count(env.ctx.metrics, handles.connect_failed, 1);
        }
        self.drop_backend(env);
        if self.attempt >= MAX_CONNECT_ATTEMPTS {
            if let Some(exchange) = self.exchange.as_ref() {
                count(env.ctx.metrics, exchange.cluster_handles.no_backend, 1);
            }
            self.answer(503, "connect_failed", now, env);
        } else {
            self.connect(now, env);
        }
    }

    // ----- the proxy's own answers -----

    /// Answers `status` with a default answer, then closes. `outcome` names
    /// why in the access record. Facts go to the backend's scope if one was
    /// involved, else the cluster's, else the listener's.
    fn answer(&mut self, status: u16, outcome: &str, now: Instant, env: &mut Env<'_, '_>) {
        self.answer_with(status, outcome, None, None, now, env);
    }

    /// [`Session::answer`] with the cluster's custom answer for `status`
    /// (the exchange's cluster, else `cluster`: a request answered before
    /// it was forwarded), else the listener's, else the default one (for a
    /// redirect, to `location`). A custom answer gets its template
    /// variables spliced in.
    fn answer_with(
        &mut self,
        status: u16,
        outcome: &str,
        location: Option<&str>,
        cluster: Option<&ClusterId>,
        now: Instant,
        env: &mut Env<'_, '_>,
    ) {
        let exchange = self.exchange.take();
        if exchange.as_ref().is_some_and(|e| e.wrote_to_client) {
            // Too late for an answer: the response already started.
            self.drop_backend(env);
            self.front_out.clear();
            self.front_out_sent = 0;
            self.start_linger(now);
            return;
        }
        let request = self.request.take();
        let features: &HttpFeatures = env.features;
        let cluster = exchange.as_ref().map(|e| &e.cluster).or(cluster);
        let template = cluster
            .and_then(|c| features.cluster(c.as_str())?.answers.get(status))
            .or_else(|| {
                features
                    .listener(self.listener_address)?
                    .answers
                    .get(status)
            });
        let duration = request
            .as_ref()
            .map_or(Duration::ZERO, |r| now.saturating_duration_since(r.started));
        let request_id = next_request_id();
        let rendered: Option<Vec<u8>> = match (template, location) {
            (Some(template), _) => {
                let route = request
                    .as_ref()
                    .map(|r| format!("{}{}", r.host, r.target))
                    .unwrap_or_default();
                let backend_id = self.back.as_ref().map(|b| b.backend.as_str());
                let values = AnswerValues {
                    route: &route,
                    request_id: &request_id,
                    cluster_id: cluster.map_or("", |c| c.as_str()),
                    backend_id: backend_id.unwrap_or_default(),
                    duration: &format!("{}ms", duration.as_millis()),
                    capacity: &self.front_in.capacity().to_string(),
                    phase: phase_of(outcome),
                    redirect_location: location.unwrap_or_default(),
                    message: message_of(outcome),
                };
                Some(template.render(&values))
            }
            (None, Some(location)) => Some(features::redirect_answer(status, location)),
            (None, None) => None,
        };
        let bytes: &[u8] = rendered.as_deref().unwrap_or(default_answer(status));
        let bytes_in = request
            .as_ref()
            .map_or(self.front_in.len() as u64, |r| r.bytes_in);
        let backend_handles = exchange.as_ref().and_then(|e| e.backend_handles);
        let handles = match (&exchange, backend_handles) {
            (_, Some(h)) => h,
            (Some(e), None) => e.cluster_handles,
            (None, None) => self.listener_handles,
        };
        handles.request(
            env.ctx.metrics,
            status,
            bytes_in,
            bytes.len() as u64,
            duration,
        );
        let backend = self
            .back
            .as_ref()
            .filter(|_| backend_handles.is_some())
            .map(|b| (&b.backend, b.address));
        HttpAccessRecord {
            listener: self.listener_address,
            client: self.client,
            method: request.as_ref().map_or("-", |r| r.method.as_str()),
            host: request.as_ref().map_or("-", |r| r.host.as_str()),
            path: request.as_ref().map_or("-", |r| r.target.as_str()),
            status: Some(status),
            cluster,
            backend,
            tags: exchange.as_ref().and_then(|e| e.tags.as_deref()),
            bytes_in,
            bytes_out: bytes.len() as u64,
            duration,
            outcome,
            request_id: Some(&request_id),
        }
        .emit();
        self.drop_backend(env);
        self.front_out.clear();
        self.front_out.extend_from_slice(bytes);
        if self.front.is_tls() {
            // The exchange's policy once a frontend was chosen, else the
            // listener's (a request answered before or without routing).
            let hsts = match &exchange {
                Some(e) => e.hsts.as_ref(),
                None => features.listener_hsts(self.listener_address),
            };
            if let Some(hsts) = hsts {
                hsts.stamp(&mut self.front_out);
            }
        }
        self.front_out_sent = 0;
        self.head_started = None;
        self.phase = Phase::Answer;
    }

    fn write_answer(&mut self, now: Instant) -> Result<bool, SessionEnd> {
        let n = self
            .front
            .write_from(&self.front_out[self.front_out_sent..], now)
            .map_err(|_| SessionEnd::ClientAborted)?;
        self.front_out_sent += n;
        if self.front_out_sent == self.front_out.len() {
            self.front_out.clear();
            self.front_out_sent = 0;
            self.start_linger(now);
            return Ok(true);
        }
        Ok(n > 0)
    }

    fn start_linger(&mut self, now: Instant) {
        self.front.shutdown_write();
        self.front_in.clear();
        self.linger_until = Some(now + LINGER);
        self.phase = Phase::Linger;
    }

    // ----- teardown -----

    fn drop_backend(&mut self, env: &mut Env<'_, '_>) {
        if let Some(mut back) = self.back.take() {
            back.side.deregister(env.ctx.registry);
            env.ctx.tokens.remove(back.side.token);
            if back.flow_counted {
                env.ctx
                    .backends
                    .flow_closed(back.cluster.as_str(), back.backend.as_str());
            }
        }
        self.back_in.clear();
        self.back_out.clear();
        self.back_out_sent = 0;
    }

    /// Closes both sockets; a request cut short gets its access record.
    pub(crate) fn teardown(&mut self, now: Instant, end: SessionEnd, env: &mut Env<'_, '_>) {
        if let (Some(exchange), Some(request)) = (self.exchange.take(), self.request.take()) {
            HttpAccessRecord {
                listener: self.listener_address,
                client: self.client,
                method: &request.method,
                host: &request.host,
                path: &request.target,
                status: exchange.response.as_ref().map(|r| r.status),
                cluster: Some(&exchange.cluster),
                backend: self.back.as_ref().map(|b| (&b.backend, b.address)),
                tags: exchange.tags.as_deref(),
                bytes_in: request.bytes_in,
                bytes_out: exchange.bytes_out,
                duration: now.saturating_duration_since(request.started),
                outcome: end.as_str(),
                request_id: None,
            }
            .emit();
        }
        self.drop_backend(env);
        self.front.deregister(env.ctx.registry);
        env.ctx.tokens.remove(self.front.token);
        gauge_add(env.ctx.metrics, self.listener_handles.active, -1);
        if end.is_timeout() {
            count(env.ctx.metrics, self.listener_handles.timeouts, 1);
        }
        tracing::debug!(client = %self.client, end = end.as_str(), "HTTP connection closed");
    }
}

/// A fresh `%REQUEST_ID`: the process id and a per-process counter, in hex
/// (unique within one run of one worker).
fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}{n:016x}", std::process::id())
}

/// `%MESSAGE`: why the proxy answered, in words.
fn message_of(outcome: &str) -> &'static str {
    match outcome {
        "no_route" => "No route matches this request.",
        "denied" => "This route is denied.",
        "bad_request" => "The request head could not be parsed.",
        "bad_request_body" => "The request body framing is invalid.",
        "head_too_large" => "The request head is too large.",
        "request_timeout" => "The request was not received in time.",
        "no_backend" => "No backend is available for this cluster.",
        "connect_failed" => "No backend could be reached.",
        "backend_timeout" => "The backend did not answer in time.",
        "https_redirect" => "This site is served over HTTPS.",
        "redirect" => "This resource is elsewhere.",
        _ => "The backend's response could not be relayed.",
    }
}

/// `%PHASE`: where parsing stopped, in Sōzu's words.
fn phase_of(outcome: &str) -> &'static str {
    match outcome {
        "bad_request" | "head_too_large" => "Headers",
        "bad_request_body" => "Body",
        _ => "",
    }
}
