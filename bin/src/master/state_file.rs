//! The master's use of state files (`save_state`, `load_state`,
//! `saved_state` at start, `automatic_state_save`): thin wrappers over the
//! state module's JSON-lines files, bounded by `max_state_file_size`.
//!
//! Never panics on a file: every failure (unwritable directory, oversized or
//! malformed file) is an error for the caller to answer with.

use std::path::Path;

use sozu_command_lib::command::Request;
use sozu_command_lib::config::Config;
use sozu_command_lib::state::file::read_requests;
use sozu_command_lib::state::{ConfigState, DispatchOutcome, StateFileError};

/// Writes `state` to `path`; returns the number of orders written.
pub fn save(state: &ConfigState, path: &Path) -> Result<usize, Box<StateFileError>> {
    state.save_to_path(path).map_err(Box::new)
}

/// Reads and checks a state file: the whole file must build a state on its
/// own (errors name the line); returns its orders in file order.
pub fn read(path: &Path, config: &Config) -> Result<Vec<Request>, Box<StateFileError>> {
    let max = config.max_state_file_size.get();
    // Validates every line against an empty state first.
    ConfigState::load_from_path(path, max).map_err(Box::new)?;
    Ok(read_requests(path, max)
        .map_err(Box::new)?
        .into_iter()
        .map(|(_, request)| request)
        .collect())
}

/// Replays a state file onto `state` (at start, for `saved_state`): orders
/// that conflict with what the configuration already built are skipped.
/// Returns how many orders were applied.
pub fn load_into(
    state: &mut ConfigState,
    path: &Path,
    config: &Config,
) -> Result<usize, Box<StateFileError>> {
    let mut applied = 0;
    for request in read(path, config)? {
        if let Ok(DispatchOutcome::Applied) = state.dispatch(&request) {
            applied += 1;
        }
    }
    Ok(applied)
}
