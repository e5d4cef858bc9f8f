//! Which command socket to talk to: `--socket PATH`, else `command_socket`
//! of the `-c` configuration file, else `./sozu.sock`.
//!
//! Only the keys a client needs are read from the configuration file
//! (`command_socket`, `max_command_buffer_size`), so a client still reaches
//! its master when some unrelated part of the file no longer validates (the
//! master may be running an older version of it). Never connects anything.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

/// Sōzu's default command socket path.
pub const DEFAULT_SOCKET: &str = "./sozu.sock";

/// The largest answer accepted when the configuration says nothing: larger
/// than the master's default (163840) because cluster and metric listings
/// grow with the configuration.
pub const DEFAULT_MAX_ANSWER_SIZE: usize = 16 * 1024 * 1024;

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub socket: PathBuf,
    pub max_answer_size: usize,
}

/// Resolves the target from the command line flags.
pub fn resolve(socket: Option<&Path>, config: Option<&Path>) -> anyhow::Result<Target> {
    let from_config = match config {
        Some(path) => Some(read_config(path)?),
        None => None,
    };
    let max_answer_size = from_config
        .as_ref()
        .and_then(|c| c.max_command_buffer_size)
        .map_or(DEFAULT_MAX_ANSWER_SIZE, |size| {
            size.max(DEFAULT_MAX_ANSWER_SIZE)
        });
    let socket = match (socket, from_config.and_then(|c| c.command_socket)) {
        (Some(socket), _) => socket.to_path_buf(),
        (None, Some(socket)) => socket,
        (None, None) => PathBuf::from(DEFAULT_SOCKET),
    };
    Ok(Target {
        socket,
        max_answer_size,
    })
}

/// What a client reads from the configuration file.
#[derive(Debug, Default)]
struct ClientConfig {
    command_socket: Option<PathBuf>,
    max_command_buffer_size: Option<usize>,
}

fn read_config(path: &Path) -> anyhow::Result<ClientConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    parse_config(&text, path)
}

/// Reads the client keys of a configuration text; a relative
/// `command_socket` is relative to the configuration file's directory.
fn parse_config(text: &str, path: &Path) -> anyhow::Result<ClientConfig> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("cannot parse configuration file {}", path.display()))?;
    let command_socket = match table.get("command_socket") {
        None => None,
        Some(toml::Value::String(socket)) => {
            let dir = path.parent().unwrap_or_else(|| Path::new(""));
            Some(dir.join(socket))
        }
        Some(other) => {
            return Err(anyhow!(
                "{}: command_socket must be a string, found {}",
                path.display(),
                other.type_str()
            ))
        }
    };
    let max_command_buffer_size = match table.get("max_command_buffer_size") {
        None => None,
        Some(toml::Value::Integer(size)) => usize::try_from(*size).ok(),
        Some(other) => {
            return Err(anyhow!(
                "{}: max_command_buffer_size must be an integer, found {}",
                path.display(),
                other.type_str()
            ))
        }
    };
    Ok(ClientConfig {
        command_socket,
        max_command_buffer_size,
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
        let parsed = parse_config(
            "command_socket = \"run/sozu.sock\"\nworker_count = 2\n",
            Path::new("/etc/sozu/config.toml"),
        )
        .unwrap();
        assert_eq!(
            parsed.command_socket,
            Some(PathBuf::from("/etc/sozu/run/sozu.sock"))
        );
    }

    #[test]
    fn configuration_without_socket_falls_back_to_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "worker_count = 2\n").unwrap();
        let target = resolve(None, Some(&config)).unwrap();
        assert_eq!(target.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(target.max_answer_size, DEFAULT_MAX_ANSWER_SIZE);
    }

    #[test]
    fn wrong_socket_type_names_the_key() {
        let err = parse_config("command_socket = 3\n", Path::new("c.toml")).unwrap_err();
        assert!(
            err.to_string().contains("command_socket must be a string"),
            "{err}"
        );
    }

    #[test]
    fn missing_configuration_file_is_an_error_naming_it() {
        let err = resolve(None, Some(Path::new("/nonexistent/sozu.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sozu.toml"), "{err}");
    }
}
