//! A walker over the spanned TOML tree that turns each value into a typed
//! Rust value or a [`ConfigError`] naming the key path, the value, the reason
//! and the line.
//!
//! It owns the "every key is consumed exactly once" bookkeeping: a table
//! reader remembers which keys were read, and [`TableReader::finish`] refuses
//! the rest (or warns about the documented accepted-and-ignored ones). It
//! never decides what a key means: that lives in `parse.rs`.

use std::net::SocketAddr;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{ConfigError, Location};

/// The text being parsed and the name used for it in messages.
pub(super) struct Document<'a> {
    text: &'a str,
    origin: String,
    /// Byte offsets of every `\n`, computed once so that locating a value
    /// is a binary search: reporting lines stays O(log n) per value, and
    /// validating a file of N listeners stays linear.
    newlines: Vec<usize>,
}

impl<'a> Document<'a> {
    pub(super) fn new(text: &'a str, origin: String) -> Self {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|(_, b)| *b == b'\n')
            .map(|(i, _)| i)
            .collect();
        Document {
            text,
            origin,
            newlines,
        }
    }

    /// The 1-based line holding byte `offset`.
    pub(super) fn location(&self, offset: usize) -> Location {
        let end = offset.min(self.text.len());
        // Newlines strictly before `end`.
        let line = self.newlines.partition_point(|&n| n < end) + 1;
        Location {
            origin: self.origin.clone(),
            line,
        }
    }
}

/// Joins a key path: `""` + `a` = `a`, `a` + `b` = `a.b`.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Reads the keys of one TOML table, tracking which ones were consumed.
pub(super) struct TableReader<'a> {
    doc: &'a Document<'a>,
    path: String,
    span: Range<usize>,
    entries: Vec<(&'a str, Range<usize>, &'a Spanned<DeValue<'a>>)>,
    used: Vec<bool>,
}

impl<'a> TableReader<'a> {
    pub(super) fn new(
        doc: &'a Document<'a>,
        path: String,
        span: Range<usize>,
        table: &'a DeTable<'a>,
    ) -> Self {
        let entries: Vec<_> = table
            .iter()
            .map(|(key, value)| (key.get_ref().as_ref(), key.span(), value))
            .collect();
        let used = vec![false; entries.len()];
        TableReader {
            doc,
            path,
            span,
            entries,
            used,
        }
    }

    /// The key path of this table (`""` for the document root).
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// Where this table starts.
    pub(super) fn location(&self) -> Location {
        self.doc.location(self.span.start)
    }

    /// Takes `key` if present, marking it consumed.
    pub(super) fn get(&mut self, key: &str) -> Option<ValueReader<'a>> {
        let index = self.entries.iter().position(|(k, _, _)| *k == key)?;
        self.used[index] = true;
        let (_, _, value) = self.entries[index];
        Some(ValueReader {
            doc: self.doc,
            path: join(&self.path, key),
            value,
        })
    }

    /// Takes `key`, or fails naming it as missing.
    pub(super) fn require(&mut self, key: &str) -> Result<ValueReader<'a>, ConfigError> {
        match self.get(key) {
            Some(value) => Ok(value),
            None => Err(ConfigError::MissingKey {
                key: join(&self.path, key),
                at: self.location(),
            }),
        }
    }

    /// Every key of this table, in document order of the underlying map.
    pub(super) fn take_all(&mut self) -> Vec<(String, ValueReader<'a>)> {
        self.used.iter_mut().for_each(|u| *u = true);
        self.entries
            .iter()
            .map(|(key, _, value)| {
                (
                    (*key).to_owned(),
                    ValueReader {
                        doc: self.doc,
                        path: join(&self.path, key),
                        value,
                    },
                )
            })
            .collect()
    }

    /// Refuses any key not consumed, except those in `ignored`, which are
    /// Sōzu settings we accept for compatibility but do not implement.
    pub(super) fn finish(self, ignored: &[&str]) -> Result<(), ConfigError> {
        for ((key, key_span, _), used) in self.entries.iter().zip(&self.used) {
            if *used {
                continue;
            }
            let path = join(&self.path, key);
            let at = self.doc.location(key_span.start);
            if ignored.contains(key) {
                tracing::warn!(key = %path, at = %at, "accepted and ignored: sozu does not implement this Sōzu setting");
            } else {
                return Err(ConfigError::UnknownKey { key: path, at });
            }
        }
        Ok(())
    }
}

/// One value with its key path, ready to be read as a typed value.
pub(super) struct ValueReader<'a> {
    doc: &'a Document<'a>,
    path: String,
    value: &'a Spanned<DeValue<'a>>,
}

impl<'a> ValueReader<'a> {
    /// The key path of this value, e.g. `clusters.dns.udp.responses`.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// Where this value is.
    pub(super) fn location(&self) -> Location {
        self.doc.location(self.value.span().start)
    }

    /// The value as the user wrote it, for messages.
    pub(super) fn shown(&self) -> String {
        match self.value.get_ref() {
            DeValue::String(s) => format!("{s:?}"),
            DeValue::Integer(i) => i.to_string(),
            DeValue::Float(f) => f.to_string(),
            DeValue::Boolean(b) => b.to_string(),
            DeValue::Datetime(d) => d.to_string(),
            DeValue::Array(_) => "an array".to_owned(),
            DeValue::Table(_) => "a table".to_owned(),
        }
    }

    /// An error saying what was expected instead of this value.
    pub(super) fn invalid(&self, expected: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            key: self.path.clone(),
            expected: expected.into(),
            got: self.shown(),
            at: self.location(),
        }
    }

    pub(super) fn str(&self) -> Result<&'a str, ConfigError> {
        match self.value.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.invalid("a string")),
        }
    }

    pub(super) fn non_empty_string(&self) -> Result<String, ConfigError> {
        match self.value.get_ref() {
            DeValue::String(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(self.invalid("a non-empty string")),
        }
    }

    pub(super) fn string(&self) -> Result<String, ConfigError> {
        self.str().map(str::to_owned)
    }

    pub(super) fn bool(&self) -> Result<bool, ConfigError> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.invalid("true or false")),
        }
    }

    /// An integer in `min..=max`; the message says ">= min" when `max` is
    /// only the type's limit.
    pub(super) fn integer(&self, min: u64, max: u64, open_max: bool) -> Result<u64, ConfigError> {
        let expected = || {
            if open_max {
                format!("an integer >= {min}")
            } else {
                format!("an integer between {min} and {max}")
            }
        };
        match self.value.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n >= i128::from(min) && n <= i128::from(max) => {
                    u64::try_from(n).map_err(|_| self.invalid(expected()))
                }
                _ => Err(self.invalid(expected())),
            },
            _ => Err(self.invalid(expected())),
        }
    }

    pub(super) fn u32_at_least(&self, min: u32) -> Result<u32, ConfigError> {
        let n = self.integer(u64::from(min), u64::from(u32::MAX), true)?;
        u32::try_from(n).map_err(|_| self.invalid(format!("an integer >= {min}")))
    }

    pub(super) fn u32_between(&self, min: u32, max: u32) -> Result<u32, ConfigError> {
        let n = self.integer(u64::from(min), u64::from(max), false)?;
        u32::try_from(n).map_err(|_| self.invalid(format!("an integer between {min} and {max}")))
    }

    pub(super) fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        let expected = "a socket address like \"127.0.0.1:8080\" or \"[::1]:8080\"";
        match self.value.get_ref() {
            DeValue::String(s) => {
                let addr: SocketAddr = s.parse().map_err(|_| self.invalid(expected))?;
                if addr.port() == 0 {
                    return Err(self.invalid(
                        "a socket address with a port in 1..=65535 (port 0 would bind a different port in every worker)",
                    ));
                }
                Ok(addr)
            }
            _ => Err(self.invalid(expected)),
        }
    }

    /// One of `names`, spelled exactly (Sōzu's upper-case enum names).
    pub(super) fn one_of(&self, names: &[&'static str]) -> Result<&'static str, ConfigError> {
        let expected = || {
            let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
            format!("one of {}", quoted.join(", "))
        };
        match self.value.get_ref() {
            DeValue::String(s) => names
                .iter()
                .find(|n| **n == s.as_ref())
                .copied()
                .ok_or_else(|| self.invalid(expected())),
            _ => Err(self.invalid(expected())),
        }
    }

    pub(super) fn table(&self) -> Result<TableReader<'a>, ConfigError> {
        match self.value.get_ref() {
            DeValue::Table(t) => Ok(TableReader::new(
                self.doc,
                self.path.clone(),
                self.value.span(),
                t,
            )),
            _ => Err(self.invalid("a table")),
        }
    }

    /// The elements of an array, with paths `key[0]`, `key[1]`, …
    pub(super) fn array(&self) -> Result<Vec<ValueReader<'a>>, ConfigError> {
        match self.value.get_ref() {
            DeValue::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(index, value)| ValueReader {
                    doc: self.doc,
                    path: format!("{}[{index}]", self.path),
                    value,
                })
                .collect()),
            _ => Err(self.invalid("an array")),
        }
    }
}
