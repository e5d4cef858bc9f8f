//! What every access record shares, whatever its protocol: the tracing
//! target records go to and how a field is written (`-` for an absent
//! value, tags as `key=value,…`, durations in milliseconds).
//!
//! Owns formatting only; each protocol owns its record's shape
//! (`udp/access_log.rs`, `tcp/access.rs`, `http/access.rs`) and decides
//! when to emit it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The tracing target access records go to.
pub(crate) const ACCESS_TARGET: &str = "access";

/// `-` for an absent value, as in classic access logs.
pub(crate) struct OrDash<T>(pub(crate) Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Tags as `key=value,key=value` (sorted by key), `-` when none.
pub(crate) struct Tags<'a>(pub(crate) Option<&'a BTreeMap<String, String>>);

impl fmt::Display for Tags<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(tags) if !tags.is_empty() => {
                for (i, (k, v)) in tags.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{k}={v}")?;
                }
                Ok(())
            }
            _ => f.write_str("-"),
        }
    }
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
