//! HTTP routing table of one listener: hostname (exact or `*.` wildcard)
//! and path (prefix, exact or regular expression), optionally a method, to
//! a cluster.
//!
//! Pure: no sockets, no clock. Owns the frontends of one listener address.
//! Precedence, for a request's host and path:
//! 1. exact hostname routes before wildcard ones (a wildcard `*.example.com`
//!    matches exactly one more label: `a.example.com`, not
//!    `a.b.example.com`, not `example.com`);
//! 2. within a hostname, an `EQUALS` path beats everything, then `REGEX`
//!    rules (in the order they were added; a pattern matches anywhere in
//!    the path unless anchored, as in Sōzu), then the longest matching
//!    `PREFIX`;
//! 3. at equal length a route naming the request's method beats one with no
//!    method.
//!
//! Hostnames compare without case, without a trailing dot and without the
//! port; paths compare on the request target's path (the query excluded).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sozu_command_lib::command::{
    PathRuleKind, RedirectPolicy, RedirectScheme, RequestHttpFrontend,
};

use super::hsts::FrontendHsts;
use crate::protocol::ids::ClusterId;

/// Where a matching request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Forward to this cluster.
    Cluster {
        /// The cluster.
        cluster: ClusterId,
        /// The frontend's tags, for access records.
        tags: Option<Arc<BTreeMap<String, String>>>,
        /// The frontend's HSTS policy (over an HTTPS listener).
        hsts: FrontendHsts,
    },
    /// A frontend without a cluster, or with `redirect = UNAUTHORIZED`:
    /// answer 401 (Sōzu's "deny" route).
    Deny,
    /// A frontend with `redirect = PERMANENT | FOUND | PERMANENT_REDIRECT`:
    /// answer `status` (301, 302, 308) with a `Location` to the request's
    /// host and target under `scheme`.
    Redirect {
        /// 301, 302 or 308.
        status: u16,
        /// The scheme of the `Location`.
        scheme: Scheme,
        /// The frontend's cluster (its custom answers and
        /// `https_redirect_port`), if it names one.
        cluster: Option<ClusterId>,
    },
}

/// The scheme a frontend redirect sends the client to (Sōzu's
/// `redirect_scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// The request's own (`USE_SAME`).
    Same,
    /// `http` (`USE_HTTP`).
    Http,
    /// `https` (`USE_HTTPS`).
    Https,
}

/// A refused frontend order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `path.kind` is not a known kind.
    #[error("path rule kind {kind} is not supported (PREFIX, REGEX and EQUALS are)")]
    UnsupportedPathKind {
        /// The wire value.
        kind: i32,
    },
    /// `path.value` of a REGEX rule does not compile (or is too large).
    #[error("path.value {pattern:?} is not a usable regular expression: {reason}")]
    InvalidRegex {
        /// The pattern the order named.
        pattern: String,
        /// Why it was refused.
        reason: String,
    },
    /// The hostname is empty or has a misplaced wildcard.
    #[error("invalid hostname {hostname:?}: {reason}")]
    InvalidHostname {
        /// The hostname the order named.
        hostname: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same hostname, path and method are already routed.
    #[error("a frontend for host {hostname:?} path {path:?} already exists")]
    Duplicate {
        /// The hostname.
        hostname: String,
        /// The path rule.
        path: String,
    },
    /// No such frontend to remove.
    #[error("no frontend for host {hostname:?} path {path:?}")]
    NotFound {
        /// The hostname.
        hostname: String,
        /// The path rule.
        path: String,
    },
}

#[derive(Debug, Clone)]
enum PathMatch {
    Prefix(String),
    Equals(String),
    /// Compiled once, when the order arrives.
    Regex(regex::Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Equals(a), PathMatch::Equals(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Equals(p) => path == p,
            PathMatch::Regex(re) => re.is_match(path),
        }
    }

    /// Ordering key: EQUALS above everything, then REGEX rules (all of one
    /// rank: a stable sort keeps them in the order they were added), then
    /// longer prefixes.
    fn rank(&self) -> (u8, usize) {
        match self {
            PathMatch::Prefix(p) => (0, p.len()),
            PathMatch::Regex(_) => (1, 0),
            PathMatch::Equals(p) => (2, p.len()),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    path: PathMatch,
    method: Option<String>,
    target: RouteTarget,
}

/// The routes of one listener.
#[derive(Debug, Clone, Default)]
pub struct Router {
    exact: HashMap<String, Vec<Rule>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Vec<Rule>>,
}

/// Lowercases and strips a trailing dot.
fn normalize_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The hostname of a `Host` header value: without port, brackets kept for
/// IPv6 literals, lowercased, trailing dot stripped.
pub fn host_without_port(host: &str) -> String {
    let host = host.trim();
    let bare = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    normalize_name(bare)
}

impl Router {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no route is configured.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    fn parse(frontend: &RequestHttpFrontend) -> Result<(bool, String, Rule), RouteError> {
        let path = match PathRuleKind::try_from(frontend.path.kind) {
            Ok(PathRuleKind::Prefix) => PathMatch::Prefix(frontend.path.value.clone()),
            Ok(PathRuleKind::Equals) => PathMatch::Equals(frontend.path.value.clone()),
            Ok(PathRuleKind::Regex) => PathMatch::Regex(
                sozu_command_lib::limits::compile_path_regex(&frontend.path.value).map_err(
                    |reason| RouteError::InvalidRegex {
                        pattern: frontend.path.value.clone(),
                        reason,
                    },
                )?,
            ),
            _ => {
                return Err(RouteError::UnsupportedPathKind {
                    kind: frontend.path.kind,
                })
            }
        };
        let name = normalize_name(&frontend.hostname);
        let invalid = |reason| RouteError::InvalidHostname {
            hostname: frontend.hostname.clone(),
            reason,
        };
        let (wild, key) = match name.strip_prefix("*.") {
            Some(suffix) => (true, suffix.to_owned()),
            None => (false, name),
        };
        if key.is_empty() {
            return Err(invalid("empty"));
        }
        if key.contains('*') {
            return Err(invalid(
                "a wildcard is only allowed as the first label, as in *.example.com",
            ));
        }
        let redirect = frontend
            .redirect
            .and_then(|r| RedirectPolicy::try_from(r).ok())
            .unwrap_or(RedirectPolicy::Forward);
        let redirect_status = match redirect {
            RedirectPolicy::Forward | RedirectPolicy::Unauthorized => None,
            RedirectPolicy::Permanent => Some(301),
            RedirectPolicy::Found => Some(302),
            RedirectPolicy::PermanentRedirect => Some(308),
        };
        let scheme = match frontend
            .redirect_scheme
            .and_then(|s| RedirectScheme::try_from(s).ok())
        {
            Some(RedirectScheme::UseHttp) => Scheme::Http,
            Some(RedirectScheme::UseHttps) => Scheme::Https,
            Some(RedirectScheme::UseSame) | None => Scheme::Same,
        };
        let target = match &frontend.cluster_id {
            _ if redirect == RedirectPolicy::Unauthorized => RouteTarget::Deny,
            cluster if redirect_status.is_some() => RouteTarget::Redirect {
                status: redirect_status.unwrap_or(301),
                scheme,
                cluster: cluster.as_deref().map(ClusterId::from),
            },
            Some(cluster) => RouteTarget::Cluster {
                cluster: ClusterId::from(cluster.as_str()),
                tags: if frontend.tags.is_empty() {
                    None
                } else {
                    Some(Arc::new(frontend.tags.clone()))
                },
                hsts: FrontendHsts::from_wire(frontend.hsts.as_ref()),
            },
            None => RouteTarget::Deny,
        };
        let method = frontend.method.as_ref().map(|m| m.to_ascii_uppercase());
        Ok((
            wild,
            key,
            Rule {
                path,
                method,
                target,
            },
        ))
    }

    /// Whether [`Router::add`] and [`Router::remove`] could take this
    /// frontend (path kind, hostname), without touching any table: the
    /// master calls it before an order changes its state, so the two never
    /// disagree.
    pub fn check(frontend: &RequestHttpFrontend) -> Result<(), RouteError> {
        Self::parse(frontend).map(|_| ())
    }

    /// Adds a frontend.
    pub fn add(&mut self, frontend: &RequestHttpFrontend) -> Result<(), RouteError> {
        let (wild, key, rule) = Self::parse(frontend)?;
        let table = if wild {
            &mut self.wildcard
        } else {
            &mut self.exact
        };
        let rules = table.entry(key).or_default();
        if rules
            .iter()
            .any(|r| r.path == rule.path && r.method == rule.method)
        {
            return Err(RouteError::Duplicate {
                hostname: frontend.hostname.clone(),
                path: frontend.path.value.clone(),
            });
        }
        rules.push(rule);
        // Best rule first, so a lookup takes the first match.
        rules.sort_by(|a, b| {
            (b.path.rank(), b.method.is_some()).cmp(&(a.path.rank(), a.method.is_some()))
        });
        self.check_invariants();
        Ok(())
    }

    /// Every host has rules, each host's rules are ordered best first, and
    /// no two rules of a host have the same path and method.
    fn check_invariants(&self) {
        #[cfg(debug_assertions)]
        for rules in self.exact.values().chain(self.wildcard.values()) {
            debug_assert!(!rules.is_empty(), "a host without rules is removed");
            for pair in rules.windows(2) {
                let key = |r: &Rule| (r.path.rank(), r.method.is_some());
                debug_assert!(key(&pair[0]) >= key(&pair[1]), "rules ordered best first");
            }
            for (i, a) in rules.iter().enumerate() {
                debug_assert!(
                    rules[i + 1..]
                        .iter()
                        .all(|b| !(a.path == b.path && a.method == b.method)),
                    "no duplicate rule"
                );
            }
        }
    }

    /// Removes the frontend with this hostname, path and method.
    pub fn remove(&mut self, frontend: &RequestHttpFrontend) -> Result<(), RouteError> {
        let (wild, key, rule) = Self::parse(frontend)?;
        let table = if wild {
            &mut self.wildcard
        } else {
            &mut self.exact
        };
        let not_found = || RouteError::NotFound {
            hostname: frontend.hostname.clone(),
            path: frontend.path.value.clone(),
        };
        let rules = table.get_mut(&key).ok_or_else(not_found)?;
        let before = rules.len();
        rules.retain(|r| !(r.path == rule.path && r.method == rule.method));
        if rules.len() == before {
            return Err(not_found());
        }
        if rules.is_empty() {
            table.remove(&key);
        }
        self.check_invariants();
        Ok(())
    }

    /// The route for a request, if any. `host` is the Host header value (a
    /// port is ignored), `path` the request target (the query is ignored).
    pub fn lookup(&self, host: &str, path: &str, method: &str) -> Option<&RouteTarget> {
        let host = host_without_port(host);
        let path = path.split(['?', '#']).next().unwrap_or(path);
        fn pick<'r>(rules: &'r [Rule], path: &str, method: &str) -> Option<&'r RouteTarget> {
            rules
                .iter()
                .find(|r| {
                    r.path.matches(path)
                        && r.method
                            .as_deref()
                            .is_none_or(|m| m.eq_ignore_ascii_case(method))
                })
                .map(|r| &r.target)
        }
        if let Some(target) = self
            .exact
            .get(&host)
            .and_then(|rules| pick(rules, path, method))
        {
            return Some(target);
        }
        let (label, suffix) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard
            .get(suffix)
            .and_then(|rules| pick(rules, path, method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sozu_command_lib::command::{PathRule, RulePosition};

    fn frontend(
        host: &str,
        kind: PathRuleKind,
        path: &str,
        cluster: Option<&str>,
    ) -> RequestHttpFrontend {
        RequestHttpFrontend {
            cluster_id: cluster.map(str::to_owned),
            address: "127.0.0.1:80"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
            hostname: host.to_owned(),
            path: PathRule {
                kind: kind as i32,
                value: path.to_owned(),
            },
            method: None,
            position: RulePosition::Tree as i32,
            ..Default::default()
        }
    }

    fn cluster_of(target: Option<&RouteTarget>) -> Option<&str> {
        match target? {
            RouteTarget::Cluster { cluster, .. } => Some(cluster.as_str()),
            RouteTarget::Deny => Some("<deny>"),
            RouteTarget::Redirect { .. } => Some("<redirect>"),
        }
    }

    fn table() -> Router {
        let mut r = Router::new();
        r.add(&frontend(
            "example.com",
            PathRuleKind::Prefix,
            "/",
            Some("root"),
        ))
        .unwrap();
        r.add(&frontend(
            "example.com",
            PathRuleKind::Prefix,
            "/api",
            Some("api"),
        ))
        .unwrap();
        r.add(&frontend(
            "example.com",
            PathRuleKind::Prefix,
            "/api/v2",
            Some("api2"),
        ))
        .unwrap();
        r.add(&frontend(
            "example.com",
            PathRuleKind::Equals,
            "/api",
            Some("api-exact"),
        ))
        .unwrap();
        r.add(&frontend(
            "*.example.com",
            PathRuleKind::Prefix,
            "/",
            Some("wild"),
        ))
        .unwrap();
        r.add(&frontend(
            "admin.example.com",
            PathRuleKind::Prefix,
            "/x",
            Some("admin"),
        ))
        .unwrap();
        r.add(&frontend(
            "deny.example.com",
            PathRuleKind::Prefix,
            "/",
            None,
        ))
        .unwrap();
        r
    }

    #[test]
    fn redirect_policies_become_redirect_or_deny_targets() {
        use sozu_command_lib::command::{RedirectPolicy, RedirectScheme};
        let mut r = Router::default();
        let mut moved = frontend("moved.com", PathRuleKind::Prefix, "/", None);
        moved.redirect = Some(RedirectPolicy::PermanentRedirect as i32);
        moved.redirect_scheme = Some(RedirectScheme::UseHttps as i32);
        r.add(&moved).unwrap();
        let mut closed = frontend("closed.com", PathRuleKind::Prefix, "/", Some("c"));
        closed.redirect = Some(RedirectPolicy::Unauthorized as i32);
        r.add(&closed).unwrap();
        let mut forward = frontend("fwd.com", PathRuleKind::Prefix, "/", Some("c"));
        forward.redirect = Some(RedirectPolicy::Forward as i32);
        r.add(&forward).unwrap();
        assert_eq!(
            r.lookup("moved.com", "/x", "GET"),
            Some(&RouteTarget::Redirect {
                status: 308,
                scheme: Scheme::Https,
                cluster: None
            })
        );
        assert_eq!(r.lookup("closed.com", "/", "GET"), Some(&RouteTarget::Deny));
        assert_eq!(cluster_of(r.lookup("fwd.com", "/", "GET")), Some("c"));
    }

    #[test]
    fn longest_prefix_wins_and_equals_beats_prefixes() {
        let r = table();
        assert_eq!(
            cluster_of(r.lookup("example.com", "/", "GET")),
            Some("root")
        );
        assert_eq!(
            cluster_of(r.lookup("example.com", "/apix", "GET")),
            Some("api")
        );
        assert_eq!(
            cluster_of(r.lookup("example.com", "/api/v2/x?q=1", "GET")),
            Some("api2")
        );
        assert_eq!(
            cluster_of(r.lookup("example.com", "/api?q", "GET")),
            Some("api-exact")
        );
        assert_eq!(
            cluster_of(r.lookup("example.com", "/api/", "GET")),
            Some("api")
        );
    }

    #[test]
    fn host_matching_ignores_case_port_and_trailing_dot() {
        let r = table();
        assert_eq!(
            cluster_of(r.lookup("EXAMPLE.com:8080", "/", "GET")),
            Some("root")
        );
        assert_eq!(
            cluster_of(r.lookup("example.com.", "/api", "GET")),
            Some("api-exact")
        );
        assert_eq!(r.lookup("other.org", "/", "GET"), None);
    }

    #[test]
    fn wildcards_match_one_label_after_exact_hosts() {
        let r = table();
        assert_eq!(
            cluster_of(r.lookup("www.example.com", "/", "GET")),
            Some("wild")
        );
        assert_eq!(r.lookup("a.b.example.com", "/", "GET"), None);
        // An exact host with a matching path wins over the wildcard…
        assert_eq!(
            cluster_of(r.lookup("admin.example.com", "/x", "GET")),
            Some("admin")
        );
        // …and falls back to it when none of its paths match.
        assert_eq!(
            cluster_of(r.lookup("admin.example.com", "/y", "GET")),
            Some("wild")
        );
        assert_eq!(
            cluster_of(r.lookup("deny.example.com", "/", "GET")),
            Some("<deny>")
        );
    }

    #[test]
    fn method_specific_routes_beat_generic_ones_of_equal_length() {
        let mut r = Router::new();
        r.add(&frontend("h", PathRuleKind::Prefix, "/", Some("any")))
            .unwrap();
        let mut post = frontend("h", PathRuleKind::Prefix, "/", Some("posts"));
        post.method = Some("post".to_owned());
        r.add(&post).unwrap();
        assert_eq!(cluster_of(r.lookup("h", "/", "POST")), Some("posts"));
        assert_eq!(cluster_of(r.lookup("h", "/", "GET")), Some("any"));
    }

    #[test]
    fn remove_takes_out_exactly_one_route_and_duplicates_are_refused() {
        let mut r = table();
        let api = frontend("example.com", PathRuleKind::Prefix, "/api", Some("api"));
        assert!(matches!(r.add(&api), Err(RouteError::Duplicate { .. })));
        r.remove(&api).unwrap();
        assert_eq!(
            cluster_of(r.lookup("example.com", "/apix", "GET")),
            Some("root")
        );
        assert!(matches!(r.remove(&api), Err(RouteError::NotFound { .. })));
    }

    #[test]
    fn bad_regexes_and_bad_wildcards_are_refused_naming_the_value() {
        let mut r = Router::new();
        let err = r
            .add(&frontend("h", PathRuleKind::Regex, "/api/(v1", Some("c")))
            .unwrap_err();
        assert!(matches!(err, RouteError::InvalidRegex { .. }), "{err:?}");
        assert!(err.to_string().contains("\"/api/(v1\""), "{err}");
        assert!(matches!(
            Router::check(&frontend(
                "h",
                PathRuleKind::Regex,
                "a{1000}{1000}",
                Some("c")
            )),
            Err(RouteError::InvalidRegex { .. })
        ));
        assert!(matches!(
            r.add(&frontend("a.*.com", PathRuleKind::Prefix, "/", Some("c"))),
            Err(RouteError::InvalidHostname { .. })
        ));
        assert!(r.is_empty());
    }

    #[test]
    fn regex_rules_rank_between_equals_and_prefixes() {
        let mut r = Router::new();
        r.add(&frontend("h", PathRuleKind::Prefix, "/", Some("root")))
            .unwrap();
        r.add(&frontend(
            "h",
            PathRuleKind::Prefix,
            "/api/v1/",
            Some("long"),
        ))
        .unwrap();
        r.add(&frontend(
            "h",
            PathRuleKind::Regex,
            "^/api/v[0-9]+/",
            Some("versioned"),
        ))
        .unwrap();
        r.add(&frontend(
            "h",
            PathRuleKind::Regex,
            r"\.png$",
            Some("images"),
        ))
        .unwrap();
        r.add(&frontend(
            "h",
            PathRuleKind::Equals,
            "/api/v1/x",
            Some("exact"),
        ))
        .unwrap();
        assert_eq!(cluster_of(r.lookup("h", "/api/v1/x", "GET")), Some("exact"));
        assert_eq!(
            cluster_of(r.lookup("h", "/api/v1/y", "GET")),
            Some("versioned")
        );
        assert_eq!(
            cluster_of(r.lookup("h", "/api/v22/y?q=.png", "GET")),
            Some("versioned")
        );
        // Unanchored: matches anywhere in the path, the query excluded.
        assert_eq!(cluster_of(r.lookup("h", "/a/b.png", "GET")), Some("images"));
        assert_eq!(cluster_of(r.lookup("h", "/a/b?x.png", "GET")), Some("root"));
        assert_eq!(cluster_of(r.lookup("h", "/api/vx/", "GET")), Some("root"));
        // Same pattern twice is a duplicate; removing it restores the rest.
        let images = frontend("h", PathRuleKind::Regex, r"\.png$", Some("images"));
        assert!(matches!(r.add(&images), Err(RouteError::Duplicate { .. })));
        r.remove(&images).unwrap();
        assert_eq!(cluster_of(r.lookup("h", "/a/b.png", "GET")), Some("root"));
    }

    /// Lookups agree with a brute-force reading of the precedence rules
    /// over random tables and requests.
    #[test]
    fn lookup_matches_a_brute_force_model() {
        use quickcheck::{QuickCheck, TestResult};
        const HOSTS: [&str; 5] = ["a.com", "b.a.com", "*.a.com", "x.b.a.com", "*.b.a.com"];
        const PATHS: [&str; 5] = ["", "/", "/a", "/a/b", "/ab"];
        const REQ_HOSTS: [&str; 6] = [
            "a.com",
            "b.a.com",
            "c.a.com",
            "x.b.a.com",
            "y.b.a.com",
            "d.com",
        ];
        const REQ_PATHS: [&str; 6] = ["/", "/a", "/a/b", "/ab", "/abc", "/b"];
        fn prop(rules: Vec<(u8, u8, bool, u8)>, requests: Vec<(u8, u8, bool)>) -> TestResult {
            let mut router = Router::new();
            // (host, path, equals, method, cluster) of the rules accepted.
            let mut model: Vec<(&str, &str, bool, Option<&str>, String)> = Vec::new();
            for (i, (h, p, equals, m)) in rules.into_iter().enumerate() {
                let host = HOSTS[usize::from(h) % HOSTS.len()];
                let path = PATHS[usize::from(p) % PATHS.len()];
                let method = [None, Some("GET"), Some("POST")][usize::from(m) % 3];
                let kind = if equals {
                    PathRuleKind::Equals
                } else {
                    PathRuleKind::Prefix
                };
                let cluster = format!("c{i}");
                let mut f = frontend(host, kind, path, Some(&cluster));
                f.method = method.map(str::to_owned);
                if router.add(&f).is_ok() {
                    model.push((host, path, equals, method, cluster));
                }
            }
            for (h, p, post) in requests {
                let host = REQ_HOSTS[usize::from(h) % REQ_HOSTS.len()];
                let path = REQ_PATHS[usize::from(p) % REQ_PATHS.len()];
                let method = if post { "POST" } else { "GET" };
                let best = |pattern: &str| {
                    model
                        .iter()
                        .filter(|(h, p, equals, m, _)| {
                            *h == pattern
                                && if *equals {
                                    path == *p
                                } else {
                                    path.starts_with(p)
                                }
                                && m.is_none_or(|m| m == method)
                        })
                        .max_by_key(|(_, p, equals, m, _)| (*equals, p.len(), m.is_some()))
                        .map(|r| r.4.clone())
                };
                let wildcard = host
                    .split_once('.')
                    .map(|(_, suffix)| format!("*.{suffix}"));
                let expected = best(host).or_else(|| wildcard.and_then(|w| best(&w)));
                let got = cluster_of(router.lookup(host, path, method)).map(str::to_owned);
                if got != expected {
                    return TestResult::error(format!(
                        "{method} {host}{path}: got {got:?}, expected {expected:?}"
                    ));
                }
            }
            TestResult::passed()
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop as fn(Vec<(u8, u8, bool, u8)>, Vec<(u8, u8, bool)>) -> TestResult);
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(host_without_port("Example.COM:80"), "example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("example.com."), "example.com");
    }
}
