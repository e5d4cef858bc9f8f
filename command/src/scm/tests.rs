//! fd-passing tests on real loopback TCP and UDP sockets over a socketpair.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    thread,
    time::Duration,
};

use nix::sys::stat::fstat;

use super::{
    ListenSocket, ScmError, ScmSocket, DEFAULT_MAX_MANIFEST_SIZE, FRAME_HEADER_LEN,
    MAX_FDS_PER_MESSAGE,
};
use crate::command::{ListenSocketEntry, ListenSocketManifest, ListenerType};

fn entry(address: SocketAddr, proxy: ListenerType) -> ListenSocketEntry {
    ListenSocketEntry {
        address: address.into(),
        proxy: proxy as i32,
    }
}

/// (device, inode) of the open file behind `fd`: equal for two fds exactly
/// when they are the same socket.
fn identity(fd: BorrowedFd<'_>) -> (u64, u64) {
    let stat = fstat(fd).unwrap();
    (stat.st_dev as u64, stat.st_ino as u64)
}

fn pair_with_timeout() -> (ScmSocket, ScmSocket) {
    let (a, b) = ScmSocket::pair().unwrap();
    // A broken sequence must fail the test, not hang it.
    a.set_timeout(Some(Duration::from_secs(30))).unwrap();
    b.set_timeout(Some(Duration::from_secs(30))).unwrap();
    (a, b)
}

#[test]
fn tcp_and_udp_listeners_arrive_as_the_same_working_sockets() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let manifest = ListenSocketManifest {
        entries: vec![
            entry(tcp_addr, ListenerType::Tcp),
            entry(udp_addr, ListenerType::Udp),
        ],
    };
    let (sender, receiver) = pair_with_timeout();
    thread::scope(|scope| {
        scope.spawn(|| {
            sender
                .send_listen_sockets(&manifest, &[tcp.as_fd(), udp.as_fd()])
                .unwrap()
        });
        let received = receiver
            .receive_listen_sockets(DEFAULT_MAX_MANIFEST_SIZE)
            .unwrap();
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].address, tcp_addr);
        assert_eq!(received[0].proxy, ListenerType::Tcp);
        assert_eq!(received[1].address, udp_addr);
        assert_eq!(received[1].proxy, ListenerType::Udp);
        assert_eq!(identity(received[0].fd.as_fd()), identity(tcp.as_fd()));
        assert_eq!(identity(received[1].fd.as_fd()), identity(udp.as_fd()));
        assert_ne!(received[0].fd.as_raw_fd(), tcp.as_raw_fd());

        let mut sockets = received.into_iter();
        let tcp_received = TcpListener::from(sockets.next().unwrap().fd);
        let udp_received = UdpSocket::from(sockets.next().unwrap().fd);
        assert_eq!(tcp_received.local_addr().unwrap(), tcp_addr);
        assert_eq!(udp_received.local_addr().unwrap(), udp_addr);

        // Data sent to the addresses reaches the received sockets.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"ping", udp_addr).unwrap();
        udp_received
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = udp_received.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, client.local_addr().unwrap());

        let mut stream = TcpStream::connect(tcp_addr).unwrap();
        stream.write_all(b"hello").unwrap();
        let (mut accepted, _) = tcp_received.accept().unwrap();
        let mut got = [0u8; 5];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    });
}

#[test]
fn two_hundred_sockets_cross_in_several_batches_in_manifest_order() {
    let sockets: Vec<UdpSocket> = (0..200)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    assert!(sockets.len() > 3 * MAX_FDS_PER_MESSAGE);
    let manifest = ListenSocketManifest {
        entries: sockets
            .iter()
            .map(|s| entry(s.local_addr().unwrap(), ListenerType::Udp))
            .collect(),
    };
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
    let (sender, receiver) = pair_with_timeout();
    let received = thread::scope(|scope| {
        scope.spawn(|| sender.send_listen_sockets(&manifest, &fds).unwrap());
        receiver
            .receive_listen_sockets(DEFAULT_MAX_MANIFEST_SIZE)
            .unwrap()
    });
    assert_eq!(received.len(), 200);
    for (original, got) in sockets.iter().zip(&received) {
        assert_eq!(got.address, original.local_addr().unwrap());
        assert_eq!(identity(got.fd.as_fd()), identity(original.as_fd()));
    }
}

#[test]
fn an_empty_batch_is_a_valid_sequence() {
    let (sender, receiver) = pair_with_timeout();
    sender
        .send_listen_sockets(&ListenSocketManifest::default(), &[])
        .unwrap();
    assert!(receiver
        .receive_listen_sockets(DEFAULT_MAX_MANIFEST_SIZE)
        .unwrap()
        .is_empty());
}

#[test]
fn sending_a_manifest_that_does_not_match_the_fds_is_refused() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let manifest = ListenSocketManifest {
        entries: vec![
            entry(addr, ListenerType::Udp),
            entry(addr, ListenerType::Udp),
        ],
    };
    let (sender, _receiver) = pair_with_timeout();
    match sender.send_listen_sockets(&manifest, &[udp.as_fd()]) {
        Err(ScmError::ManifestMismatch { manifest, fds, .. }) => {
            assert_eq!((manifest, fds), (2, 1));
        }
        other => panic!("expected ManifestMismatch, got {other:?}"),
    }
}

/// Whether a UDP socket is still open on `addr`: binding it again fails
/// while any fd (ours or a leaked duplicate) keeps it alive.
fn udp_port_in_use(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_err()
}

/// Sends a sequence whose manifest names `named` sockets while `sent`
/// fds follow, then checks the receiver refuses it and leaks none.
fn check_mismatch_refused_without_leak(named: usize, sent: usize) {
    let sockets: Vec<UdpSocket> = (0..sent.max(1))
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    let manifest = ListenSocketManifest {
        entries: (0..named)
            .map(|i| entry(addrs[i % addrs.len()], ListenerType::Udp))
            .collect(),
    };
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().take(sent).map(AsFd::as_fd).collect();
    let (sender, receiver) = pair_with_timeout();
    let result = thread::scope(|scope| {
        // The peer may see its socket closed early: its result does not matter.
        scope.spawn(|| sender.send_unchecked(&manifest, &fds));
        receiver.receive_listen_sockets(DEFAULT_MAX_MANIFEST_SIZE)
    });
    match result {
        Err(ScmError::ManifestMismatch { manifest, fds, .. }) => {
            assert_eq!(manifest, named);
            assert!(fds != named, "mismatch reported with equal counts");
        }
        other => panic!("expected ManifestMismatch for {named} vs {sent}, got {other:?}"),
    }
    drop(receiver);
    drop(sender);
    drop(sockets);
    // Every duplicate the receiver got was closed with the refusal.
    for addr in addrs {
        assert!(!udp_port_in_use(addr), "socket on {addr} leaked");
    }
}

#[test]
fn fewer_fds_than_the_manifest_names_are_refused_and_closed() {
    check_mismatch_refused_without_leak(3, 2);
}

#[test]
fn more_fds_than_the_manifest_names_are_refused_and_closed() {
    check_mismatch_refused_without_leak(2, 3);
    check_mismatch_refused_without_leak(1, MAX_FDS_PER_MESSAGE + 5);
}

#[test]
fn batch_record_miscounting_its_fds_is_refused() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let manifest = ListenSocketManifest {
        entries: vec![entry(udp.local_addr().unwrap(), ListenerType::Udp)],
    };
    let (sender, receiver) = pair_with_timeout();
    let mut frame = ((prost::Message::encoded_len(&manifest) + FRAME_HEADER_LEN) as u64)
        .to_le_bytes()
        .to_vec();
    prost::Message::encode(&manifest, &mut frame).unwrap();
    sender.send_all(&frame, &[]).unwrap();
    // Declares two fds, attaches one.
    sender
        .send_all(&super::record(super::RECORD_BATCH, 2), &[udp.as_raw_fd()])
        .unwrap();
    match receiver.receive_listen_sockets(DEFAULT_MAX_MANIFEST_SIZE) {
        Err(ScmError::BatchMismatch { declared, attached }) => {
            assert_eq!((declared, attached), (2, 1));
        }
        other => panic!("expected BatchMismatch, got {other:?}"),
    }
}

#[test]
fn oversized_or_short_manifest_frame_is_refused_before_reading_it() {
    for len in [u64::MAX, 1024 * 1024 + 1, 3] {
        let (sender, receiver) = pair_with_timeout();
        sender.send_all(&len.to_le_bytes(), &[]).unwrap();
        match receiver.receive_listen_sockets(1024 * 1024) {
            Err(ScmError::BadManifestLength { len: got, max }) => {
                assert_eq!((got, max), (len, 1024 * 1024));
            }
            other => panic!("expected BadManifestLength for {len}, got {other:?}"),
        }
    }
}

#[test]
fn peer_closing_mid_sequence_is_reported() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let manifest = ListenSocketManifest {
        entries: vec![entry(udp.local_addr().unwrap(), ListenerType::Udp)],
    };
    let (sender, receiver) = pair_with_timeout();
    let mut frame = ((prost::Message::encoded_len(&manifest) + FRAME_HEADER_LEN) as u64)
        .to_le_bytes()
        .to_vec();
    prost::Message::encode(&manifest, &mut frame).unwrap();
    sender.send_all(&frame, &[]).unwrap();
    drop(sender);
    assert!(matches!(
        receiver.receive_listen_sockets(DEFAULT_MAX_MANIFEST_SIZE),
        Err(ScmError::PeerClosed)
    ));
}

#[test]
fn received_socket_reports_its_manifest_entry() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let socket = ListenSocket {
        address: addr,
        proxy: ListenerType::Udp,
        fd: OwnedFd::from(udp),
    };
    assert_eq!(socket.entry(), entry(addr, ListenerType::Udp));
}

fn flow_entry(listener: SocketAddr, client: SocketAddr) -> crate::command::HandedOverFlow {
    crate::command::HandedOverFlow {
        listener: listener.into(),
        client: client.into(),
        cluster_id: "c".to_owned(),
        backend_id: "b".to_owned(),
        backend: client.into(),
        ..Default::default()
    }
}

#[test]
fn a_thousand_flow_sockets_cross_with_their_manifest_in_order() {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sockets: Vec<UdpSocket> = (0..1000)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(backend.local_addr().unwrap()).unwrap();
            s
        })
        .collect();
    let listener: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let manifest = crate::command::FlowManifest {
        flows: sockets
            .iter()
            .map(|s| flow_entry(listener, s.local_addr().unwrap()))
            .collect(),
    };
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
    let (sender, receiver) = pair_with_timeout();
    let (got, received) = thread::scope(|scope| {
        scope.spawn(|| sender.send_flows(&manifest, &fds).unwrap());
        receiver
            .receive_flows(super::DEFAULT_MAX_FLOW_MANIFEST_SIZE)
            .unwrap()
    });
    assert_eq!(got, manifest);
    assert_eq!(received.len(), 1000);
    for (original, fd) in sockets.iter().zip(&received) {
        assert_eq!(identity(fd.as_fd()), identity(original.as_fd()));
    }
}

#[test]
fn a_flow_manifest_naming_more_flows_than_fds_is_refused_before_sending() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let manifest = crate::command::FlowManifest {
        flows: vec![flow_entry(addr, addr), flow_entry(addr, addr)],
    };
    let (sender, _receiver) = pair_with_timeout();
    let error = sender.send_flows(&manifest, &[socket.as_fd()]).unwrap_err();
    assert!(
        matches!(
            error,
            ScmError::ManifestMismatch {
                manifest: 2,
                fds: 1,
                ..
            }
        ),
        "{error}"
    );
}
