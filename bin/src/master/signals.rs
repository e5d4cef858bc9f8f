//! The master's signals, turned into readable events with a self-pipe: the
//! handler only writes the signal number into a non-blocking pipe whose read
//! end sits in the master's mio loop.
//!
//! Owns the process-wide handlers for SIGCHLD, SIGTERM, SIGINT and SIGHUP.
//! The handler must never do anything but `write(2)` (async-signal-safe);
//! every decision is taken in the loop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Write end of the pipe, read by the handler (a raw fd: handlers cannot
/// take locks).
static PIPE_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = PIPE_WRITE_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // Keep errno intact for the code the signal interrupted.
    // SAFETY: __errno_location returns this thread's errno slot; write(2) is
    // async-signal-safe; the byte lives on this stack frame.
    unsafe {
        let errno = *libc::__errno_location();
        let byte = signal as u8;
        libc::write(fd, (&byte as *const u8).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// What a signal asks of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MasterSignal {
    /// A child changed state: reap with waitpid.
    Child,
    /// SIGTERM: soft stop.
    Terminate,
    /// SIGINT: hard stop.
    Interrupt,
    /// SIGHUP: reload the configuration file.
    Hangup,
}

/// The read end of the self-pipe; register [`SignalPipe::fd`] for readable.
pub(crate) struct SignalPipe {
    read: OwnedFd,
    // Kept open for the handler; closed (and the handler disarmed) on drop.
    _write: OwnedFd,
}

impl SignalPipe {
    /// Creates the pipe and installs the handlers.
    pub(crate) fn install() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        PIPE_WRITE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
            SigSet::empty(),
        );
        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            // SAFETY: the handler only calls write(2) on a pipe fd.
            unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
        }
        // A client that hangs up mid-answer must give EPIPE, not kill us.
        // SAFETY: SIG_IGN installs no code.
        unsafe {
            sigaction(
                Signal::SIGPIPE,
                &SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty()),
            )
        }
        .map_err(io::Error::from)?;
        Ok(SignalPipe {
            read,
            _write: write,
        })
    }

    /// The fd to register in the loop.
    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Reads every pending signal, deduplicated, in arrival order.
    pub(crate) fn drain(&self) -> Vec<MasterSignal> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for &b in &buf[..n] {
                        let signal = match i32::from(b) {
                            libc::SIGCHLD => MasterSignal::Child,
                            libc::SIGTERM => MasterSignal::Terminate,
                            libc::SIGINT => MasterSignal::Interrupt,
                            libc::SIGHUP => MasterSignal::Hangup,
                            _ => continue,
                        };
                        if !out.contains(&signal) {
                            out.push(signal);
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        PIPE_WRITE_FD.store(-1, Ordering::Relaxed);
    }
}
