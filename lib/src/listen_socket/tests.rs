use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::*;

fn loopback_any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A same-user stranger joining with SO_REUSEPORT.
fn stranger_udp(address: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn group_address(group: &[OwnedFd]) -> SocketAddr {
    let socket = UdpSocket::from(group[0].try_clone().unwrap());
    socket.local_addr().unwrap()
}

/// Reads every datagram waiting on `socket`, with their sources.
fn drain(socket: &UdpSocket, into: &mut Vec<SocketAddr>) {
    let mut buffer = [0u8; 64];
    while let Ok((_, source)) = socket.recv_from(&mut buffer) {
        into.push(source);
    }
}

#[test]
fn a_stranger_joining_the_group_gets_nothing_and_each_source_keeps_its_socket() {
    let group = bind_udp_group(loopback_any(), 2, ListenerSocketOptions::default()).unwrap();
    let address = group_address(&group);
    let stranger = stranger_udp(address).expect("same-user SO_REUSEPORT join");
    let members: Vec<UdpSocket> = group
        .iter()
        .map(|fd| UdpSocket::from(fd.try_clone().unwrap()))
        .collect();
    let clients: Vec<UdpSocket> = (0..200)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for client in &clients {
        // Twice from each source: both must land on the same socket.
        client.send_to(b"one", address).unwrap();
        client.send_to(b"two", address).unwrap();
    }
    let mut received: Vec<Vec<SocketAddr>> = vec![Vec::new(); 2];
    let mut strays = Vec::new();
    // Bounded without a clock: at most 2,000 rounds of 5 ms (10 s).
    for _ in 0..2000 {
        if received.iter().map(Vec::len).sum::<usize>() >= 400 {
            break;
        }
        for (member, into) in members.iter().zip(received.iter_mut()) {
            drain(member, into);
        }
        drain(&stranger, &mut strays);
        std::thread::sleep(Duration::from_millis(5));
    }
    drain(&stranger, &mut strays);
    assert_eq!(
        received.iter().map(Vec::len).sum::<usize>(),
        400,
        "every datagram reaches a member"
    );
    assert!(
        strays.is_empty(),
        "the stranger got {} datagrams",
        strays.len()
    );
    for (index, sources) in received.iter().enumerate() {
        assert!(!sources.is_empty(), "member {index} got nothing");
        for source in sources {
            assert_eq!(
                reuseport_index(*source, 2, &BTreeSet::new()),
                index as u32,
                "{source} landed on member {index}: the program did not choose"
            );
        }
    }
}

#[test]
fn foreign_members_of_a_group_are_counted() {
    let group = bind_udp_group(loopback_any(), 2, ListenerSocketOptions::default()).unwrap();
    let address = group_address(&group);
    assert_eq!(foreign_udp_sockets(address, &group).unwrap(), 0);
    let _stranger = stranger_udp(address).unwrap();
    assert_eq!(foreign_udp_sockets(address, &group).unwrap(), 1);
    let v6 = bind_udp_group(
        "[::1]:0".parse().unwrap(),
        2,
        ListenerSocketOptions::default(),
    );
    // IPv6 may be off on a test host; when it is on, the table is read too.
    if let Ok(v6) = v6 {
        let address = group_address(&v6);
        assert_eq!(foreign_udp_sockets(address, &v6).unwrap(), 0);
        assert_eq!(foreign_udp_sockets(address, &v6[..1]).unwrap(), 1);
    }
}

#[test]
fn a_udp_group_is_refused_on_an_address_anyone_holds() {
    let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = plain.local_addr().unwrap();
    let error = bind_udp_group(address, 2, ListenerSocketOptions::default()).unwrap_err();
    assert!(matches!(error, ListenError::InUse { .. }), "{error}");
    assert!(error.to_string().contains(&address.to_string()), "{error}");
    drop(plain);
    // A same-user SO_REUSEPORT socket (a second master) is found by the
    // probe too.
    let other = stranger_udp(address).unwrap();
    let error = bind_udp_group(address, 2, ListenerSocketOptions::default()).unwrap_err();
    assert!(matches!(error, ListenError::InUse { .. }), "{error}");
    drop(other);
    // Free again: it binds.
    assert_eq!(
        bind_udp_group(address, 2, ListenerSocketOptions::default())
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_second_group_on_our_own_address_is_refused() {
    let group = bind_udp_group(loopback_any(), 2, ListenerSocketOptions::default()).unwrap();
    let address = group_address(&group);
    let error = bind_udp_group(address, 2, ListenerSocketOptions::default()).unwrap_err();
    assert!(matches!(error, ListenError::InUse { .. }), "{error}");
}

#[test]
fn a_stream_listener_is_exclusive() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap();
    let error = bind_stream(address).unwrap_err();
    assert!(matches!(error, ListenError::InUse { .. }), "{error}");
    drop(held);
    let ours = bind_stream(address).unwrap();
    // Nobody joins it, not even with SO_REUSEPORT.
    let stranger = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    stranger.set_reuse_port(true).unwrap();
    stranger.set_reuse_address(true).unwrap();
    assert!(stranger.bind(&address.into()).is_err());
    // And it accepts.
    let listener = TcpListener::from(ours);
    let _client = std::net::TcpStream::connect(address).unwrap();
    listener.set_nonblocking(false).unwrap();
    assert!(listener.accept().is_ok());
}

#[test]
fn the_program_always_picks_a_member() {
    for workers in 1..=8u32 {
        for port in (1..=65535u16).step_by(97) {
            let v4 = SocketAddr::from(([10, 1, 2, 3], port));
            let v6: SocketAddr = format!("[2001:db8::{port:x}]:{port}").parse().unwrap();
            assert!(reuseport_index(v4, workers, &BTreeSet::new()) < workers);
            assert!(reuseport_index(v6, workers, &BTreeSet::new()) < workers);
        }
    }
}

/// Sends one datagram from each of `clients` and returns what each member
/// received (bounded: 2,000 rounds of 5 ms).
fn spread(
    clients: &[UdpSocket],
    members: &[UdpSocket],
    address: SocketAddr,
) -> Vec<Vec<SocketAddr>> {
    for client in clients {
        client.send_to(b"x", address).unwrap();
    }
    let mut received: Vec<Vec<SocketAddr>> = vec![Vec::new(); members.len()];
    for _ in 0..2000 {
        for (member, into) in members.iter().zip(received.iter_mut()) {
            drain(member, into);
        }
        if received.iter().map(Vec::len).sum::<usize>() >= clients.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    received
}

#[test]
fn a_down_slot_is_steered_around_and_only_its_sources_move() {
    let group = bind_udp_group(loopback_any(), 3, ListenerSocketOptions::default()).unwrap();
    let address = group_address(&group);
    let members: Vec<UdpSocket> = group
        .iter()
        .map(|fd| UdpSocket::from(fd.try_clone().unwrap()))
        .collect();
    let clients: Vec<UdpSocket> = (0..150)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let none = BTreeSet::new();
    let down: BTreeSet<u32> = [1].into_iter().collect();

    steer_udp_group(group[0].as_fd(), 3, &down).unwrap();
    let steered = spread(&clients, &members, address);
    assert_eq!(steered.iter().map(Vec::len).sum::<usize>(), 150);
    assert!(steered[1].is_empty(), "the down slot got {:?}", steered[1]);
    for (index, sources) in steered.iter().enumerate() {
        for source in sources {
            assert_eq!(reuseport_index(*source, 3, &down), index as u32);
            let own = reuseport_index(*source, 3, &none);
            if own != 1 {
                assert_eq!(own, index as u32, "{source} of a live slot moved");
            }
        }
    }

    steer_udp_group(group[1].as_fd(), 3, &none).unwrap();
    let back = spread(&clients, &members, address);
    assert_eq!(back.iter().map(Vec::len).sum::<usize>(), 150);
    assert!(!back[1].is_empty(), "slot 1 serves again");
    for (index, sources) in back.iter().enumerate() {
        for source in sources {
            assert_eq!(reuseport_index(*source, 3, &none), index as u32);
        }
    }
}

/// What `SO_RCVBUF` / `SO_SNDBUF` report on `fd` (Linux: twice the size in
/// effect).
fn reported(fd: &OwnedFd, option: libc::c_int) -> usize {
    get_int_option(fd.as_raw_fd(), option).unwrap()
}

fn rmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn udp_listener_buffer_sizes_are_applied_to_every_member() {
    // Under the kernels' default caps (208 KiB), so no privilege is needed.
    let options = ListenerSocketOptions {
        recv_buffer_size: Some(160 << 10),
        send_buffer_size: Some(96 << 10),
    };
    let group = bind_udp_group(loopback_any(), 2, options).unwrap();
    for member in &group {
        assert_eq!(reported(member, libc::SO_RCVBUF), 320 << 10);
        assert_eq!(reported(member, libc::SO_SNDBUF), 192 << 10);
    }
    // A size below the default is applied too (not mistaken for "already
    // set").
    let small = ListenerSocketOptions {
        recv_buffer_size: Some(32 << 10),
        send_buffer_size: None,
    };
    let group = bind_udp_group(loopback_any(), 1, small).unwrap();
    assert_eq!(reported(&group[0], libc::SO_RCVBUF), 64 << 10);
}

#[test]
fn a_receive_buffer_over_rmem_max_is_forced_or_reported_capped() {
    let asked = rmem_max() * 2;
    let options = ListenerSocketOptions {
        recv_buffer_size: Some(asked),
        send_buffer_size: None,
    };
    let group = bind_udp_group(loopback_any(), 1, options).unwrap();
    let effective = reported(&group[0], libc::SO_RCVBUF) / 2;
    // SAFETY: no arguments.
    let privileged = unsafe { libc::geteuid() } == 0;
    if privileged {
        // CAP_NET_ADMIN: forced past the sysctl, and applying it again (a
        // worker adopting the socket) keeps it.
        assert_eq!(effective, asked);
        let socket = Socket::from(group[0].try_clone().unwrap());
        let address = socket.local_addr().unwrap().as_socket().unwrap();
        apply_buffer_sizes(&socket, options, address).unwrap();
        assert_eq!(reported(&group[0], libc::SO_RCVBUF) / 2, asked);
    } else {
        // Capped at the sysctl (a warning says so): never an error.
        assert_eq!(effective, rmem_max());
    }
}
