//! One range per knob, shared by the configuration file, the CLI, the
//! master's state and the workers, so a value one accepts the others accept.

use std::net::IpAddr;

/// The largest UDP payload a worker can receive: 65,535 minus the IPv4
/// (20) and UDP (8) headers. `max_rx_datagram_size` is 1..=this.
pub const MAX_RX_DATAGRAM_SIZE: u32 = 65_507;

/// Backend weights are 0..=this in the configuration file and the CLI
/// (the wire keeps Sōzu's `int32` and its rule: ≤ 0 counts as 1).
pub const MAX_WEIGHT: u32 = 255;

/// HSTS `max_age` when a policy is enabled without one: a year (Sōzu's
/// default), in seconds.
pub const DEFAULT_HSTS_MAX_AGE: u32 = 31_536_000;

/// The default `quic_cid_length` of a cluster keyed by QUIC connection ID
/// (quinn's and most stacks' server CID length), for the configuration file
/// and for a worker given an order that leaves it unset.
pub const DEFAULT_QUIC_CID_LENGTH: u8 = 8;

/// Why a backend address cannot be used, if it cannot: a broadcast,
/// multicast or unspecified (`0.0.0.0`, `::`) address receives nothing a
/// proxy could forward to.
pub fn unusable_backend_ip(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("an unspecified address (0.0.0.0, ::) is not a backend");
    }
    if ip.is_multicast() {
        return Some("a multicast address is not a backend");
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Some("a broadcast address is not a backend");
        }
    }
    None
}

/// `log_level` checked before use: a comma-separated list of directives,
/// each a level (`off`, `error`, `warn`, `info`, `debug`, `trace`) or
/// `target=level`. A bare word that is not a level (`"inf"`) is refused:
/// the filter syntax would read it as a target name and silently turn off
/// every other line, audit lines included.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    if filter.trim().is_empty() {
        return Err("an empty filter".to_owned());
    }
    for directive in filter.split(',') {
        let directive = directive.trim();
        if directive.is_empty() {
            return Err(format!("an empty directive in {filter:?}"));
        }
        match directive.rsplit_once('=') {
            Some((target, level)) => {
                if target.trim().is_empty() || !is_level(level) {
                    return Err(format!(
                        "{directive:?} is not target=level with level one of {}",
                        LEVELS.join(", ")
                    ));
                }
            }
            None => {
                if !is_level(directive) {
                    return Err(format!(
                        "{directive:?} is not a level (one of {}) nor target=level",
                        LEVELS.join(", ")
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters() {
        for ok in ["info", "INFO", "debug,sozu_lib=trace", "warn, sozu=off"] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["inf", "", "info,", "sozu=loud", "=info", "infoo,debug"] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backend_ips() {
        for bad in ["255.255.255.255", "224.0.0.1", "ff02::1", "0.0.0.0", "::"] {
            assert!(unusable_backend_ip(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for ok in ["127.0.0.1", "10.0.0.255", "::1"] {
            assert_eq!(unusable_backend_ip(ok.parse().unwrap()), None, "{ok}");
        }
    }
}

/// The largest compiled program of a `REGEX` path rule, bytes. Patterns
/// come from operators, but one with a huge repetition (`a{1000}{1000}`)
/// would otherwise eat a worker's memory at order time.
pub const MAX_PATH_REGEX_SIZE: usize = 1 << 20;

/// The deepest nesting of groups and repetitions in a `REGEX` path rule.
pub const MAX_PATH_REGEX_NESTING: u32 = 64;

/// The longest `REGEX` path rule, bytes.
pub const MAX_PATH_REGEX_LEN: usize = 4096;

/// Compiles the pattern of a `REGEX` path rule the way every worker does
/// (the configuration loader and the master's prevalidation call it too,
/// so a pattern one accepts all accept). The pattern is searched anywhere
/// in the request path, as in Sōzu: anchor it with `^` and `$` to match a
/// whole path. The regex crate's engine runs in time linear in the path.
pub fn compile_path_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_PATH_REGEX_LEN {
        return Err(format!(
            "longer than {MAX_PATH_REGEX_LEN} bytes ({} bytes)",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_PATH_REGEX_SIZE)
        .dfa_size_limit(MAX_PATH_REGEX_SIZE)
        .nest_limit(MAX_PATH_REGEX_NESTING)
        .build()
        // The crate's message spans several lines (pattern, caret, reason);
        // one line reads better in a CLI answer and a log.
        .map_err(|e| {
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
}

#[cfg(test)]
mod regex_tests {
    use super::*;

    #[test]
    fn path_regex_compiles_good_patterns_and_refuses_bad_ones() {
        let re = compile_path_regex("^/api/v[0-9]+/").unwrap();
        assert!(re.is_match("/api/v2/users"));
        assert!(!re.is_match("/api/vx/users"));
        let err = compile_path_regex("/api/(v1").unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("unclosed"), "{err}");
        assert!(compile_path_regex("a{1000}{1000}").is_err(), "size limit");
        assert!(compile_path_regex(&"x".repeat(MAX_PATH_REGEX_LEN + 1)).is_err());
    }
}
