//! Backend health for every protocol: per-cluster probe configuration, the
//! pure probe scheduler with its rise/fall state ([`HealthChecker`]), the
//! socket side of one probe ([`probe`]) and the probes in flight with the
//! application of the checker's events ([`prober`]).
//!
//! The checker never touches sockets or reads the clock (`now` is injected);
//! [`probe::ProbeSocket`] is its I/O twin. Neither changes backend status
//! itself: the worker applies [`HealthEvent`]s to `crate::backends::BackendMap`.

mod checker;
pub(crate) mod probe;
pub(crate) mod prober;

#[cfg(test)]
mod tests;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use sozu_command_lib::command;

pub use checker::{HealthChecker, HealthEvent, Probe, ProbeId, ProbeKind};

/// How a cluster's backends are probed. The mode means exactly that mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthMode {
    /// No probes; backends are never declared down.
    Off,
    /// A TCP connect to the companion port; success when the handshake ends.
    TcpProbe,
    /// A UDP datagram with the payload; any reply is success, ECONNREFUSED
    /// or silence until the timeout is failure.
    UdpProbe,
}

impl HealthMode {
    /// The configuration / wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthMode::Off => "HEALTH_OFF",
            HealthMode::TcpProbe => "TCP_PROBE",
            HealthMode::UdpProbe => "UDP_PROBE",
        }
    }
}

/// Health checking of one cluster (`[clusters.<id>.udp.health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Which probe, if any.
    pub mode: HealthMode,
    /// Port of the TCP probe; `None` means the backend's data port.
    pub tcp_port: Option<u16>,
    /// Consecutive successes that bring a down backend up.
    pub rise: NonZeroU32,
    /// Consecutive failures that take an up backend down.
    pub fall: NonZeroU32,
    /// When every backend is down: balance over all (`true`) or drop.
    pub fail_open: bool,
    /// Payload of the UDP probe (may be empty: a zero-length datagram).
    pub udp_payload: Arc<[u8]>,
    /// Time between the starts of two probes of one backend.
    pub interval: Duration,
    /// How long a probe may wait for its answer.
    pub timeout: Duration,
}

impl Default for HealthConfig {
    /// The defaults doc/configure.md lists for `[clusters.<id>.udp.health]`,
    /// with probing off.
    fn default() -> Self {
        HealthConfig {
            mode: HealthMode::Off,
            tcp_port: None,
            rise: NonZeroU32::new(2).expect("2 is not zero"),
            fall: NonZeroU32::new(3).expect("3 is not zero"),
            fail_open: true,
            udp_payload: Arc::from(&[][..]),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// A health configuration that cannot be applied; names field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthConfigError {
    /// `mode` is not a known mode.
    #[error("udp.health.mode: unknown value {0}")]
    UnknownMode(i32),
    /// `tcp_port` is not a port.
    #[error("udp.health.tcp_port: {0} is not a port (1..=65535)")]
    TcpPort(u32),
    /// `rise`, `fall`, `interval` or `timeout` is zero.
    #[error("udp.health.{field}: must be at least 1, got 0")]
    Zero {
        /// The field.
        field: &'static str,
    },
}

impl TryFrom<&command::UdpHealthConfig> for HealthConfig {
    type Error = HealthConfigError;

    /// The wire form; an absent `mode` means TCP_PROBE (the block exists).
    fn try_from(wire: &command::UdpHealthConfig) -> Result<Self, Self::Error> {
        let mode = match wire.mode {
            None => HealthMode::TcpProbe,
            Some(raw) => match command::UdpHealthMode::try_from(raw) {
                Ok(command::UdpHealthMode::HealthOff) => HealthMode::Off,
                Ok(command::UdpHealthMode::TcpProbe) => HealthMode::TcpProbe,
                Ok(command::UdpHealthMode::UdpProbe) => HealthMode::UdpProbe,
                Err(_) => return Err(HealthConfigError::UnknownMode(raw)),
            },
        };
        let tcp_port = match wire.tcp_port {
            None => None,
            Some(port) => Some(
                u16::try_from(port)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or(HealthConfigError::TcpPort(port))?,
            ),
        };
        let non_zero =
            |value: u32, field| NonZeroU32::new(value).ok_or(HealthConfigError::Zero { field });
        let seconds = |value: u32, field| {
            if value == 0 {
                Err(HealthConfigError::Zero { field })
            } else {
                Ok(Duration::from_secs(u64::from(value)))
            }
        };
        Ok(HealthConfig {
            mode,
            tcp_port,
            rise: non_zero(wire.rise(), "rise")?,
            fall: non_zero(wire.fall(), "fall")?,
            fail_open: wire.fail_open(),
            udp_payload: Arc::from(wire.udp_probe_payload()),
            interval: seconds(wire.probe_interval_seconds(), "probe_interval_seconds")?,
            timeout: seconds(wire.probe_timeout_seconds(), "probe_timeout_seconds")?,
        })
    }
}
