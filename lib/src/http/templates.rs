//! Sōzu's template variables in custom answers (`%REQUEST_ID`, `%ROUTE`,
//! `%CLUSTER_ID`, …).
//!
//! Owns the pre-split form of one custom answer: the template is cut into
//! literal parts and variables once, when the order that carries it is
//! applied; per request the proxy only splices the values in, escaping
//! each (HTML in the body, header-safe bytes in the head) and writing the
//! body's exact `Content-Length`. Pure bytes: no sockets, no clock.
//!
//! Which variables exist for which status follows Sōzu 2.x (see
//! `doc/configure.md`); a `%NAME` that is not a variable of that status is
//! left as written.

use std::fmt::Write as _;

/// A variable of Sōzu's answer templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    Route,
    RequestId,
    ClusterId,
    BackendId,
    Duration,
    Capacity,
    Phase,
    RedirectLocation,
    Message,
    TemplateName,
    WwwAuthenticate,
    SuccessfullyParsed,
    PartiallyParsed,
    Invalid,
}

impl Var {
    fn name(self) -> &'static str {
        match self {
            Var::Route => "ROUTE",
            Var::RequestId => "REQUEST_ID",
            Var::ClusterId => "CLUSTER_ID",
            Var::BackendId => "BACKEND_ID",
            Var::Duration => "DURATION",
            Var::Capacity => "CAPACITY",
            Var::Phase => "PHASE",
            Var::RedirectLocation => "REDIRECT_LOCATION",
            Var::Message => "MESSAGE",
            Var::TemplateName => "TEMPLATE_NAME",
            Var::WwwAuthenticate => "WWW_AUTHENTICATE",
            Var::SuccessfullyParsed => "SUCCESSFULLY_PARSED",
            Var::PartiallyParsed => "PARTIALLY_PARSED",
            Var::Invalid => "INVALID",
        }
    }
}

/// The variables Sōzu 2.x defines for the answer of `status`.
pub(crate) fn variables_of(status: u16) -> &'static [Var] {
    use Var::*;
    match status {
        301 => &[Route, RequestId, RedirectLocation],
        400 => &[
            Route,
            RequestId,
            Message,
            Phase,
            SuccessfullyParsed,
            PartiallyParsed,
            Invalid,
        ],
        401 => &[Route, RequestId, WwwAuthenticate],
        404 | 421 => &[Route, RequestId],
        408 => &[Route, RequestId, Duration],
        413 => &[Route, RequestId, Capacity, Message, Phase],
        502 => &[
            Route,
            RequestId,
            ClusterId,
            BackendId,
            Message,
            Phase,
            SuccessfullyParsed,
            PartiallyParsed,
            Invalid,
        ],
        503 => &[Route, RequestId, ClusterId, BackendId, Message],
        504 => &[Route, RequestId, ClusterId, BackendId, Duration],
        507 => &[
            Route, RequestId, ClusterId, BackendId, Capacity, Message, Phase,
        ],
        _ => &[Route, RequestId, ClusterId, RedirectLocation, TemplateName],
    }
}

/// The values of one answer, known at the moment the proxy answers.
#[derive(Debug, Default, Clone)]
pub(crate) struct AnswerValues<'a> {
    /// The request's host and target (`example.com/path`), or empty.
    pub route: &'a str,
    pub request_id: &'a str,
    pub cluster_id: &'a str,
    pub backend_id: &'a str,
    /// Time since the request's first byte (`1500ms`).
    pub duration: &'a str,
    pub capacity: &'a str,
    pub phase: &'a str,
    pub redirect_location: &'a str,
    pub message: &'a str,
}

impl AnswerValues<'_> {
    fn get(&self, var: Var) -> &str {
        match var {
            Var::Route => self.route,
            Var::RequestId => self.request_id,
            Var::ClusterId => self.cluster_id,
            Var::BackendId => self.backend_id,
            Var::Duration => self.duration,
            Var::Capacity => self.capacity,
            Var::Phase => self.phase,
            Var::RedirectLocation => self.redirect_location,
            Var::Message => self.message,
            // No named templates, no realms, no parser snapshot: the
            // values Sōzu gives when it has none.
            Var::TemplateName | Var::WwwAuthenticate => "",
            Var::SuccessfullyParsed | Var::PartiallyParsed | Var::Invalid => "null",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<[u8]>),
    Var(Var),
}

/// A custom answer cut into literal parts and variables.
#[derive(Debug, Clone)]
pub(crate) struct AnswerTemplate {
    /// Status line and headers, up to (not including) `Content-Length`.
    head: Vec<Part>,
    body: Vec<Part>,
    /// Length of the literal parts of the body.
    body_literal: usize,
    /// No variable at all: `head` + length + `body` is the whole answer.
    fixed: Option<Box<[u8]>>,
}

impl AnswerTemplate {
    /// Splits a complete response built by `features::build_answer` (whose
    /// head ends in `Content-Length: N\r\n\r\n`) for `status`.
    pub(crate) fn new(status: u16, response: &[u8]) -> Self {
        let vars = variables_of(status);
        let Some(end) = find(response, b"\r\n\r\n") else {
            return Self::fixed(response);
        };
        let head = &response[..end + 2];
        let body = &response[end + 4..];
        // The last head line is our Content-Length: written per answer.
        let head = match rfind_line(head, b"content-length:") {
            Some(at) => &head[..at],
            None => head,
        };
        let mut head_parts = Vec::new();
        let mut first = true;
        for line in head.split_inclusive(|b| *b == b'\n') {
            if first {
                // The status line stays as written.
                head_parts.push(Part::Text(line.into()));
                first = false;
                continue;
            }
            let parts = split(line, vars);
            // Sōzu drops a header whose only variable is an empty
            // `%WWW_AUTHENTICATE` (the proxy has no realm to give).
            if parts.contains(&Part::Var(Var::WwwAuthenticate)) {
                continue;
            }
            head_parts.extend(parts);
        }
        let body_parts = split(body, vars);
        let has_var = head_parts
            .iter()
            .chain(&body_parts)
            .any(|p| matches!(p, Part::Var(_)));
        if !has_var {
            return Self::fixed(response);
        }
        let body_literal = body_parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Var(_) => 0,
            })
            .sum();
        AnswerTemplate {
            head: merge(head_parts),
            body: body_parts,
            body_literal,
            fixed: None,
        }
    }

    fn fixed(response: &[u8]) -> Self {
        AnswerTemplate {
            head: Vec::new(),
            body: Vec::new(),
            body_literal: 0,
            fixed: Some(response.into()),
        }
    }

    /// The literal answer, when the template has no variable.
    #[cfg(test)]
    pub(crate) fn as_fixed(&self) -> Option<&[u8]> {
        self.fixed.as_deref()
    }

    /// The answer with `values` spliced in.
    pub(crate) fn render(&self, values: &AnswerValues<'_>) -> Vec<u8> {
        if let Some(fixed) = &self.fixed {
            return fixed.to_vec();
        }
        let mut body = Vec::with_capacity(self.body_literal + 64);
        for part in &self.body {
            match part {
                Part::Text(t) => body.extend_from_slice(t),
                Part::Var(v) => escape_html(values.get(*v), &mut body),
            }
        }
        let mut out = Vec::with_capacity(256 + body.len());
        for part in &self.head {
            match part {
                Part::Text(t) => out.extend_from_slice(t),
                Part::Var(v) => escape_header(values.get(*v), &mut out),
            }
        }
        let mut length = String::with_capacity(32);
        let _ = write!(length, "Content-Length: {}\r\n\r\n", body.len());
        out.extend_from_slice(length.as_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// Cuts `text` at every `%NAME` of `vars` (longest name first, so no
/// variable hides a longer one).
fn split(text: &[u8], vars: &[Var]) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut literal_start = 0;
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            let rest = &text[i + 1..];
            let found = vars
                .iter()
                .filter(|v| rest.starts_with(v.name().as_bytes()))
                .max_by_key(|v| v.name().len());
            if let Some(var) = found {
                if literal_start < i {
                    parts.push(Part::Text(text[literal_start..i].into()));
                }
                parts.push(Part::Var(*var));
                i += 1 + var.name().len();
                literal_start = i;
                continue;
            }
        }
        i += 1;
    }
    if literal_start < text.len() {
        parts.push(Part::Text(text[literal_start..].into()));
    }
    parts
}

/// Joins neighbouring literal parts.
fn merge(parts: Vec<Part>) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::with_capacity(parts.len());
    for part in parts {
        match (out.last_mut(), part) {
            (Some(Part::Text(prev)), Part::Text(t)) => {
                let mut joined = prev.to_vec();
                joined.extend_from_slice(&t);
                *prev = joined.into();
            }
            (_, part) => out.push(part),
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where the last line starting with `prefix` (any case) begins.
fn rfind_line(head: &[u8], prefix: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut found = None;
    for line in head.split_inclusive(|b| *b == b'\n') {
        if line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix) {
            found = Some(at);
        }
        at += line.len();
    }
    found
}

/// A value placed in a body: HTML's five special characters escaped, so a
/// request (its host, its path) cannot inject markup.
fn escape_html(value: &str, out: &mut Vec<u8>) {
    for b in value.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&#39;"),
            _ => out.push(b),
        }
    }
}

/// A value placed in a header: only visible ASCII and spaces kept, so a
/// value can neither end the header nor start another.
fn escape_header(value: &str, out: &mut Vec<u8>) {
    out.extend(value.bytes().filter(|b| b.is_ascii_graphic() || *b == b' '));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::features::build_answer;
    use crate::http::features::tests::parse;

    fn template(status: u16, text: &str) -> AnswerTemplate {
        AnswerTemplate::new(status, &build_answer(status, text))
    }

    #[test]
    fn variables_are_spliced_escaped_and_the_length_recomputed() {
        let t = template(
            503,
            "HTTP/1.1 503 Service Unavailable\nSozu-Id: %REQUEST_ID\n\n<p>%CLUSTER_ID on %ROUTE: %MESSAGE</p>",
        );
        let values = AnswerValues {
            route: "h/<script>",
            request_id: "id1\r\nX-Evil: 1",
            cluster_id: "c1",
            message: "no backend",
            ..Default::default()
        };
        let (status, headers, body) = parse(&t.render(&values));
        assert_eq!(status, 503);
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "<p>c1 on h/&lt;script&gt;: no backend</p>"
        );
        let sozu_id: Vec<_> = headers.iter().filter(|(n, _)| n == "sozu-id").collect();
        assert_eq!(sozu_id[0].1, "id1X-Evil: 1");
        assert!(!headers.iter().any(|(n, _)| n == "x-evil"));
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
    }

    #[test]
    fn unknown_and_other_status_variables_stay_as_written() {
        // %BACKEND_ID is not a 404 variable in Sōzu; %NOPE is none at all.
        let t = template(404, "%ROUTE %BACKEND_ID %NOPE 100%");
        let values = AnswerValues {
            route: "r",
            backend_id: "b",
            ..Default::default()
        };
        let (_, _, body) = parse(&t.render(&values));
        assert_eq!(body, b"r %BACKEND_ID %NOPE 100%");
    }

    #[test]
    fn a_template_without_variables_is_served_as_is() {
        let bytes = build_answer(404, "plain 100% text");
        let t = AnswerTemplate::new(404, &bytes);
        assert_eq!(t.as_fixed(), Some(&bytes[..]));
        assert_eq!(t.render(&AnswerValues::default()), bytes);
    }

    #[test]
    fn an_empty_www_authenticate_drops_its_header_and_parser_values_are_null() {
        let t = template(
            401,
            "HTTP/1.1 401 Unauthorized\nWWW-Authenticate: %WWW_AUTHENTICATE\nX-R: %ROUTE\n\nx",
        );
        let (status, headers, _) = parse(&t.render(&AnswerValues {
            route: "h/p",
            ..Default::default()
        }));
        assert_eq!(status, 401);
        assert!(!headers.iter().any(|(n, _)| n == "www-authenticate"));
        assert!(headers.iter().any(|(n, v)| n == "x-r" && v == "h/p"));
        let t = template(400, "%SUCCESSFULLY_PARSED/%PHASE");
        let (_, _, body) = parse(&t.render(&AnswerValues {
            phase: "Headers",
            ..Default::default()
        }));
        assert_eq!(body, b"null/Headers");
    }

    #[test]
    fn every_status_knows_route_and_request_id() {
        for status in [301, 400, 401, 404, 408, 413, 421, 429, 502, 503, 504, 507] {
            let vars = variables_of(status);
            assert!(vars.contains(&Var::Route) && vars.contains(&Var::RequestId));
        }
        assert!(variables_of(301).contains(&Var::RedirectLocation));
        assert!(variables_of(504).contains(&Var::Duration));
    }
}
