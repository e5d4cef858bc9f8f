//! HTTP Strict Transport Security (RFC 6797) as Sōzu configures it: an
//! HTTPS listener's default policy and a frontend's own (`HstsConfig`),
//! stamped on the responses a backend sends through an HTTPS listener.
//!
//! Pure: the policy is read from the wire once, when the order arrives, and
//! kept as the header line it writes; stamping a response head is a splice.

use std::sync::Arc;

use sozu_command_lib::command::HstsConfig;
use sozu_command_lib::limits::DEFAULT_HSTS_MAX_AGE;

const HEADER_NAME: &[u8] = b"strict-transport-security";

/// An enabled HSTS policy, ready to stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// The whole header line, `\r\n` included.
    line: Arc<str>,
    /// Replace a `Strict-Transport-Security` header the backend sent
    /// (otherwise the backend's is kept).
    force_replace_backend: bool,
}

/// What a frontend's order says of HSTS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FrontendHsts {
    /// No `hsts` in the order: the listener's policy applies.
    #[default]
    Listener,
    /// `hsts` with `enabled = false`: none, whatever the listener says.
    Off,
    /// The frontend's own policy.
    On(Hsts),
}

impl Hsts {
    /// The policy `config` enables, `None` when it is not enabled.
    pub fn from_wire(config: &HstsConfig) -> Option<Hsts> {
        if config.enabled != Some(true) {
            return None;
        }
        let mut line = format!(
            "Strict-Transport-Security: max-age={}",
            config.max_age.unwrap_or(DEFAULT_HSTS_MAX_AGE)
        );
        if config.include_subdomains == Some(true) {
            line.push_str("; includeSubDomains");
        }
        if config.preload == Some(true) {
            line.push_str("; preload");
        }
        line.push_str("\r\n");
        Some(Hsts {
            line: line.into(),
            force_replace_backend: config.force_replace_backend == Some(true),
        })
    }

    /// The header's value (`max-age=…`), for logs and tests.
    pub fn value(&self) -> &str {
        self.line
            .trim_end_matches("\r\n")
            .trim_start_matches("Strict-Transport-Security: ")
    }

    /// Adds the header to the head of a response (`…\r\n\r\n`, one
    /// header per line, as the head parser rebuilds it and as the proxy's
    /// own answers are written), before any body that follows. A backend's
    /// own header is kept unless the policy forces its replacement.
    pub fn stamp(&self, message: &mut Vec<u8>) {
        let Some(mut head_len) = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|n| n + 4)
        else {
            return;
        };
        if header_lines(&message[..head_len]).next().is_some() {
            if !self.force_replace_backend {
                return;
            }
            // Remove from the last line backwards so earlier ranges hold.
            let lines: Vec<(usize, usize)> = header_lines(&message[..head_len]).collect();
            for &(start, end) in lines.iter().rev() {
                message.drain(start..end);
                head_len -= end - start;
            }
        }
        let at = head_len - 2;
        message.splice(at..at, self.line.bytes());
    }
}

impl FrontendHsts {
    /// What the `hsts` field of a frontend order says.
    pub fn from_wire(config: Option<&HstsConfig>) -> FrontendHsts {
        match config {
            None => FrontendHsts::Listener,
            Some(config) => match Hsts::from_wire(config) {
                Some(policy) => FrontendHsts::On(policy),
                None => FrontendHsts::Off,
            },
        }
    }

    /// The policy for a response, given the listener's.
    pub fn resolve(&self, listener: Option<&Hsts>) -> Option<Hsts> {
        match self {
            FrontendHsts::Listener => listener.cloned(),
            FrontendHsts::Off => None,
            FrontendHsts::On(policy) => Some(policy.clone()),
        }
    }
}

/// Byte ranges (line ending included) of the `Strict-Transport-Security`
/// lines of a head, whatever their case.
fn header_lines(head: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        while start < head.len() {
            let end = head[start..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(head.len(), |n| start + n + 2);
            let line = &head[start..end];
            start = end;
            let named = line.len() > HEADER_NAME.len()
                && line[..HEADER_NAME.len()].eq_ignore_ascii_case(HEADER_NAME)
                && line[HEADER_NAME.len()] == b':';
            if named {
                return Some((end - line.len(), end));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(enabled: bool) -> HstsConfig {
        HstsConfig {
            enabled: Some(enabled),
            ..HstsConfig::default()
        }
    }

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";

    #[test]
    fn an_enabled_policy_is_stamped_with_its_directives() {
        let policy = Hsts::from_wire(&config(true)).unwrap();
        assert_eq!(policy.value(), "max-age=31536000");
        let mut head = HEAD.to_vec();
        policy.stamp(&mut head);
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nStrict-Transport-Security: max-age=31536000\r\n\r\n"
        );
        let full = Hsts::from_wire(&HstsConfig {
            enabled: Some(true),
            max_age: Some(600),
            include_subdomains: Some(true),
            preload: Some(true),
            force_replace_backend: None,
        })
        .unwrap();
        assert_eq!(full.value(), "max-age=600; includeSubDomains; preload");
        assert_eq!(Hsts::from_wire(&config(false)), None);
        assert_eq!(Hsts::from_wire(&HstsConfig::default()), None);
    }

    #[test]
    fn the_backends_header_is_kept_unless_replacement_is_forced() {
        let backend: &[u8] =
            b"HTTP/1.1 200 OK\r\nSTRICT-TRANSPORT-SECURITY: max-age=5\r\nX-A: b\r\nstrict-transport-security: max-age=6\r\n\r\n";
        let kept = Hsts::from_wire(&config(true)).unwrap();
        let mut head = backend.to_vec();
        kept.stamp(&mut head);
        assert_eq!(head, backend, "the backend's policy stays");

        let forced = Hsts::from_wire(&HstsConfig {
            enabled: Some(true),
            max_age: Some(60),
            force_replace_backend: Some(true),
            ..HstsConfig::default()
        })
        .unwrap();
        let mut head = backend.to_vec();
        forced.stamp(&mut head);
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\nX-A: b\r\nStrict-Transport-Security: max-age=60\r\n\r\n"
        );
    }

    #[test]
    fn an_answer_with_a_body_gets_the_header_in_its_head() {
        let mut answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope".to_vec();
        Hsts::from_wire(&config(true)).unwrap().stamp(&mut answer);
        assert_eq!(
            answer,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nStrict-Transport-Security: max-age=31536000\r\n\r\nnope"
        );
        let mut partial = b"HTTP/1.1 200 OK\r\n".to_vec();
        Hsts::from_wire(&config(true)).unwrap().stamp(&mut partial);
        assert_eq!(partial, b"HTTP/1.1 200 OK\r\n", "no head end: left alone");
    }

    #[test]
    fn a_header_that_only_starts_like_it_is_not_it() {
        let head: &[u8] = b"HTTP/1.1 200 OK\r\nStrict-Transport-Security-Report: x\r\n\r\n";
        let mut stamped = head.to_vec();
        Hsts::from_wire(&config(true)).unwrap().stamp(&mut stamped);
        assert!(stamped.ends_with(b"Strict-Transport-Security: max-age=31536000\r\n\r\n"));
    }

    #[test]
    fn a_frontend_inherits_disables_or_overrides_the_listeners_policy() {
        let listener = Hsts::from_wire(&config(true)).unwrap();
        assert_eq!(
            FrontendHsts::from_wire(None).resolve(Some(&listener)),
            Some(listener.clone())
        );
        assert_eq!(FrontendHsts::from_wire(None).resolve(None), None);
        assert_eq!(
            FrontendHsts::from_wire(Some(&config(false))).resolve(Some(&listener)),
            None
        );
        let own = HstsConfig {
            enabled: Some(true),
            max_age: Some(10),
            ..HstsConfig::default()
        };
        assert_eq!(
            FrontendHsts::from_wire(Some(&own))
                .resolve(Some(&listener))
                .map(|p| p.value().to_owned()),
            Some("max-age=10".to_owned())
        );
    }
}
