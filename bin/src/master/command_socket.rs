//! The command socket's file: creating it safely (stale file, symlink,
//! foreign owner, another live master), its 0600 mode, and the credentials
//! check on every accepted client.
//!
//! Owns the filesystem side of the command socket only; the clients' framing
//! and orders live in `clients.rs` and `orders.rs`. It must never remove a
//! socket another live master listens on, follow a symlink, or leave the
//! socket reachable by other users even for an instant.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{bail, Context};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::Mode;

/// Who is on the other end of a command connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// Reads the peer credentials of an accepted connection.
pub(crate) fn peer_credentials(stream: &impl std::os::fd::AsFd) -> io::Result<Peer> {
    let creds = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
    Ok(Peer {
        uid: creds.uid(),
        gid: creds.gid(),
        pid: creds.pid(),
    })
}

/// Whether `peer` may send orders: root, the master's own uid, or a uid the
/// configuration allows (`command_allowed_uids`).
pub(crate) fn is_allowed(peer: &Peer, owner_uid: u32, allowed_uids: &[u32]) -> bool {
    peer.uid == 0 || peer.uid == owner_uid || allowed_uids.contains(&peer.uid)
}

/// Creates the command socket at `path`, mode 0600, non-blocking.
///
/// An existing path is only replaced when it is a socket owned by us that
/// nobody answers on (a crashed master's leftover). A symlink, a non-socket,
/// a file owned by another user, or a socket another master answers on is
/// refused with one clear error.
pub(crate) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let owner = nix::unistd::geteuid().as_raw();
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            let kind = meta.file_type();
            if kind.is_symlink() {
                bail!("command socket {}: refusing a symlink", path.display());
            }
            if !kind.is_socket() {
                bail!(
                    "command socket {}: the path exists and is not a socket",
                    path.display()
                );
            }
            if meta.uid() != owner {
                bail!(
                    "command socket {}: owned by uid {}, not by this user (uid {owner})",
                    path.display(),
                    meta.uid()
                );
            }
            match UnixStream::connect(path) {
                Ok(_) => bail!(
                    "command socket {}: another master is already listening on it",
                    path.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing a stale command socket");
                    fs::remove_file(path).with_context(|| {
                        format!(
                            "command socket {}: cannot remove the stale socket",
                            path.display()
                        )
                    })?;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "command socket {}: cannot probe the existing socket",
                            path.display()
                        )
                    })
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("command socket {}", path.display()));
        }
    }
    // The umask makes bind(2) create the file 0600 directly: there is no
    // window where another user could connect before the chmod.
    let previous = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener =
        bound.with_context(|| format!("command socket {}: cannot bind", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("command socket {}: cannot set mode 0600", path.display()))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("command socket {}", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_socket_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sozu.sock");
        let _listener = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sozu.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file behind");
        let _listener = bind(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
    }

    #[test]
    fn live_socket_of_another_master_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sozu.sock");
        let _other = UnixListener::bind(&path).unwrap();
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("another master"), "{err}");
    }

    #[test]
    fn symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere.sock");
        let path = dir.path().join("sozu.sock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
    }

    #[test]
    fn regular_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sozu.sock");
        fs::write(&path, b"precious").unwrap();
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn only_owner_root_and_allowed_uids_pass() {
        let peer = |uid| Peer {
            uid,
            gid: 0,
            pid: 1,
        };
        assert!(is_allowed(&peer(1000), 1000, &[]));
        assert!(is_allowed(&peer(0), 1000, &[]));
        assert!(is_allowed(&peer(2000), 1000, &[2000]));
        assert!(!is_allowed(&peer(2001), 1000, &[2000]));
    }

    #[test]
    fn peer_credentials_name_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = peer_credentials(&a).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    }
}
