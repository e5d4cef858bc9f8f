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
pub(crate) fn save(state: &ConfigState, path: &Path) -> Result<usize, Box<StateFileError>> {
    state.save_to_path(path).map_err(Box::new)
}

/// Reads and checks a state file: the whole file must build a state on its
/// own (errors name the line); returns its orders in file order.
pub(crate) fn read(path: &Path, config: &Config) -> Result<Vec<Request>, Box<StateFileError>> {
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
/// that conflict with what the configuration already built are skipped, and
/// so are orders the workers would refuse (a file saved by an older
/// version may hold some): each is logged. Returns how many orders were
/// applied.
pub(crate) fn load_into(
    state: &mut ConfigState,
    path: &Path,
    config: &Config,
) -> Result<usize, Box<StateFileError>> {
    let requests = read(path, config)?;
    // One pass per order the workers would refuse (usually none): each pass
    // replays the file without the orders found so far.
    let mut skipped = std::collections::BTreeSet::new();
    'pass: loop {
        let mut candidate = state.clone();
        let mut applied = 0;
        for (index, request) in requests.iter().enumerate() {
            if skipped.contains(&index) {
                continue;
            }
            if let Ok(DispatchOutcome::Applied) = candidate.dispatch(request) {
                if let Err(error) = super::prevalidate::check(&candidate, request) {
                    tracing::error!(
                        path = %path.display(),
                        order = index + 1,
                        %error,
                        "saved state: an order the workers would refuse is skipped"
                    );
                    skipped.insert(index);
                    continue 'pass;
                }
                applied += 1;
            }
        }
        *state = candidate;
        return Ok(applied);
    }
}
