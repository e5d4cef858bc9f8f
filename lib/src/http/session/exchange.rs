//! The exchange half of an HTTP connection: the request head and body to
//! the backend, the response head and body back to the client, and what
//! happens when the response is complete (keep or close each side).
//!
//! Part of [`super::Session`] (split out for size); it never answers on its
//! own behalf except through the session's `answer` (502) and never
//! registers sockets except through the session's `connect` (a retry).

use std::time::{Duration, Instant};

use crate::stream::socket::ReadOutcome;

use super::super::access::HttpAccessRecord;
use super::super::features::{stamp_cookie, HttpFeatures, DEFAULT_STICKY_NAME};
use super::{Env, Phase, ResponseState, Session, SessionEnd};
use crate::protocol::http::body::{BodyKind, BodyTracker};
use crate::protocol::http::head;

impl Session {
    pub(super) fn exchange_io(
        &mut self,
        now: Instant,
        env: &mut Env<'_, '_>,
    ) -> Result<bool, SessionEnd> {
        let (Some(exchange), Some(back)) = (self.exchange.as_mut(), self.back.as_mut()) else {
            return Ok(false);
        };
        let mut progress = false;
        let mut backend_failed = false;
        // Request head, then body, to the backend.
        if self.back_out_sent < self.back_out.len() {
            match back
                .side
                .write_from(&self.back_out[self.back_out_sent..], now)
            {
                Ok(n) => {
                    self.back_out_sent += n;
                    progress |= n > 0;
                }
                Err(_) => back.side.write_closed = true,
            }
        }
        if self.back_out_sent == self.back_out.len() {
            let fresh = &self.front_in.data()[exchange.req_forwardable..];
            match exchange.request_body.feed(fresh) {
                Ok(n) => exchange.req_forwardable += n,
                Err(error) => {
                    tracing::debug!(client = %self.client, %error, "bad request body framing");
                    if exchange.wrote_to_client {
                        return Err(SessionEnd::ClientAborted);
                    }
                    self.answer(400, "bad_request_body", now, env);
                    return Ok(true);
                }
            }
            if exchange.req_forwardable > 0 {
                match back
                    .side
                    .write_from(&self.front_in.data()[..exchange.req_forwardable], now)
                {
                    Ok(n) => {
                        self.front_in.consume(n);
                        exchange.req_forwardable -= n;
                        exchange.body_forwarded += n as u64;
                        if let Some(r) = self.request.as_mut() {
                            r.bytes_in += n as u64;
                        }
                        progress |= n > 0;
                    }
                    // The backend stopped reading (it may have answered
                    // early, e.g. 413): stop writing, still read its answer.
                    Err(_) => back.side.write_closed = true,
                }
            }
            if self.front.read_closed
                && exchange.response.as_ref().is_some_and(|r| r.upgraded)
                && exchange.req_forwardable == 0
            {
                // The client ended a tunnel (WebSocket…): its bytes are
                // all out, nothing more will come either way that it
                // could read.
                return Err(SessionEnd::Completed);
            }
            if self.front.read_closed
                && !exchange.request_body.is_done()
                && exchange.req_forwardable == 0
            {
                // The client left in the middle of its request.
                return Err(SessionEnd::ClientAborted);
            }
        }
        // Response from the backend.
        {
            match back.side.read_into(self.back_in.space(), now) {
                Ok(ReadOutcome::Read(n)) => {
                    self.back_in.fill(n);
                    progress = true;
                }
                Ok(ReadOutcome::Closed) => progress = true,
                Ok(ReadOutcome::Idle) => {}
                Err(_) => backend_failed = true,
            }
        }
        if exchange.response.is_none() {
            let gone = backend_failed || (back.side.read_closed && self.back_in.is_empty());
            if gone && exchange.reused && exchange.body_forwarded == 0 && !exchange.wrote_to_client
            {
                // A kept connection the backend closed while idle (its
                // keep-alive timeout raced our request): nothing of the
                // request body was sent and nothing answered, so send the
                // request again on a fresh connection, once.
                tracing::debug!(client = %self.client, "kept backend connection closed: retrying on a new one");
                exchange.reused = false;
                self.drop_backend(env);
                self.attempt = 0;
                self.connect_started = Some(now);
                self.connect(now, env);
                return Ok(true);
            }
            if backend_failed {
                return self.backend_error(now, env, "backend_error");
            }
            let method = self.request.as_ref().map_or("GET", |r| r.method.as_str());
            let client_keep_alive = exchange.keep_alive && !env.draining && !self.front.read_closed;
            match head::parse_response_to(
                self.back_in.data(),
                method,
                client_keep_alive,
                exchange.upgrade,
            ) {
                Ok(Some(mut response)) => {
                    self.back_in.consume(response.head_len);
                    if response.interim {
                        if exchange.version == 1 {
                            self.front_out.extend_from_slice(&response.forwarded);
                        }
                    } else {
                        let features: &HttpFeatures = env.features;
                        if let Some(c) = features
                            .cluster(exchange.cluster.as_str())
                            .filter(|c| c.sticky_session)
                        {
                            // Stamp the backend that answered unless the
                            // client's cookie already names it.
                            let id = c.sticky_id_of(&back.backend);
                            if exchange.sticky.as_deref() != Some(id) {
                                let name = features
                                    .listener(self.listener_address)
                                    .map_or(DEFAULT_STICKY_NAME, |l| l.sticky_name.as_str());
                                stamp_cookie(&mut response.forwarded, name, id);
                            }
                        }
                        if let Some(hsts) = &exchange.hsts {
                            hsts.stamp(&mut response.forwarded);
                        }
                        self.front_out.extend_from_slice(&response.forwarded);
                        if response.upgraded {
                            // After a 101 the connection is a tunnel: the
                            // client's bytes flow until it closes.
                            exchange.request_body = BodyTracker::new(BodyKind::UntilClose);
                        }
                        exchange.response = Some(ResponseState {
                            status: response.status,
                            body: BodyTracker::new(response.body),
                            close_client: response.close_client,
                            backend_keep_alive: response.backend_keep_alive,
                            upgraded: response.upgraded,
                        });
                    }
                    progress = true;
                }
                Ok(None) if self.back_in.is_full() => {
                    return self.backend_error(now, env, "response_head_too_large");
                }
                Ok(None) if back.side.read_closed => {
                    return self.backend_error(now, env, "backend_closed");
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(client = %self.client, %error, "bad response head");
                    return self.backend_error(now, env, "bad_response");
                }
            }
        }
        if let Some(response) = exchange.response.as_mut() {
            let fresh = &self.back_in.data()[exchange.resp_forwardable..];
            match response.body.feed(fresh) {
                Ok(n) => exchange.resp_forwardable += n,
                Err(error) => {
                    tracing::debug!(client = %self.client, %error, "bad response body framing");
                    return Err(SessionEnd::BackendAborted);
                }
            }
        }
        // To the client: heads first, then the response body.
        if self.front_out_sent < self.front_out.len() {
            let n = self
                .front
                .write_from(&self.front_out[self.front_out_sent..], now)
                .map_err(|_| SessionEnd::ClientAborted)?;
            self.front_out_sent += n;
            exchange.bytes_out += n as u64;
            exchange.wrote_to_client |= n > 0;
            progress |= n > 0;
            if self.front_out_sent == self.front_out.len() {
                self.front_out.clear();
                self.front_out_sent = 0;
            }
        }
        if self.front_out.is_empty() && exchange.resp_forwardable > 0 {
            let n = self
                .front
                .write_from(&self.back_in.data()[..exchange.resp_forwardable], now)
                .map_err(|_| SessionEnd::ClientAborted)?;
            self.back_in.consume(n);
            exchange.resp_forwardable -= n;
            exchange.bytes_out += n as u64;
            exchange.wrote_to_client |= n > 0;
            progress |= n > 0;
        }
        let Some(response) = exchange.response.as_ref() else {
            return Ok(progress);
        };
        let all_written = self.front_out.is_empty() && exchange.resp_forwardable == 0;
        let ended_by_close =
            response.body.is_until_close() && back.side.read_closed && self.back_in.is_empty();
        if all_written && (response.body.is_done() || ended_by_close) {
            self.finish_exchange(now, env);
            return Ok(true);
        }
        let truncated = back.side.read_closed
            && !response.body.is_until_close()
            && all_written
            && self.back_in.is_empty();
        if backend_failed || truncated {
            return Err(SessionEnd::BackendAborted);
        }
        Ok(progress)
    }

    /// The backend failed before the response started: 502 to the client
    /// if nothing was sent yet, else cut.
    fn backend_error(
        &mut self,
        now: Instant,
        env: &mut Env<'_, '_>,
        outcome: &str,
    ) -> Result<bool, SessionEnd> {
        if let Some(back) = self.back.as_ref() {
            env.ctx
                .backends
                .mark_suspect(back.cluster.as_str(), back.backend.as_str());
        }
        if self.exchange.as_ref().is_some_and(|e| e.wrote_to_client) {
            return Err(SessionEnd::BackendAborted);
        }
        self.answer(502, outcome, now, env);
        Ok(true)
    }

    fn finish_exchange(&mut self, now: Instant, env: &mut Env<'_, '_>) {
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        let Some(response) = exchange.response.as_ref() else {
            return;
        };
        let request = self.request.take();
        let duration = request
            .as_ref()
            .map_or(Duration::ZERO, |r| now.saturating_duration_since(r.started));
        let bytes_in = request.as_ref().map_or(0, |r| r.bytes_in);
        let handles = exchange.backend_handles.unwrap_or(exchange.cluster_handles);
        handles.request(
            env.ctx.metrics,
            response.status,
            bytes_in,
            exchange.bytes_out,
            duration,
        );
        let backend = self.back.as_ref().map(|b| (&b.backend, b.address));
        HttpAccessRecord {
            listener: self.listener_address,
            client: self.client,
            method: request.as_ref().map_or("-", |r| r.method.as_str()),
            host: request.as_ref().map_or("-", |r| r.host.as_str()),
            path: request.as_ref().map_or("-", |r| r.target.as_str()),
            status: Some(response.status),
            cluster: Some(&exchange.cluster),
            backend,
            tags: exchange.tags.as_deref(),
            bytes_in,
            bytes_out: exchange.bytes_out,
            duration,
            outcome: "backend",
            request_id: None,
        }
        .emit();
        let request_complete = exchange.request_body.is_done();
        let keep_back = response.backend_keep_alive
            && request_complete
            && self.back_in.is_empty()
            && self.back.as_ref().is_some_and(|b| !b.side.read_closed);
        if !keep_back {
            self.drop_backend(env);
        }
        let keep_client = exchange.keep_alive
            && !response.close_client
            && request_complete
            && !env.draining
            && !self.front.read_closed;
        if keep_client {
            self.phase = Phase::Head;
        } else {
            self.start_linger(now);
        }
    }
}
