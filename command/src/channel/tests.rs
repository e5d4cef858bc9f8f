//! Channel tests: framing edge cases on real socket pairs, a mio loop, and a
//! quickcheck round-trip through the sans-io reader with random chunking.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    thread,
    time::Duration,
};

use mio::{Events, Interest, Poll, Token};
use prost::Message;
use quickcheck::{quickcheck, TestResult};

use super::{frame::FrameReader, Channel, ChannelError, FlushStatus};
use crate::command::{ResponseStatus, WorkerResponse};

const MAX: usize = 16 * 1024;

fn response(id: &str, message: &str) -> WorkerResponse {
    WorkerResponse {
        id: id.to_owned(),
        status: ResponseStatus::Ok as i32,
        message: message.to_owned(),
        content: None,
    }
}

/// The exact bytes of one frame, built independently of the channel code.
fn frame_bytes(message: &WorkerResponse) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut bytes = ((body.len() + 8) as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// A channel receiving `WorkerResponse` and the raw peer socket.
fn channel_and_raw_peer() -> (Channel<WorkerResponse, WorkerResponse>, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (Channel::new(ours, 1024, MAX), theirs)
}

#[test]
fn frame_split_into_single_byte_writes_is_reassembled() {
    let (mut channel, mut peer) = channel_and_raw_peer();
    let sent = response("req-1", &"x".repeat(3000));
    let bytes = frame_bytes(&sent);
    let writer = thread::spawn(move || {
        for byte in bytes {
            peer.write_all(&[byte]).unwrap();
        }
        peer
    });
    let received = channel.read_message().unwrap();
    assert_eq!(received, sent);
    let _peer = writer.join().unwrap();
}

#[test]
fn several_frames_in_one_write_are_all_returned_in_order() {
    let (mut channel, mut peer) = channel_and_raw_peer();
    let sent: Vec<_> = (0..5).map(|i| response(&format!("id-{i}"), "ok")).collect();
    let bytes: Vec<u8> = sent.iter().flat_map(frame_bytes).collect();
    peer.write_all(&bytes).unwrap();
    for expected in &sent {
        assert_eq!(&channel.read_message().unwrap(), expected);
    }
    assert_eq!(channel.buffered_bytes(), 0);
}

#[test]
fn frame_at_exactly_the_maximum_is_accepted() {
    let (mut channel, mut peer) = channel_and_raw_peer();
    // Grow the message until its frame is exactly MAX bytes.
    let mut text = "y".repeat(MAX - 64);
    while frame_bytes(&response("a", &text)).len() < MAX {
        text.push('y');
    }
    let sent = response("a", &text);
    assert_eq!(frame_bytes(&sent).len(), MAX);
    let bytes = frame_bytes(&sent);
    let writer = thread::spawn(move || peer.write_all(&bytes).map(|_| peer));
    assert_eq!(channel.read_message().unwrap(), sent);
    let _peer = writer.join().unwrap().unwrap();
}

#[test]
fn declared_length_over_the_maximum_is_refused_and_sticks() {
    let (mut channel, mut peer) = channel_and_raw_peer();
    // Only the header is sent: the refusal must not wait for (or allocate) the body.
    peer.write_all(&(u64::MAX).to_le_bytes()).unwrap();
    match channel.read_message() {
        Err(ChannelError::FrameTooLarge { len, max }) => {
            assert_eq!(len, u64::MAX);
            assert_eq!(max, MAX);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // The stream cannot be resynchronised: every later read says so again.
    assert!(matches!(
        channel.try_read_message(),
        Err(ChannelError::FrameTooLarge { .. })
    ));
    // The write side still works, to answer an error before closing.
    channel
        .write_message(&response("err", "too large"))
        .unwrap();
    let mut header = [0u8; 8];
    peer.read_exact(&mut header).unwrap();
    assert!(u64::from_le_bytes(header) > 8);
}

#[test]
fn declared_length_below_the_header_is_refused() {
    for len in [0u64, 1, 7] {
        let (mut channel, mut peer) = channel_and_raw_peer();
        peer.write_all(&len.to_le_bytes()).unwrap();
        match channel.read_message() {
            Err(ChannelError::FrameTooShort { len: got }) => assert_eq!(got, len),
            other => panic!("expected FrameTooShort for {len}, got {other:?}"),
        }
    }
}

#[test]
fn empty_message_frame_of_exactly_eight_bytes_decodes() {
    let (mut channel, mut peer) = {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (
            Channel::<crate::command::Status, crate::command::Status>::new(ours, 64, MAX),
            theirs,
        )
    };
    peer.write_all(&8u64.to_le_bytes()).unwrap();
    assert_eq!(channel.read_message().unwrap(), crate::command::Status {});
}

#[test]
fn undecodable_frame_is_skipped_and_the_next_frame_is_read() {
    let (mut channel, mut peer) = channel_and_raw_peer();
    // Field 1 (string) announcing 100 bytes that are not there.
    let garbage = [0x0a, 100, b'a'];
    let mut bytes = ((garbage.len() + 8) as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&garbage);
    let good = response("after", "still in sync");
    bytes.extend_from_slice(&frame_bytes(&good));
    peer.write_all(&bytes).unwrap();
    match channel.read_message() {
        Err(ChannelError::Decode { len, .. }) => assert_eq!(len, 11),
        other => panic!("expected Decode, got {other:?}"),
    }
    assert_eq!(channel.read_message().unwrap(), good);
}

#[test]
fn peer_closing_mid_frame_is_reported_with_the_bytes_received() {
    let (mut channel, mut peer) = channel_and_raw_peer();
    let bytes = frame_bytes(&response("cut", "this frame is cut short"));
    peer.write_all(&bytes[..12]).unwrap();
    drop(peer);
    match channel.read_message() {
        Err(ChannelError::PeerClosedMidFrame { buffered }) => assert_eq!(buffered, 12),
        other => panic!("expected PeerClosedMidFrame, got {other:?}"),
    }
}

#[test]
fn peer_closing_between_frames_is_a_clean_close() {
    let (mut channel, mut peer) = channel_and_raw_peer();
    let sent = response("last", "bye");
    peer.write_all(&frame_bytes(&sent)).unwrap();
    drop(peer);
    assert_eq!(channel.read_message().unwrap(), sent);
    assert!(matches!(
        channel.read_message(),
        Err(ChannelError::PeerClosed)
    ));
    assert!(matches!(
        channel.try_read_message(),
        Err(ChannelError::PeerClosed)
    ));
}

#[test]
fn writing_to_a_closed_peer_is_an_error_not_a_signal() {
    let (mut channel, peer) = channel_and_raw_peer();
    drop(peer);
    assert!(matches!(
        channel.write_message(&response("x", "y")),
        Err(ChannelError::PeerClosed)
    ));
}

#[test]
fn read_with_timeout_gives_up_and_keeps_the_partial_frame() {
    let (mut channel, mut peer) = channel_and_raw_peer();
    let sent = response("slow", "arrives in two parts");
    let bytes = frame_bytes(&sent);
    peer.write_all(&bytes[..5]).unwrap();
    assert!(matches!(
        channel.read_message_timeout(Duration::from_millis(20)),
        Err(ChannelError::Timeout { .. })
    ));
    peer.write_all(&bytes[5..]).unwrap();
    assert_eq!(
        channel
            .read_message_timeout(Duration::from_secs(30))
            .unwrap(),
        sent
    );
}

#[test]
fn outgoing_frame_over_the_maximum_is_refused() {
    let (mut channel, _peer) = channel_and_raw_peer();
    let big = response("big", &"z".repeat(MAX));
    assert!(matches!(
        channel.queue_message(&big),
        Err(ChannelError::OutgoingFrameTooLarge { max: MAX, .. })
    ));
    assert_eq!(channel.pending_bytes(), 0);
}

#[test]
fn outgoing_queue_is_bounded_and_drains_once_the_peer_reads() {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let max = 4 * 1024 * 1024;
    let mut channel: Channel<WorkerResponse, WorkerResponse> = Channel::new(ours, 4096, max);
    channel.set_blocking(false).unwrap();
    let chunk = response("fill", &"q".repeat(60_000));
    let frame_len = frame_bytes(&chunk).len();
    // Queue and flush until the kernel buffer is full and flush is pending.
    let mut sent_frames = 0usize;
    let mut pending = false;
    for _ in 0..1000 {
        channel.queue_message(&chunk).unwrap();
        sent_frames += 1;
        if channel.flush().unwrap() == FlushStatus::Pending {
            pending = true;
            break;
        }
    }
    assert!(pending, "the socket buffer never filled");
    assert!(channel.interest().is_writable());
    // Then the queue itself fills and refuses instead of growing.
    let mut refused = false;
    for _ in 0..(max / frame_len + 2) {
        match channel.queue_message(&chunk) {
            Ok(()) => sent_frames += 1,
            Err(ChannelError::OutgoingBufferFull {
                queued,
                frame,
                max: m,
            }) => {
                assert!(queued + frame > m);
                refused = true;
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused);
    assert!(channel.pending_bytes() <= max);
    // The peer reads everything; flushing whenever possible gets it all out.
    let reader = thread::spawn(move || {
        let mut received = vec![0u8; sent_frames * frame_len];
        peer.read_exact(&mut received).unwrap();
        received
    });
    while channel.flush().unwrap() == FlushStatus::Pending {
        channel
            .wait_for(nix::poll::PollFlags::POLLOUT, None)
            .unwrap();
    }
    assert!(!channel.interest().is_writable());
    let received = reader.join().unwrap();
    let expected: Vec<u8> = (0..sent_frames).flat_map(|_| frame_bytes(&chunk)).collect();
    assert_eq!(received, expected);
}

#[test]
fn pair_carries_messages_through_a_mio_loop() {
    let (mut master, mut worker) =
        Channel::<WorkerResponse, WorkerResponse>::pair(256, MAX).unwrap();
    master.set_blocking(false).unwrap();
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(master.source_mut(), Token(7), Interest::READABLE)
        .unwrap();
    let sent: Vec<_> = (0..50)
        .map(|i| response(&format!("w-{i}"), &"m".repeat(i * 40)))
        .collect();
    let to_send = sent.clone();
    let writer = thread::spawn(move || {
        for message in &to_send {
            worker.write_message(message).unwrap();
        }
        worker
    });
    let mut received = Vec::new();
    let mut events = Events::with_capacity(8);
    // Bounded: each wake-up drains at least one byte, and there are few frames.
    for _ in 0..100_000 {
        if received.len() == sent.len() {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_secs(30)))
            .unwrap();
        for event in events.iter() {
            assert_eq!(event.token(), Token(7));
            while let Some(message) = master.try_read_message().unwrap() {
                received.push(message);
            }
        }
    }
    assert_eq!(received, sent);
    let _worker = writer.join().unwrap();
    assert!(matches!(master.try_read_message(), Ok(None)));
}

#[test]
fn blocking_mode_is_read_from_the_socket_and_settable() {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut channel: Channel<WorkerResponse, WorkerResponse> = Channel::new(ours, 64, MAX);
    assert!(!channel.is_blocking());
    channel.set_blocking(true).unwrap();
    assert!(channel.is_blocking());
    let mio_stream = mio::net::UnixStream::pair().unwrap().0;
    let from_mio: Channel<WorkerResponse, WorkerResponse> = Channel::from_mio(mio_stream, 64, MAX);
    assert!(!from_mio.is_blocking());
}

#[test]
fn write_with_timeout_gives_up_when_the_peer_never_reads() {
    let (ours, _peer) = UnixStream::pair().unwrap();
    let mut channel: Channel<WorkerResponse, WorkerResponse> =
        Channel::new(ours, 4096, 64 * 1024 * 1024);
    let chunk = response("fill", &"w".repeat(1024 * 1024));
    let mut timed_out = false;
    // Bounded: the kernel buffer holds far less than 64 MiB.
    for _ in 0..60 {
        match channel.write_message_timeout(&chunk, Duration::from_millis(10)) {
            Ok(()) => {}
            Err(ChannelError::Timeout { .. }) => {
                timed_out = true;
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(timed_out);
    assert!(channel.wants_write());
}

#[test]
fn try_read_message_never_blocks_on_a_blocking_socket() {
    let (mut channel, _peer) = channel_and_raw_peer();
    assert!(channel.is_blocking());
    assert!(matches!(channel.try_read_message(), Ok(None)));
}

/// Feeds `bytes` to a sans-io reader in chunks of the given sizes and
/// collects every message, as the channel would with reads of those sizes.
fn read_in_chunks(
    bytes: &[u8],
    chunks: &[usize],
    max: usize,
) -> Result<Vec<WorkerResponse>, ChannelError> {
    let mut reader = FrameReader::new(16, max);
    let mut out = Vec::new();
    let mut offset = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while offset < bytes.len() {
        while let Some(message) = reader.next_frame::<WorkerResponse>()? {
            out.push(message);
        }
        let wanted = sizes.next().unwrap_or(1).max(1);
        let spare = reader.spare()?;
        let n = wanted.min(spare.len()).min(bytes.len() - offset);
        spare[..n].copy_from_slice(&bytes[offset..offset + n]);
        reader.commit(n);
        offset += n;
    }
    while let Some(message) = reader.next_frame::<WorkerResponse>()? {
        out.push(message);
    }
    assert_eq!(reader.buffered(), 0, "bytes left after the last frame");
    Ok(out)
}

/// Writes `bytes` in chunks of the given sizes from another thread and
/// reads every message through a real socket.
fn round_trip_over_a_socket(sent: &[WorkerResponse], chunks: &[usize]) -> Vec<WorkerResponse> {
    let (mut channel, mut peer) = channel_and_raw_peer();
    let bytes: Vec<u8> = sent.iter().flat_map(frame_bytes).collect();
    let chunks: Vec<usize> = if chunks.is_empty() {
        vec![1]
    } else {
        chunks.to_vec()
    };
    let writer = thread::spawn(move || {
        let mut offset = 0;
        for size in chunks.iter().cycle() {
            if offset == bytes.len() {
                break;
            }
            let end = (offset + size).min(bytes.len());
            peer.write_all(&bytes[offset..end]).unwrap();
            offset = end;
        }
        peer
    });
    let received = sent
        .iter()
        .map(|_| channel.read_message().unwrap())
        .collect();
    let _peer = writer.join().unwrap();
    received
}

quickcheck! {
    fn round_trip_over_a_socket_with_random_write_chunking(
        messages: Vec<(String, String)>,
        chunks: Vec<usize>
    ) -> TestResult {
        let sent: Vec<WorkerResponse> =
            messages.iter().map(|(id, text)| response(id, text)).collect();
        if sent.iter().any(|m| frame_bytes(m).len() > MAX) {
            return TestResult::discard();
        }
        let chunks: Vec<usize> = chunks.iter().map(|c| c % 61 + 1).collect();
        TestResult::from_bool(round_trip_over_a_socket(&sent, &chunks) == sent)
    }

    fn round_trip_with_random_read_chunking(
        messages: Vec<(String, String, bool)>,
        chunks: Vec<usize>
    ) -> TestResult {
        let sent: Vec<WorkerResponse> = messages
            .iter()
            .map(|(id, text, failed)| WorkerResponse {
                id: id.clone(),
                status: if *failed { ResponseStatus::Failure } else { ResponseStatus::Ok } as i32,
                message: text.clone(),
                content: None,
            })
            .collect();
        if sent.iter().any(|m| frame_bytes(m).len() > MAX) {
            return TestResult::discard();
        }
        let bytes: Vec<u8> = sent.iter().flat_map(frame_bytes).collect();
        let chunks: Vec<usize> = chunks.iter().map(|c| c % 97 + 1).collect();
        match read_in_chunks(&bytes, &chunks, MAX) {
            Ok(received) => TestResult::from_bool(received == sent),
            Err(error) => TestResult::error(format!("{error}")),
        }
    }

    fn reader_memory_stays_bounded_on_arbitrary_bytes(bytes: Vec<u8>, chunks: Vec<usize>) -> bool {
        // Arbitrary input may fail, but never panics and never overflows.
        let chunks: Vec<usize> = chunks.iter().map(|c| c % 31 + 1).collect();
        let mut reader = FrameReader::new(8, 64);
        let mut offset = 0;
        let mut sizes = chunks.iter().copied().cycle();
        while offset < bytes.len() {
            loop {
                match reader.next_frame::<WorkerResponse>() {
                    Ok(Some(_)) | Err(ChannelError::Decode { .. }) => continue,
                    Ok(None) => break,
                    Err(_) => return true,
                }
            }
            let spare = match reader.spare() {
                Ok(spare) => spare,
                Err(_) => return true,
            };
            if spare.is_empty() {
                return false;
            }
            let room = spare.len();
            let n = sizes.next().unwrap_or(1).min(spare.len()).min(bytes.len() - offset);
            spare[..n].copy_from_slice(&bytes[offset..offset + n]);
            reader.commit(n);
            offset += n;
            // Everything allocated (buffered bytes + spare room) fits the maximum.
            if reader.buffered() + room - n > 64 {
                return false;
            }
        }
        true
    }
}
