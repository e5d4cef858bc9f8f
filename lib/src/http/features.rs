//! What Sōzu's HTTP users configure beside routes: custom answers (per
//! listener, per cluster), `https_redirect`, and sticky sessions (the
//! listener's cookie name, each backend's `sticky_id`).
//!
//! Owns these settings, kept from the orders that carry them (listener
//! add / update, cluster add, backend add / remove) and lent to sessions
//! read-only in their `Env`. Pure data and byte building: no sockets, no
//! clock. The session decides when an answer, a redirect or a cookie is
//! due (`session.rs`, `session/exchange.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use sozu_command_lib::command::{Cluster, CustomHttpAnswers};

use crate::backends::BackendId;

use super::templates::AnswerTemplate;
use crate::protocol::http::hsts::Hsts;

/// Sōzu's default sticky cookie name.
pub(crate) const DEFAULT_STICKY_NAME: &str = "SOZUBALANCEID";

/// Custom answers by status, each a template cut once into parts (its
/// variables spliced in per request).
#[derive(Debug, Clone, Default)]
pub(crate) struct AnswerSet {
    by_status: HashMap<u16, Arc<AnswerTemplate>>,
}

impl AnswerSet {
    /// The answers of Sōzu's `http_answers` (`answer_NNN` fields) and its
    /// `answers` map (status code → template); the map wins on a clash.
    /// Keys of the map that are not a status code are ignored (logged).
    pub(crate) fn from_wire(
        fields: Option<&CustomHttpAnswers>,
        map: &BTreeMap<String, String>,
        legacy_503: Option<&str>,
    ) -> Self {
        let mut set = AnswerSet::default();
        if let Some(body) = legacy_503 {
            set.insert(503, body);
        }
        if let Some(a) = fields {
            let each = [
                (301, &a.answer_301),
                (400, &a.answer_400),
                (401, &a.answer_401),
                (404, &a.answer_404),
                (408, &a.answer_408),
                (413, &a.answer_413),
                (421, &a.answer_421),
                (429, &a.answer_429),
                (502, &a.answer_502),
                (503, &a.answer_503),
                (504, &a.answer_504),
                (507, &a.answer_507),
            ];
            for (status, template) in each {
                if let Some(template) = template {
                    set.insert(status, template);
                }
            }
        }
        for (key, template) in map {
            match key.trim().parse::<u16>() {
                Ok(status) if (100..=599).contains(&status) => set.insert(status, template),
                _ => tracing::warn!(key = %key, "custom answer key is not an HTTP status: ignored"),
            }
        }
        set
    }

    fn insert(&mut self, status: u16, template: &str) {
        let response = build_answer(status, template);
        self.by_status
            .insert(status, Arc::new(AnswerTemplate::new(status, &response)));
    }

    /// The custom answer for `status`, if one is configured.
    pub(crate) fn get(&self, status: u16) -> Option<&Arc<AnswerTemplate>> {
        self.by_status.get(&status)
    }
}

/// The reason phrase of the statuses the proxy answers with.
fn reason(status: u16) -> &'static str {
    match status {
        301 => "Moved Permanently",
        302 => "Found",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "Error",
    }
}

/// A complete response from an operator's template. A template that is a
/// whole response (`HTTP/1.1 404 Not Found`, headers, an empty line, the
/// body: Sōzu's answer files) keeps its status line and headers; anything
/// else is the body of a `text/html` answer with `status`. Either way the
/// proxy writes `Content-Length` (the body's exact size) and
/// `Connection: close` itself, dropping any the template carries, so a
/// template never frames a response wrongly. Lines may end in LF or CRLF.
pub(crate) fn build_answer(status: u16, template: &str) -> Vec<u8> {
    let parsed = template.starts_with("HTTP/").then(|| split_head(template));
    let (status_line, headers, body) = match parsed.flatten() {
        Some((head, body)) => {
            let mut lines = head.lines();
            let status_line = lines.next().unwrap_or_default().trim_end().to_owned();
            let headers: Vec<&str> = lines
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .filter(|l| {
                    let name = l.split(':').next().unwrap_or_default().trim();
                    !["content-length", "transfer-encoding", "connection"]
                        .iter()
                        .any(|h| name.eq_ignore_ascii_case(h))
                })
                .collect();
            (status_line, headers, body)
        }
        None => (
            format!("HTTP/1.1 {status} {}", reason(status)),
            vec![
                "Content-Type: text/html; charset=utf-8",
                "Cache-Control: no-cache",
            ],
            template,
        ),
    };
    let mut out = String::with_capacity(template.len() + 128);
    out.push_str(&status_line);
    out.push_str("\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    let _ = write!(
        out,
        "Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.push_str(body);
    let bytes = out.into_bytes();
    // A template whose head does not parse as a response is served as a
    // body instead: the proxy never sends a head it could not read itself.
    let mut scratch = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut scratch);
    match res.parse(&bytes) {
        Ok(httparse::Status::Complete(_)) => bytes,
        _ if parsed.is_some() => build_answer(status, &template.replace("HTTP/", "HTTP&#47;")),
        _ => default_shape(status),
    }
}

fn default_shape(status: u16) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        reason(status)
    )
    .into_bytes()
}

/// Splits a whole-response template at its first empty line.
fn split_head(template: &str) -> Option<(&str, &str)> {
    let crlf = template.find("\r\n\r\n").map(|i| (i, 4));
    let lf = template.find("\n\n").map(|i| (i, 2));
    let (at, len) = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some((&template[..at], &template[at + len..]))
}

/// The `SCHEME://HOST[:PORT]TARGET` of Sōzu's `https_redirect` (scheme
/// `https`) and of frontend redirects. `host` is the request's Host (its
/// port dropped); `port` the cluster's `https_redirect_port` (the scheme's
/// default, 443 or 80, is not written). `None` when the host or target
/// holds bytes that have no place in a Location header.
pub(crate) fn redirect_location(
    scheme: &str,
    host: &str,
    port: Option<u16>,
    target: &str,
) -> Option<String> {
    let name = crate::protocol::http::router::host_without_port(host);
    let host_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b));
    let target_ok = target.starts_with('/') && target.bytes().all(|b| b.is_ascii_graphic());
    if !host_ok || !target_ok {
        return None;
    }
    let mut location = format!("{scheme}://{name}");
    let default_port = if scheme == "https" { 443 } else { 80 };
    if let Some(port) = port.filter(|p| *p != default_port) {
        let _ = write!(location, ":{port}");
    }
    location.push_str(target);
    Some(location)
}

/// The default redirect answer (`status` 301, 302 or 308) to `location`
/// (checked by [`redirect_location`]).
pub(crate) fn redirect_answer(status: u16, location: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nLocation: {location}\r\nCache-Control: no-cache\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        reason(status)
    )
    .into_bytes()
}

/// A listener's settings beside its routes.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenerFeatures {
    /// Its custom answers.
    pub(crate) answers: AnswerSet,
    /// The sticky-session cookie name.
    pub(crate) sticky_name: String,
    /// An HTTPS listener's default HSTS policy (`hsts`), for frontends
    /// that set none.
    pub(crate) hsts: Option<Hsts>,
}

/// A cluster's HTTP settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterFeatures {
    /// Its custom answers (`answer_503`, `answers`).
    pub(crate) answers: AnswerSet,
    /// Answer plain-HTTP requests with a 301 to HTTPS.
    pub(crate) https_redirect: bool,
    /// The port written in the redirect (none: 443).
    pub(crate) https_redirect_port: Option<u16>,
    /// Stamp responses with the sticky cookie and honour it.
    pub(crate) sticky_session: bool,
    /// Each backend's sticky id (its `sticky_id`, else its id), in order
    /// of addition.
    sticky_ids: BTreeMap<BackendId, String>,
}

impl ClusterFeatures {
    /// The backend a sticky cookie value names.
    pub(crate) fn backend_for(&self, sticky: &str) -> Option<&BackendId> {
        self.sticky_ids
            .iter()
            .find(|(_, id)| id.as_str() == sticky)
            .map(|(backend, _)| backend)
    }

    /// The value that sends a client back to `backend`.
    pub(crate) fn sticky_id_of<'a>(&'a self, backend: &'a BackendId) -> &'a str {
        self.sticky_ids
            .get(backend)
            .map_or(backend.as_str(), String::as_str)
    }
}

/// Everything above, for one worker's HTTP proxy.
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpFeatures {
    listeners: HashMap<SocketAddr, ListenerFeatures>,
    clusters: HashMap<String, ClusterFeatures>,
}

impl HttpFeatures {
    /// A listener's settings, from its configuration.
    pub(crate) fn set_listener(
        &mut self,
        address: SocketAddr,
        http_answers: Option<&CustomHttpAnswers>,
        answers: &BTreeMap<String, String>,
        sticky_name: &str,
        hsts: Option<Hsts>,
    ) {
        let sticky_name = if sticky_name.is_empty() {
            DEFAULT_STICKY_NAME
        } else {
            sticky_name
        };
        self.listeners.insert(
            address,
            ListenerFeatures {
                answers: AnswerSet::from_wire(http_answers, answers, None),
                sticky_name: sticky_name.to_owned(),
                hsts,
            },
        );
    }

    /// Forgets a removed listener.
    pub(crate) fn remove_listener(&mut self, address: SocketAddr) {
        self.listeners.remove(&address);
    }

    /// A listener's settings.
    pub(crate) fn listener(&self, address: SocketAddr) -> Option<&ListenerFeatures> {
        self.listeners.get(&address)
    }

    /// An HTTPS listener's default HSTS policy.
    pub(crate) fn listener_hsts(&self, address: SocketAddr) -> Option<&Hsts> {
        self.listener(address)?.hsts.as_ref()
    }

    /// A cluster's settings, from its order (its backends' sticky ids
    /// kept).
    pub(crate) fn set_cluster(&mut self, cluster: &Cluster) {
        let entry = self.clusters.entry(cluster.cluster_id.clone()).or_default();
        entry.answers = AnswerSet::from_wire(None, &cluster.answers, cluster.answer_503.as_deref());
        entry.https_redirect = cluster.https_redirect;
        entry.https_redirect_port = cluster
            .https_redirect_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        entry.sticky_session = cluster.sticky_session;
    }

    /// Forgets a removed cluster.
    pub(crate) fn remove_cluster(&mut self, cluster: &str) {
        self.clusters.remove(cluster);
    }

    /// Notes a backend's sticky id.
    pub(crate) fn add_backend(&mut self, cluster: &str, backend: &str, sticky_id: Option<&str>) {
        let sticky = sticky_id.filter(|s| !s.is_empty()).unwrap_or(backend);
        self.clusters
            .entry(cluster.to_owned())
            .or_default()
            .sticky_ids
            .insert(BackendId::from(backend), sticky.to_owned());
    }

    /// Forgets a removed backend's sticky id.
    pub(crate) fn remove_backend(&mut self, cluster: &str, backend: &str) {
        if let Some(c) = self.clusters.get_mut(cluster) {
            c.sticky_ids.remove(backend);
        }
    }

    /// A cluster's settings.
    pub(crate) fn cluster(&self, cluster: &str) -> Option<&ClusterFeatures> {
        self.clusters.get(cluster)
    }
}

/// The value of cookie `name` in a request's `Cookie` headers, if any
/// (RFC 6265 §5.4: `a=1; b=2`, possibly several headers).
pub(crate) fn cookie_value<'a>(cookie_headers: &'a [String], name: &str) -> Option<&'a str> {
    cookie_headers
        .iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The request head to forward without cookie `name` (the sticky cookie
/// is the proxy's, not the backend's): every other cookie kept in order,
/// a `Cookie` header that holds nothing else removed. `None` when the head
/// has no such cookie (forwarded unchanged).
pub(crate) fn strip_cookie(head: &[u8], name: &str) -> Option<Vec<u8>> {
    let is_cookie = |line: &[u8]| line.len() > 7 && line[..7].eq_ignore_ascii_case(b"cookie:");
    let named = |pair: &str| pair.split_once('=').is_some_and(|(k, _)| k.trim() == name);
    let mentions = head
        .split(|b| *b == b'\n')
        .filter(|l| is_cookie(l))
        .any(|l| String::from_utf8_lossy(&l[7..]).split(';').any(named));
    if !mentions {
        return None;
    }
    let mut out = Vec::with_capacity(head.len());
    for line in head.split_inclusive(|b| *b == b'\n') {
        if !is_cookie(line) {
            out.extend_from_slice(line);
            continue;
        }
        let value = String::from_utf8_lossy(&line[7..]);
        let kept: Vec<&str> = value
            .trim_end_matches(['\r', '\n'])
            .split(';')
            .filter(|pair| !named(pair))
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .collect();
        if kept.is_empty() {
            continue;
        }
        out.extend_from_slice(b"Cookie: ");
        out.extend_from_slice(kept.join("; ").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Some(out)
}

/// Inserts `Set-Cookie: NAME=VALUE; Path=/` before the empty line that ends
/// a response head.
pub(crate) fn stamp_cookie(head: &mut Vec<u8>, name: &str, value: &str) {
    debug_assert!(head.ends_with(b"\r\n\r\n"), "a complete response head");
    let at = head.len().saturating_sub(2);
    let line = format!("Set-Cookie: {name}={value}; Path=/\r\n");
    head.splice(at..at, line.into_bytes());
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A response's status, lower-cased headers and body (also used by
    /// the answer template tests).
    pub(in crate::http) fn parse(bytes: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        let n = match res.parse(bytes).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        let headers = res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (res.code.unwrap(), headers, bytes[n..].to_vec())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn a_body_template_gets_our_status_line_and_its_exact_length() {
        let (status, headers, body) = parse(&build_answer(404, "<h1>nope é</h1>\n"));
        assert_eq!(status, 404);
        assert_eq!(body, "<h1>nope é</h1>\n".as_bytes());
        assert_eq!(header(&headers, "content-length"), vec!["17"]);
        assert_eq!(header(&headers, "connection"), vec!["close"]);
    }

    #[test]
    fn a_whole_response_template_keeps_its_head_and_gets_a_right_length() {
        let template = "HTTP/1.1 503 Maintenance\nContent-Type: text/plain\nContent-Length: 999\nConnection: keep-alive\n\nback soon";
        let (status, headers, body) = parse(&build_answer(503, template));
        assert_eq!(status, 503);
        assert_eq!(body, b"back soon");
        assert_eq!(header(&headers, "content-length"), vec!["9"]);
        assert_eq!(header(&headers, "connection"), vec!["close"]);
        assert_eq!(header(&headers, "content-type"), vec!["text/plain"]);
    }

    #[test]
    fn a_broken_head_template_is_served_as_a_body_never_as_a_bad_head() {
        let bytes = build_answer(404, "HTTP/1.1 four-oh-four\n\nx");
        let (status, headers, body) = parse(&bytes);
        assert_eq!(status, 404);
        let length: usize = header(&headers, "content-length")[0].parse().unwrap();
        assert_eq!(length, body.len());
    }

    #[test]
    fn answers_map_wins_over_fields_and_bad_keys_are_ignored() {
        let body =
            |t: &Arc<AnswerTemplate>| t.render(&crate::http::templates::AnswerValues::default());
        let fields = CustomHttpAnswers {
            answer_404: Some("fields".to_owned()),
            ..Default::default()
        };
        let mut map = BTreeMap::new();
        map.insert("404".to_owned(), "map".to_owned());
        map.insert("oops".to_owned(), "x".to_owned());
        let set = AnswerSet::from_wire(Some(&fields), &map, Some("legacy"));
        assert!(body(set.get(404).unwrap()).ends_with(b"map"));
        assert!(body(set.get(503).unwrap()).ends_with(b"legacy"));
        assert!(set.get(502).is_none());
    }

    #[test]
    fn redirect_points_to_https_with_host_port_and_target() {
        let at = |h, p, t| redirect_answer(301, &redirect_location("https", h, p, t).unwrap());
        let (status, headers, body) = parse(&at("Example.com:8080", None, "/a/b?c=d"));
        assert_eq!(status, 301);
        assert_eq!(
            header(&headers, "location"),
            vec!["https://example.com/a/b?c=d"]
        );
        assert!(body.is_empty());
        let (_, headers, _) = parse(&at("h", Some(8443), "/"));
        assert_eq!(header(&headers, "location"), vec!["https://h:8443/"]);
        assert!(redirect_location("https", "bad host", None, "/").is_none());
        assert!(redirect_location("https", "h", None, "*").is_none());
        assert_eq!(
            redirect_location("http", "h:1", Some(80), "/").as_deref(),
            Some("http://h/")
        );
        let (status, headers, _) = parse(&redirect_answer(308, "http://h:8080/"));
        assert_eq!(status, 308);
        assert_eq!(header(&headers, "location"), vec!["http://h:8080/"]);
    }

    #[test]
    fn cookies_are_found_by_name_and_stamped_before_the_end_of_the_head() {
        let headers = vec!["a=1; SOZUBALANCEID=b2 ".to_owned(), "c=3".to_owned()];
        assert_eq!(cookie_value(&headers, "SOZUBALANCEID"), Some("b2"));
        assert_eq!(cookie_value(&headers, "c"), Some("3"));
        assert_eq!(cookie_value(&headers, "SOZU"), None);
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
        stamp_cookie(&mut head, "SOZUBALANCEID", "b2");
        let (_, headers, _) = parse(&head);
        assert_eq!(
            header(&headers, "set-cookie"),
            vec!["SOZUBALANCEID=b2; Path=/"]
        );
    }

    #[test]
    fn only_the_sticky_cookie_is_stripped_and_an_empty_cookie_header_goes() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1; SOZUBALANCEID=b2; c=3\r\ncookie: SOZUBALANCEID=b1\r\nX: y\r\n\r\n";
        let out = strip_cookie(head, "SOZUBALANCEID").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1; c=3\r\nX: y\r\n\r\n"
        );
        assert!(strip_cookie(head, "other").is_none());
        assert!(strip_cookie(
            b"GET / HTTP/1.1\r\nX-Cookie: SOZUBALANCEID=1\r\n\r\n",
            "SOZUBALANCEID"
        )
        .is_none());
    }

    #[test]
    fn sticky_ids_default_to_the_backend_id() {
        let mut f = HttpFeatures::default();
        f.add_backend("c", "b1", Some("one"));
        f.add_backend("c", "b2", None);
        let c = f.cluster("c").unwrap();
        assert_eq!(c.backend_for("one").map(|b| b.as_str()), Some("b1"));
        assert_eq!(c.backend_for("b2").map(|b| b.as_str()), Some("b2"));
        assert_eq!(c.sticky_id_of(&BackendId::from("b1")), "one");
        f.remove_backend("c", "b1");
        assert!(f.cluster("c").unwrap().backend_for("one").is_none());
    }
}
