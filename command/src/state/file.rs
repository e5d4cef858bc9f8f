//! State files: a state saved as the orders that rebuild it, one
//! `command::Request` per line in JSON (JSON lines), and loaded back by
//! replaying those orders on an empty state.
//!
//! Owns the only I/O of the state module. Never panics on a file's content:
//! a line that is not an order, an order that is not a state change, or an
//! order the state refuses is an error naming the line. A file over the size
//! limit is refused before it is read whole. Saving writes a temporary file
//! beside the target and renames it over, so a crash never leaves half a file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::command::Request;
use crate::state::{order_name, ConfigState, StateError};

/// Why a state file could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading the file failed.
    #[error("state file {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the file (or its temporary twin) failed.
    #[error("state file {path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is larger than the limit the caller allows.
    #[error("state file {path}: {size} bytes is over the limit of {max_size} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, bytes.
        size: u64,
        /// The limit, bytes.
        max_size: u64,
    },
    /// A line is not UTF-8.
    #[error("state file {path}, line {line}: not UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
    /// A line is not a JSON-encoded order.
    #[error("state file {path}, line {line}: not an order: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A line holds an order that does not change the state (e.g. `status`).
    #[error("state file {path}, line {line}: {order} is not a state-changing order")]
    NotAStateOrder {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The order's name.
        order: &'static str,
    },
    /// The state refused the order on this line.
    #[error("state file {path}, line {line}: {order} refused: {source}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The order's name.
        order: &'static str,
        /// The cause.
        #[source]
        source: Box<StateError>,
    },
}

impl ConfigState {
    /// Saves the state as the orders that rebuild it (JSON lines) and
    /// returns how many orders were written. The file is written to a
    /// temporary file in the same directory (mode 0600: it holds the whole
    /// configuration) and renamed over `path`.
    pub fn save_to_path(&self, path: &Path) -> Result<usize, StateFileError> {
        let orders = self.generate_requests();
        let write_error = |source| StateFileError::Write {
            path: path.to_owned(),
            source,
        };
        let temp = temporary_path(path).map_err(write_error)?;
        let result = write_lines(&temp, &orders).and_then(|()| fs::rename(&temp, path));
        if let Err(source) = result {
            // Best effort: the temporary file may not even exist.
            let _ = fs::remove_file(&temp);
            return Err(write_error(source));
        }
        // Make the rename itself durable; a failure here leaves a complete
        // file in place, so it is only logged.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
                tracing::warn!(path = %path.display(), %error, "could not sync the state file's directory");
            }
        }
        tracing::info!(path = %path.display(), orders = orders.len(), "state saved");
        Ok(orders.len())
    }

    /// Loads a state file by replaying its orders on an empty state. Files
    /// larger than `max_size` bytes are refused before being read whole.
    /// Blank lines are skipped.
    pub fn load_from_path(path: &Path, max_size: u64) -> Result<ConfigState, StateFileError> {
        let mut state = ConfigState::new();
        for (line, request) in read_requests(path, max_size)? {
            state
                .dispatch(&request)
                .map_err(|source| StateFileError::Refused {
                    path: path.to_owned(),
                    line,
                    order: request.request_type.as_ref().map_or("none", order_name),
                    source: Box::new(source),
                })?;
        }
        tracing::info!(path = %path.display(), "state loaded");
        Ok(state)
    }
}

/// Reads a state file's orders with their 1-based line numbers, checking
/// each is a state-changing order, without applying them.
pub fn read_requests(path: &Path, max_size: u64) -> Result<Vec<(usize, Request)>, StateFileError> {
    let bytes = read_bounded(path, max_size)?;
    let mut requests = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = index + 1;
        let text = std::str::from_utf8(raw).map_err(|_| StateFileError::NotUtf8 {
            path: path.to_owned(),
            line,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let request: Request =
            serde_json::from_str(text).map_err(|source| StateFileError::Parse {
                path: path.to_owned(),
                line,
                source,
            })?;
        if !super::is_state_change(&request) {
            return Err(StateFileError::NotAStateOrder {
                path: path.to_owned(),
                line,
                order: request.request_type.as_ref().map_or("none", order_name),
            });
        }
        requests.push((line, request));
    }
    Ok(requests)
}

/// Reads at most `max_size` bytes, refusing a larger file from its metadata
/// first and again if it grew while being read.
fn read_bounded(path: &Path, max_size: u64) -> Result<Vec<u8>, StateFileError> {
    let read_error = |source| StateFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let too_large = |size| StateFileError::TooLarge {
        path: path.to_owned(),
        size,
        max_size,
    };
    if size > max_size {
        return Err(too_large(size));
    }
    let mut bytes = Vec::new();
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let read = bytes.len() as u64;
    if read > max_size {
        return Err(too_large(read));
    }
    Ok(bytes)
}

/// `dir/.name.tmp.PID`: same directory (so the rename is atomic), hidden,
/// and distinct per process.
fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp.{}", std::process::id()));
    Ok(path.with_file_name(temp_name))
}

fn write_lines(path: &Path, orders: &[Request]) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let mut writer = BufWriter::new(file);
    for request in orders {
        serde_json::to_writer(&mut writer, request)?;
        writer.write_all(b"\n")?;
    }
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}
