//! What `/proc` says about sozu processes: open fds, socket inodes, the
//! UDP sockets bound to a port, liveness, and the processes started for one
//! test (tagged through their environment).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

/// Number of open fds of `pid` (0 if it is gone).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Inodes of the sockets `pid` holds open.
pub fn socket_inodes(pid: i32) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return inodes;
    };
    for entry in dir.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Inodes of the unconnected UDP sockets bound to `addr`'s port and family
/// (listening sockets; a flow's upstream socket is connected and has its own
/// port), from `/proc/net/udp` or `/proc/net/udp6`.
pub fn udp_listener_inodes(addr: SocketAddr) -> BTreeSet<u64> {
    udp_inodes(addr, true)
}

/// Inodes of every UDP socket (connected or not) whose local port is
/// `addr`'s, e.g. the upstream socket a backend saw a datagram from.
pub fn udp_inodes_on_port(addr: SocketAddr) -> BTreeSet<u64> {
    udp_inodes(addr, false)
}

/// The pid among `pids` that holds the UDP socket bound to `addr`'s port.
pub fn owner_of_udp_port(addr: SocketAddr, pids: &[i32]) -> Option<i32> {
    let inodes = udp_inodes_on_port(addr);
    pids.iter()
        .copied()
        .find(|pid| !socket_inodes(*pid).is_disjoint(&inodes))
}

fn udp_inodes(addr: SocketAddr, unconnected_only: bool) -> BTreeSet<u64> {
    let table = if addr.is_ipv4() {
        "/proc/net/udp"
    } else {
        "/proc/net/udp6"
    };
    // The kernel produces this table in chunks: a socket closed elsewhere
    // between two chunks shifts the rest and may hide a line from one read.
    // Several reads with a large buffer, united, see every stable socket.
    let mut inodes = BTreeSet::new();
    for _ in 0..3 {
        inodes.extend(parse_udp_table(
            &read_whole(table),
            addr.port(),
            unconnected_only,
        ));
    }
    inodes
}

/// Bytes waiting unread in the receive queues of the unconnected UDP
/// sockets bound to `addr`'s port (summed over them: every worker's
/// SO_REUSEPORT socket), from `/proc/net/udp` or `/proc/net/udp6`. Proves a
/// datagram arrived and was left unread (a deactivated listener).
pub fn udp_listener_rx_queue(addr: SocketAddr) -> u64 {
    let table = if addr.is_ipv4() {
        "/proc/net/udp"
    } else {
        "/proc/net/udp6"
    };
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    read_whole(table)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10
                || port_of(fields[1]) != Some(addr.port())
                || port_of(fields[2]) != Some(0)
            {
                return None;
            }
            let rx = fields[4].split(':').nth(1)?;
            u64::from_str_radix(rx, 16).ok()
        })
        .sum()
}

/// Reads a /proc file with large reads (one chunk per read call).
fn read_whole(path: &str) -> String {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 22];
    loop {
        match file.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_udp_table(text: &str, port: u16, unconnected_only: bool) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            continue;
        }
        let port_of = |field: &str| {
            field
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let remote_port = port_of(fields[2]);
        if port_of(fields[1]) == Some(port) && (!unconnected_only || remote_port == Some(0)) {
            if let Ok(inode) = fields[9].parse() {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Pids of live processes whose environment contains `NAME=value`.
pub fn pids_with_env(name: &str, value: &str) -> Vec<i32> {
    let needle = format!("{name}={value}").into_bytes();
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("environ"))
        else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_slice())
            && is_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_udp_socket_is_found_by_port_and_held_by_this_process() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let inodes = udp_listener_inodes(addr);
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        let mine = socket_inodes(std::process::id() as i32);
        assert!(inodes.is_subset(&mine));
        drop(socket);
        assert!(udp_listener_inodes(addr).is_empty());
    }

    #[test]
    fn this_process_is_alive_and_a_missing_pid_is_not() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(fd_count(me) >= 3, "stdin, stdout and stderr at least");
        assert!(!is_alive(i32::MAX));
        assert_eq!(fd_count(i32::MAX), 0);
    }
}
