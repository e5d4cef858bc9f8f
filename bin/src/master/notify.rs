//! systemd's readiness protocol (`sd_notify(3)`), without libsystemd: one
//! datagram of `KEY=VALUE` lines sent to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
//!
//! The master sends `READY=1` once every worker answered its boot orders
//! (so every listener of the configuration is bound) and `STOPPING=1` when
//! a stop begins. Without `$NOTIFY_SOCKET` (not under systemd, or
//! `Type=simple`) nothing is sent. A failure to notify is logged, never
//! fatal: systemd then reports the unit itself.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for `Type=notify` services.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1\nSTATUS=…"`) to `$NOTIFY_SOCKET`, if set.
/// Returns whether a datagram was sent.
pub(crate) fn notify(state: &str) -> bool {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return false;
    };
    let target = target.to_string_lossy().into_owned();
    match send(&target, state) {
        Ok(()) => {
            tracing::debug!(socket = %target, state, "systemd notified");
            true
        }
        Err(error) => {
            tracing::warn!(socket = %target, %error, state, "cannot notify systemd");
            false
        }
    }
}

fn send(target: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else if target.starts_with('/') {
        socket.send_to(state.as_bytes(), target)?;
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor @abstract",
        ));
    }
    Ok(())
}

/// `READY=1` with the master's pid and a status line.
pub(crate) fn ready(workers: usize) -> bool {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving with {workers} worker(s)",
        std::process::id()
    ))
}

/// `STOPPING=1` with a status line saying which stop.
pub(crate) fn stopping(hard: bool) -> bool {
    let kind = if hard { "hard" } else { "soft" };
    notify(&format!(
        "STOPPING=1\nSTATUS={kind} stop: waiting for the workers"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("sozu-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_receiver = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = abstract_receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(send("relative/path", "READY=1").is_err());
    }
}
