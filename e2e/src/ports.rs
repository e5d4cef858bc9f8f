//! Ephemeral loopback ports for listeners.
//!
//! A port is chosen by binding port 0 (UDP and TCP on the same number, so a
//! test may put both protocols on it) and releasing it. A process-wide set
//! keeps two tests of one test binary from being handed the same number.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// `127.0.0.1`.
pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// `::1`.
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A loopback address whose port is free for UDP and TCP right now.
pub fn free_addr(ip: IpAddr) -> SocketAddr {
    for _ in 0..64 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind an ephemeral UDP port");
        let addr = udp.local_addr().expect("local address of a bound socket");
        if TcpListener::bind(addr).is_err() {
            continue;
        }
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed.get_or_insert_with(HashSet::new).insert(addr.port()) {
            return addr;
        }
    }
    panic!("no free UDP+TCP port on {ip} after 64 tries");
}

/// A free IPv4 loopback address.
pub fn free_v4() -> SocketAddr {
    free_addr(V4)
}
