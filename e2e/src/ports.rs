//! Loopback ports for listeners.
//!
//! A listener's port must be free when the master binds it, which may be
//! seconds after the test picked it. A port obtained by binding port 0 comes
//! from the kernel's ephemeral range, where any other process's `bind(0)` or
//! outgoing socket may take it in the meantime (a load generator with
//! thousands of sockets makes that likely). So ports are picked **below** the
//! ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), where only an
//! explicit bind can land, checked free for both UDP and TCP, and never
//! handed out twice by one test process.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static NEXT: AtomicU32 = AtomicU32::new(0);

/// `127.0.0.1`.
pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// `::1`.
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Width of the window below the ephemeral range ports are picked from.
const WINDOW: u32 = 12_000;

/// The first port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn bindable(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
}

/// A loopback address whose port is free for UDP and TCP right now, outside
/// the ephemeral range.
pub fn free_addr(ip: IpAddr) -> SocketAddr {
    let high = ephemeral_low().max(WINDOW + 1024);
    let low = high - WINDOW;
    // Test processes running side by side start at different places.
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..WINDOW {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + seed.wrapping_add(n.wrapping_mul(7_919)) % WINDOW) as u16;
        let addr = SocketAddr::new(ip, port);
        if !bindable(addr) {
            continue;
        }
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed.get_or_insert_with(HashSet::new).insert(port) {
            return addr;
        }
    }
    panic!("no free UDP+TCP port on {ip} in {low}..{high}");
}

/// A free IPv4 loopback address.
pub fn free_v4() -> SocketAddr {
    free_addr(V4)
}

/// Binds a socket with `bind` on a port from [`free_v4`], taking another
/// port when this one was bound by someone else in between (a test
/// process beside ours may bind it explicitly after the check): for a
/// socket that must hold a port now, unlike a listener address picked for
/// later.
pub fn bind_free_v4<T>(bind: impl Fn(SocketAddr) -> std::io::Result<T>) -> T {
    let mut last = None;
    for _ in 0..50 {
        match bind(free_v4()) {
            Ok(socket) => return socket,
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => last = Some(error),
            Err(error) => panic!("binding a free loopback port: {error}"),
        }
    }
    panic!("50 free loopback ports were all taken before we could bind them: {last:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_bindable_and_distinct() {
        let low = ephemeral_low();
        let picked: Vec<SocketAddr> = (0..50).map(|_| free_v4()).collect();
        let distinct: HashSet<u16> = picked.iter().map(|a| a.port()).collect();
        assert_eq!(distinct.len(), picked.len());
        for addr in picked {
            assert!(
                u32::from(addr.port()) < low,
                "{addr} is in the ephemeral range"
            );
            assert!(u32::from(addr.port()) >= 1024, "{addr} is privileged");
        }
        let v6 = free_addr(V6);
        assert!(UdpSocket::bind(v6).is_ok());
    }
}
