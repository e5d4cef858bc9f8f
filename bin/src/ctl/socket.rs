//! Which command socket to talk to: `--socket PATH`, else `command_socket`
//! of the `-c` configuration file, else `./sozu.sock`.
//!
//! The configuration file is read with the master's own loader
//! ([`Config::load_from_path`]), so a relative `command_socket` (or its
//! absence) resolves exactly as the master resolved it: against the
//! configuration file's directory. Never connects anything.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sozu_command_lib::config::Config;

/// The command socket used without `--socket` nor `-c`.
pub(crate) const DEFAULT_SOCKET: &str = "./sozu.sock";

/// The largest answer accepted when the configuration says nothing: larger
/// than the master's default (163840) because cluster and metric listings
/// grow with the configuration.
pub(crate) const DEFAULT_MAX_ANSWER_SIZE: usize = 16 * 1024 * 1024;

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub socket: PathBuf,
    pub max_answer_size: usize,
}

/// Resolves the target from the command line flags. The configuration file
/// is not read at all when `--socket` is given, so a file that no longer
/// validates cannot lock a client out of a running master.
pub(crate) fn resolve(socket: Option<&Path>, config: Option<&Path>) -> anyhow::Result<Target> {
    if let Some(socket) = socket {
        return Ok(Target {
            socket: socket.to_path_buf(),
            max_answer_size: DEFAULT_MAX_ANSWER_SIZE,
        });
    }
    let Some(path) = config else {
        return Ok(Target {
            socket: PathBuf::from(DEFAULT_SOCKET),
            max_answer_size: DEFAULT_MAX_ANSWER_SIZE,
        });
    };
    let config = Config::load_from_path(path).with_context(|| {
        format!(
            "cannot use configuration file {} (give --socket PATH to reach the master anyway)",
            path.display()
        )
    })?;
    Ok(Target {
        socket: config.command_socket,
        max_answer_size: config
            .max_command_buffer_size
            .get()
            .max(DEFAULT_MAX_ANSWER_SIZE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_configuration_which_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "command_socket = \"/run/sozu/sozu.sock\"\n").unwrap();

        let flag = resolve(Some(Path::new("/tmp/x.sock")), Some(&config)).unwrap();
        assert_eq!(flag.socket, PathBuf::from("/tmp/x.sock"));
        let from_file = resolve(None, Some(&config)).unwrap();
        assert_eq!(from_file.socket, PathBuf::from("/run/sozu/sozu.sock"));
        let default = resolve(None, None).unwrap();
        assert_eq!(default.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn relative_socket_is_relative_to_the_configuration_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "command_socket = \"run/sozu.sock\"\n").unwrap();
        let target = resolve(None, Some(&config)).unwrap();
        assert_eq!(target.socket, dir.path().join("run/sozu.sock"));
    }

    #[test]
    fn configuration_without_socket_uses_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "worker_count = 2\nmax_command_buffer_size = 33554432\n",
        )
        .unwrap();
        let target = resolve(None, Some(&config)).unwrap();
        assert_eq!(target.socket, dir.path().join("./sozu.sock"));
        assert_eq!(target.max_answer_size, 33_554_432);
    }

    #[test]
    fn an_invalid_configuration_names_the_file_and_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "command_socket = 3\n").unwrap();
        let error = format!("{:#}", resolve(None, Some(&config)).unwrap_err());
        assert!(error.contains("config.toml"), "{error}");
        assert!(error.contains("--socket"), "{error}");
    }

    #[test]
    fn a_missing_configuration_file_is_an_error_naming_it() {
        let error = resolve(None, Some(Path::new("/nonexistent/sozu.toml"))).unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent/sozu.toml"),
            "{error:#}"
        );
    }
}
