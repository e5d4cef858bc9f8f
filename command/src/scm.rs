//! File-descriptor passing (`SCM_RIGHTS`) for upgrades: a batch of listening
//! sockets travels with a manifest naming the listener each one belongs to,
//! and the upstream sockets of handed-over UDP flows with a
//! [`FlowManifest`] describing each flow (the same sequence).
//!
//! Owns the byte sequence on a dedicated Unix stream socket ([`ScmSocket`]),
//! never the framed [`crate::channel::Channel`]'s socket: a channel buffers
//! ahead and its plain `recv` would swallow the ancillary data. The sequence
//! (see `doc/protocol.md`), all integers little-endian:
//!
//! 1. the manifest as one frame: `u64` length counting itself, then the
//!    protobuf [`ListenSocketManifest`] or [`FlowManifest`] (no fds
//!    attached);
//! 2. for each batch of at most [`MAX_FDS_PER_MESSAGE`] fds, in manifest
//!    order: an 8-byte record `u32 kind = 1`, `u32 count`, sent with one
//!    `sendmsg` carrying exactly `count` fds as `SCM_RIGHTS`;
//! 3. an 8-byte end record `u32 kind = 2`, `u32 total` (fds sent in all).
//!
//! The receiver refuses, with a typed error, any disagreement between the
//! manifest, the records and the fds actually attached; every fd it received
//! is then closed (they are [`OwnedFd`]s from the moment they arrive), so a
//! refused batch never leaks. It must never trust the peer's counts for an
//! allocation and never panic on its bytes.

#[cfg(test)]
mod tests;

use std::{
    io::{self, IoSlice, IoSliceMut},
    net::SocketAddr,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags},
};
use prost::Message;

use crate::{
    command::{FlowManifest, ListenSocketEntry, ListenSocketManifest, ListenerType},
    proto::convert::AddressError,
};

/// Most fds attached to one `sendmsg`. Linux refuses more than 253
/// (`SCM_MAX_FD`); batches stay well below it.
pub const MAX_FDS_PER_MESSAGE: usize = 64;

/// The kernel's own ceiling on fds in one message: the receive buffer is
/// sized for it, so a peer exceeding our batch size cannot truncate the
/// ancillary data (truncated fds could not be closed by us).
const SCM_MAX_FD: usize = 253;

/// Default bound on the manifest frame ([`ScmSocket::receive_listen_sockets`]).
pub const DEFAULT_MAX_MANIFEST_SIZE: usize = 1024 * 1024;

/// Default bound on a flow manifest frame ([`ScmSocket::receive_flows`]):
/// about 150 bytes per flow, room for several hundred thousand flows.
pub const DEFAULT_MAX_FLOW_MANIFEST_SIZE: usize = 64 * 1024 * 1024;

/// A manifest that names exactly one passed fd per entry, in order.
pub trait FdManifest: Message + Default {
    /// How many fds the manifest names.
    fn fd_count(&self) -> usize;
}

impl FdManifest for ListenSocketManifest {
    fn fd_count(&self) -> usize {
        self.entries.len()
    }
}

impl FdManifest for FlowManifest {
    fn fd_count(&self) -> usize {
        self.flows.len()
    }
}

const RECORD_LEN: usize = 8;
const RECORD_BATCH: u32 = 1;
const RECORD_END: u32 = 2;
const FRAME_HEADER_LEN: usize = 8;

/// Why a batch of sockets could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ScmError {
    /// The manifest names a different number of sockets than the fds given
    /// (sending) or received (receiving).
    #[error("manifest names {manifest} sockets but {fds} fds were {direction}")]
    ManifestMismatch {
        /// Sockets the manifest names.
        manifest: usize,
        /// Fds given or received.
        fds: usize,
        /// `sent` or `received`.
        direction: &'static str,
    },
    /// A batch record declared a count that differs from the fds attached.
    #[error("batch record declares {declared} fds but {attached} were attached")]
    BatchMismatch {
        /// The count the record declares.
        declared: u32,
        /// Fds attached to it.
        attached: usize,
    },
    /// The end record's total differs from the fds received.
    #[error("end record counts {declared} fds but {received} were received")]
    TotalMismatch {
        /// The count the record declares.
        declared: u32,
        /// Fds received.
        received: usize,
    },
    /// A record of unknown kind, or fds attached where none may be.
    #[error("unexpected record: {reason}")]
    UnexpectedRecord {
        /// What was unexpected.
        reason: &'static str,
    },
    /// The manifest frame declares a length outside `8..=max`.
    #[error("manifest frame length {len} outside 8..={max}")]
    BadManifestLength {
        /// The declared length, bytes.
        len: u64,
        /// The maximum, bytes.
        max: usize,
    },
    /// The manifest bytes are not the expected manifest message.
    #[error("undecodable manifest")]
    Decode {
        /// The cause.
        #[source]
        source: prost::DecodeError,
    },
    /// prost refused to encode the manifest.
    #[error("could not encode the manifest")]
    Encode {
        /// The cause.
        #[source]
        source: prost::EncodeError,
    },
    /// A manifest entry's address is not a socket address.
    #[error("manifest entry {index}: bad address")]
    BadAddress {
        /// The entry, from 0.
        index: usize,
        /// The cause.
        #[source]
        source: AddressError,
    },
    /// A manifest entry's listener type is unknown.
    #[error("manifest entry {index}: unknown listener type {value}")]
    UnknownListenerType {
        /// The entry, from 0.
        index: usize,
        /// The listener type as on the wire.
        value: i32,
    },
    /// The kernel truncated the ancillary data.
    #[error("ancillary data truncated")]
    Truncated,
    /// The peer closed the socket before the sequence ended.
    #[error("peer closed the fd-passing socket mid-sequence")]
    PeerClosed,
    /// The socket's timeout elapsed.
    #[error("fd-passing socket timed out")]
    Timeout,
    /// The socket failed.
    #[error("fd-passing socket error during {operation}")]
    Io {
        /// The call that failed.
        operation: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ScmError {
    fn from_errno(operation: &'static str, errno: Errno) -> Self {
        match errno {
            Errno::EAGAIN => ScmError::Timeout,
            Errno::EPIPE | Errno::ECONNRESET => ScmError::PeerClosed,
            _ => ScmError::Io {
                operation,
                source: io::Error::from(errno),
            },
        }
    }
}

/// A listening socket received from the peer, with the listener it serves.
#[derive(Debug)]
pub struct ListenSocket {
    /// The listener's address.
    pub address: SocketAddr,
    /// The listener's protocol.
    pub proxy: ListenerType,
    /// The socket itself; closed on drop. Turn it into a std socket with
    /// `std::net::UdpSocket::from(fd)` / `std::net::TcpListener::from(fd)`.
    pub fd: OwnedFd,
}

impl ListenSocket {
    /// The manifest entry describing this socket.
    pub fn entry(&self) -> ListenSocketEntry {
        ListenSocketEntry {
            address: self.address.into(),
            proxy: self.proxy as i32,
        }
    }
}

/// A blocking Unix stream socket dedicated to passing listening sockets.
#[derive(Debug)]
pub struct ScmSocket {
    stream: UnixStream,
}

impl ScmSocket {
    /// Wraps a connected stream and puts it in blocking mode (the sequence
    /// is written and read in one go; bound it with [`Self::set_timeout`]).
    pub fn new(stream: UnixStream) -> Result<Self, ScmError> {
        stream
            .set_nonblocking(false)
            .map_err(|source| ScmError::Io {
                operation: "set_nonblocking",
                source,
            })?;
        Ok(ScmSocket { stream })
    }

    /// A connected pair (`socketpair(2)`), e.g. created before forking a worker.
    pub fn pair() -> Result<(ScmSocket, ScmSocket), ScmError> {
        let (a, b) = UnixStream::pair().map_err(|source| ScmError::Io {
            operation: "socketpair",
            source,
        })?;
        Ok((ScmSocket::new(a)?, ScmSocket::new(b)?))
    }

    /// Bounds every send and receive (`SO_SNDTIMEO` / `SO_RCVTIMEO`); `None`
    /// waits forever. An elapsed timeout is [`ScmError::Timeout`].
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ScmError> {
        let io_error = |source| ScmError::Io {
            operation: "set_timeout",
            source,
        };
        self.stream.set_read_timeout(timeout).map_err(io_error)?;
        self.stream.set_write_timeout(timeout).map_err(io_error)
    }

    /// Sends `fds` with the manifest naming them (entry `i` describes
    /// `fds[i]`). Refused before sending anything if the counts differ.
    pub fn send_listen_sockets(
        &self,
        manifest: &ListenSocketManifest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ScmError> {
        if manifest.entries.len() != fds.len() {
            return Err(ScmError::ManifestMismatch {
                manifest: manifest.entries.len(),
                fds: fds.len(),
                direction: "given",
            });
        }
        self.send_unchecked(manifest, fds)
    }

    /// Sends the upstream sockets of handed-over flows with their manifest
    /// (entry `i` describes `fds[i]`), in the same sequence as listening
    /// sockets. Refused before sending anything if the counts differ.
    pub fn send_flows(
        &self,
        manifest: &FlowManifest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ScmError> {
        if manifest.flows.len() != fds.len() {
            return Err(ScmError::ManifestMismatch {
                manifest: manifest.flows.len(),
                fds: fds.len(),
                direction: "given",
            });
        }
        self.send_unchecked(manifest, fds)
    }

    /// Receives one sequence sent by [`Self::send_flows`]: the manifest and
    /// its fds in order (`fds.len() == manifest.flows.len()`). On any error
    /// every fd received so far is closed.
    pub fn receive_flows(
        &self,
        max_manifest_size: usize,
    ) -> Result<(FlowManifest, Vec<OwnedFd>), ScmError> {
        self.receive_sequence(max_manifest_size)
    }

    /// The send sequence without the count check (tests use it to play a
    /// misbehaving peer).
    fn send_unchecked<M: FdManifest>(
        &self,
        manifest: &M,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ScmError> {
        let mut frame = ((manifest.encoded_len() + FRAME_HEADER_LEN) as u64)
            .to_le_bytes()
            .to_vec();
        manifest
            .encode(&mut frame)
            .map_err(|source| ScmError::Encode { source })?;
        self.send_all(&frame, &[])?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        for batch in raw.chunks(MAX_FDS_PER_MESSAGE) {
            self.send_all(&record(RECORD_BATCH, batch.len()), batch)?;
        }
        self.send_all(&record(RECORD_END, raw.len()), &[])
    }

    /// Writes `bytes`, attaching `fds` to the first `sendmsg`.
    fn send_all(&self, bytes: &[u8], fds: &[RawFd]) -> Result<(), ScmError> {
        let fd = self.stream.as_raw_fd();
        let mut sent = 0;
        let mut attach = !fds.is_empty();
        while sent < bytes.len() {
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage] = if attach { &rights } else { &[] };
            match sendmsg::<()>(
                fd,
                &[IoSlice::new(&bytes[sent..])],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => {
                    sent += n;
                    // The kernel attached the fds to the bytes just sent.
                    attach = false;
                }
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(ScmError::from_errno("sendmsg", errno)),
            }
        }
        Ok(())
    }

    /// Receives one batch sent by [`Self::send_listen_sockets`], refusing
    /// a manifest frame longer than `max_manifest_size`. On any error every
    /// fd received so far is closed.
    pub fn receive_listen_sockets(
        &self,
        max_manifest_size: usize,
    ) -> Result<Vec<ListenSocket>, ScmError> {
        let (manifest, fds) = self.receive_sequence::<ListenSocketManifest>(max_manifest_size)?;
        pair_with_manifest(manifest, fds)
    }

    /// Receives a manifest and the fds it names, checking every record.
    fn receive_sequence<M: FdManifest>(
        &self,
        max_manifest_size: usize,
    ) -> Result<(M, Vec<OwnedFd>), ScmError> {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let manifest: M = self.receive_manifest(max_manifest_size, &mut fds)?;
        let expected = manifest.fd_count();
        loop {
            let mut header = [0u8; RECORD_LEN];
            let before = fds.len();
            self.receive_exact(&mut header, &mut fds)?;
            let attached = fds.len() - before;
            let (kind, count) = parse_record(header);
            match kind {
                RECORD_BATCH => {
                    if attached != count as usize {
                        return Err(ScmError::BatchMismatch {
                            declared: count,
                            attached,
                        });
                    }
                    if fds.len() > expected {
                        return Err(ScmError::ManifestMismatch {
                            manifest: expected,
                            fds: fds.len(),
                            direction: "received",
                        });
                    }
                }
                RECORD_END => {
                    if attached != 0 {
                        return Err(ScmError::UnexpectedRecord {
                            reason: "fds attached to the end record",
                        });
                    }
                    if count as usize != fds.len() {
                        return Err(ScmError::TotalMismatch {
                            declared: count,
                            received: fds.len(),
                        });
                    }
                    break;
                }
                _ => {
                    return Err(ScmError::UnexpectedRecord {
                        reason: "unknown record kind",
                    })
                }
            }
        }
        if fds.len() != expected {
            return Err(ScmError::ManifestMismatch {
                manifest: expected,
                fds: fds.len(),
                direction: "received",
            });
        }
        Ok((manifest, fds))
    }

    fn receive_manifest<M: FdManifest>(
        &self,
        max_manifest_size: usize,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<M, ScmError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.receive_exact(&mut header, fds)?;
        let len = u64::from_le_bytes(header);
        if len < FRAME_HEADER_LEN as u64 || len > max_manifest_size as u64 {
            return Err(ScmError::BadManifestLength {
                len,
                max: max_manifest_size,
            });
        }
        // Bounded by max_manifest_size just above.
        let mut body = vec![0u8; len as usize - FRAME_HEADER_LEN];
        self.receive_exact(&mut body, fds)?;
        if !fds.is_empty() {
            return Err(ScmError::UnexpectedRecord {
                reason: "fds attached to the manifest",
            });
        }
        M::decode(body.as_slice()).map_err(|source| ScmError::Decode { source })
    }

    /// Fills `buf` exactly, taking ownership of every fd that arrives.
    fn receive_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<(), ScmError> {
        let fd = self.stream.as_raw_fd();
        let mut filled = 0;
        let mut cmsg_buffer = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        while filled < buf.len() {
            let mut iov = [IoSliceMut::new(&mut buf[filled..])];
            let received = match recvmsg::<()>(
                fd,
                &mut iov,
                Some(&mut cmsg_buffer),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(message) => message,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(ScmError::from_errno("recvmsg", errno)),
            };
            let bytes = received.bytes;
            // With the buffer sized for SCM_MAX_FD this cannot happen for
            // SCM_RIGHTS; if it does, fds already installed cannot be listed.
            let cmsgs = received.cmsgs().map_err(|_| ScmError::Truncated)?;
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(raw_fds) = cmsg {
                    for raw in raw_fds {
                        // SAFETY: the kernel just installed `raw` in our fd
                        // table for this message; nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
            }
            if bytes == 0 {
                return Err(ScmError::PeerClosed);
            }
            filled += bytes;
        }
        Ok(())
    }
}

impl AsFd for ScmSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

fn record(kind: u32, count: usize) -> [u8; RECORD_LEN] {
    // Counts are bounded by MAX_FDS_PER_MESSAGE or by the fds a process can
    // hold, far below u32::MAX; saturate rather than wrap if ever not.
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    let mut bytes = [0u8; RECORD_LEN];
    bytes[..4].copy_from_slice(&kind.to_le_bytes());
    bytes[4..].copy_from_slice(&count.to_le_bytes());
    bytes
}

fn parse_record(bytes: [u8; RECORD_LEN]) -> (u32, u32) {
    let [k0, k1, k2, k3, c0, c1, c2, c3] = bytes;
    (
        u32::from_le_bytes([k0, k1, k2, k3]),
        u32::from_le_bytes([c0, c1, c2, c3]),
    )
}

/// Zips manifest entries with the fds received, in order.
fn pair_with_manifest(
    manifest: ListenSocketManifest,
    fds: Vec<OwnedFd>,
) -> Result<Vec<ListenSocket>, ScmError> {
    manifest
        .entries
        .into_iter()
        .zip(fds)
        .enumerate()
        .map(|(index, (entry, fd))| {
            let address = SocketAddr::try_from(&entry.address)
                .map_err(|source| ScmError::BadAddress { index, source })?;
            let proxy =
                ListenerType::try_from(entry.proxy).map_err(|_| ScmError::UnknownListenerType {
                    index,
                    value: entry.proxy,
                })?;
            Ok(ListenSocket { address, proxy, fd })
        })
        .collect()
}
