//! One cluster's backends and its selection policy.
//!
//! Owns each backend's status and active-flow count (and a handle on its
//! count of pending `DNS_ID` queries, moved by the DNS mux), and keeps the
//! policy's tables in step with them: every mutation that changes what a
//! pick may return rebuilds the policy here, so a pick never does.

use std::net::SocketAddr;
use std::time::Instant;

use crate::load_balancing::{stable_hash, Algorithm, Candidate, LoadBalancingPolicy};

use crate::protocol::ids::BackendId;
use crate::protocol::udp::{PendingQueries, ServerId};

/// Weight of a backend added without `load_balancing_parameters` (Sōzu's
/// default).
pub use sozu_command_lib::proto::weight::DEFAULT_WEIGHT;

/// Whether a backend may receive new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendStatus {
    /// Healthy, or not health-checked.
    Up,
    /// Failed recently (e.g. refused a datagram) but not declared down.
    /// Gets no new flows while another backend of the cluster is up; the
    /// suspicion ends when the backend answers, or after a cooldown
    /// ([`super::SUSPECT_COOLDOWN`]), so a backend that came back is tried
    /// again even without health checks.
    Suspect,
    /// Declared down by its health check: no new flows (unless the whole
    /// cluster is down and `fail_open` is set).
    Down,
}

impl BackendStatus {
    /// The status name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendStatus::Up => "up",
            BackendStatus::Suspect => "suspect",
            BackendStatus::Down => "down",
        }
    }
}

/// A backend of a cluster.
#[derive(Debug, Clone)]
pub struct Backend {
    id: BackendId,
    address: SocketAddr,
    weight: u32,
    status: BackendStatus,
    active_flows: u64,
    /// `DNS_ID` queries waiting for its answer (moved by the DNS mux of
    /// every listener whose sockets carry its queries).
    pending_queries: PendingQueries,
    identity_hash: u64,
    /// While suspect: when the suspicion lapses.
    suspect_until: Option<Instant>,
    /// A backup gets new flows only while no primary (non-backup) backend
    /// of its cluster is available.
    backup: bool,
    /// Its QUIC-LB server ID: new flows whose connection ID names it come
    /// here whatever the policy (unless it is down).
    quic_lb_server_id: Option<ServerId>,
}

impl Backend {
    /// A new backend, up, with no flows.
    pub fn new(id: BackendId, address: SocketAddr, weight: u32) -> Self {
        let identity_hash = stable_hash(id.as_str().as_bytes());
        Backend {
            id,
            address,
            weight,
            status: BackendStatus::Up,
            active_flows: 0,
            pending_queries: PendingQueries::new(),
            identity_hash,
            suspect_until: None,
            backup: false,
            quic_lb_server_id: None,
        }
    }

    /// Its id.
    pub fn id(&self) -> &BackendId {
        &self.id
    }

    /// Where its traffic goes.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its relative weight (0: no new flows).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Its health status.
    pub fn status(&self) -> BackendStatus {
        self.status
    }

    /// Flows (or connections) currently using it.
    pub fn active_flows(&self) -> u64 {
        self.active_flows
    }

    /// `DNS_ID` queries sent to it and not answered, expired or dropped yet.
    pub fn pending_queries(&self) -> u64 {
        self.pending_queries.get()
    }

    /// The handle the DNS mux moves its pending-query count with.
    pub(crate) fn pending_queries_handle(&self) -> &PendingQueries {
        &self.pending_queries
    }

    /// Whether it is a backup (used only while no primary is available).
    pub fn is_backup(&self) -> bool {
        self.backup
    }

    /// Its QUIC-LB server ID, if it has one.
    pub fn quic_lb_server_id(&self) -> Option<ServerId> {
        self.quic_lb_server_id
    }
}

impl Candidate for Backend {
    fn identity_hash(&self) -> u64 {
        self.identity_hash
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    /// Live flows (or connections) plus pending `DNS_ID` queries: the work
    /// it holds.
    fn load(&self) -> u64 {
        self.active_flows.saturating_add(self.pending_queries.get())
    }
}

/// What [`BackendList::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new backend.
    Added,
    /// The id existed: its address and weight were replaced (status and flow
    /// count kept). `previous_address` is where its live flows still go.
    Updated {
        /// Where its live flows still go.
        previous_address: SocketAddr,
    },
}

/// The backends of one cluster and how to choose among them.
#[derive(Debug, Clone)]
pub struct BackendList {
    backends: Vec<Backend>,
    policy: LoadBalancingPolicy,
    fail_open: bool,
    /// How many backends are suspect (kept by `rebuild`).
    suspects: usize,
}

impl BackendList {
    /// An empty list with `algorithm`, seeded with `seed`; fail-open.
    pub fn new(algorithm: Algorithm, seed: u64) -> Self {
        BackendList {
            backends: Vec::new(),
            policy: LoadBalancingPolicy::new(algorithm, seed),
            fail_open: true,
            suspects: 0,
        }
    }

    /// The backends, in insertion order (removal may reorder).
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend with this id.
    pub fn get(&self, id: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.id.as_str() == id)
    }

    /// The selection algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.policy.algorithm()
    }

    /// Whether all-down means "balance over all" (`true`) or "no backend".
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// Changes the algorithm (rebuilding its table).
    pub fn set_algorithm(&mut self, algorithm: Algorithm) {
        if algorithm != self.policy.algorithm() {
            let tier = Tier::of(&self.backends, self.fail_open);
            self.policy
                .set_algorithm(algorithm, &self.backends, |b| tier.admits(b));
        }
    }

    /// Changes what happens when every backend is down.
    pub fn set_fail_open(&mut self, fail_open: bool) {
        if fail_open != self.fail_open {
            self.fail_open = fail_open;
            self.rebuild();
        }
    }

    /// Adds a primary backend, or updates address and weight of the one
    /// with this id (which becomes a primary).
    pub fn upsert(&mut self, id: BackendId, address: SocketAddr, weight: u32) -> Upsert {
        self.upsert_with_role(id, address, weight, false)
    }

    /// Adds a backend, or updates address, weight and role (`backup`) of
    /// the one with this id.
    pub fn upsert_with_role(
        &mut self,
        id: BackendId,
        address: SocketAddr,
        weight: u32,
        backup: bool,
    ) -> Upsert {
        let outcome = match self.backends.iter_mut().find(|b| b.id == id) {
            Some(existing) => {
                let previous_address = existing.address;
                existing.address = address;
                existing.weight = weight;
                existing.backup = backup;
                Upsert::Updated { previous_address }
            }
            None => {
                let mut backend = Backend::new(id, address, weight);
                backend.backup = backup;
                self.backends.push(backend);
                Upsert::Added
            }
        };
        self.rebuild();
        outcome
    }

    /// Sets (or clears) a backend's QUIC-LB server ID; `false` if the
    /// backend is unknown. The caller checked that no other backend of the
    /// cluster has it ([`Self::by_server_id`]).
    pub fn set_quic_lb_server_id(&mut self, id: &str, server_id: Option<ServerId>) -> bool {
        match self.backends.iter_mut().find(|b| b.id.as_str() == id) {
            Some(b) => {
                b.quic_lb_server_id = server_id;
                true
            }
            None => false,
        }
    }

    /// The backend with this QUIC-LB server ID (a scan: backends are few,
    /// and it runs once per new flow, like a policy pick).
    pub fn by_server_id(&self, server_id: &ServerId) -> Option<&Backend> {
        self.backends
            .iter()
            .find(|b| b.quic_lb_server_id.as_ref() == Some(server_id))
    }

    /// Removes a backend; the caller aborts (or keeps) its flows.
    pub fn remove(&mut self, id: &str) -> Option<Backend> {
        let position = self.backends.iter().position(|b| b.id.as_str() == id)?;
        let removed = self.backends.remove(position);
        self.rebuild();
        Some(removed)
    }

    /// Removes every backend, for a removed cluster.
    pub fn drain(&mut self) -> Vec<Backend> {
        let all = std::mem::take(&mut self.backends);
        self.rebuild();
        all
    }

    /// Sets a backend's status; `Some(previous)` when it changed.
    pub fn set_status(&mut self, id: &str, status: BackendStatus) -> Option<BackendStatus> {
        let backend = self.backends.iter_mut().find(|b| b.id.as_str() == id)?;
        let previous = backend.status;
        if previous == status {
            return None;
        }
        backend.status = status;
        if status != BackendStatus::Suspect {
            backend.suspect_until = None;
        }
        self.rebuild();
        Some(previous)
    }

    /// Marks an up backend suspect until `until` (`None`: until it answers
    /// or a health check decides); a suspect one has its suspicion extended,
    /// a down one stays down. `true` when it was up.
    pub fn suspect(&mut self, id: &str, until: Option<Instant>) -> bool {
        let Some(backend) = self.backends.iter_mut().find(|b| b.id.as_str() == id) else {
            return false;
        };
        match backend.status {
            BackendStatus::Down => false,
            BackendStatus::Suspect => {
                backend.suspect_until = until;
                false
            }
            BackendStatus::Up => {
                backend.status = BackendStatus::Suspect;
                backend.suspect_until = until;
                self.rebuild();
                true
            }
        }
    }

    /// Puts back up every suspect backend whose suspicion lapsed at `now`.
    /// O(backends) only when some backend is suspect.
    pub fn expire_suspicions(&mut self, now: Instant) {
        let mut changed = false;
        for backend in &mut self.backends {
            if backend.status == BackendStatus::Suspect
                && backend.suspect_until.is_some_and(|until| until <= now)
            {
                backend.status = BackendStatus::Up;
                backend.suspect_until = None;
                changed = true;
            }
        }
        if changed {
            self.rebuild();
        }
    }

    /// Whether some backend is suspect (so a pick should first expire
    /// lapsed suspicions).
    pub fn has_suspects(&self) -> bool {
        self.suspects > 0
    }

    /// Chooses a backend for a new flow; `None` when none may take it.
    pub fn select(&mut self, affinity_hash: u64) -> Option<&Backend> {
        let index = self.policy.pick(&self.backends, affinity_hash)?;
        self.backends.get(index)
    }

    /// Counts a flow opened on a backend; `false` if it is unknown.
    pub fn flow_opened(&mut self, id: &str) -> bool {
        match self.backends.iter_mut().find(|b| b.id.as_str() == id) {
            Some(b) => {
                b.active_flows += 1;
                true
            }
            None => false,
        }
    }

    /// Counts a flow closed on a backend; `false` if it is unknown (e.g.
    /// removed while the flow was kept).
    pub fn flow_closed(&mut self, id: &str) -> bool {
        match self.backends.iter_mut().find(|b| b.id.as_str() == id) {
            Some(b) => {
                debug_assert!(b.active_flows > 0, "flow_closed without flow_opened");
                b.active_flows = b.active_flows.saturating_sub(1);
                true
            }
            None => false,
        }
    }

    fn rebuild(&mut self) {
        self.suspects = self
            .backends
            .iter()
            .filter(|b| b.status == BackendStatus::Suspect)
            .count();
        let tier = Tier::of(&self.backends, self.fail_open);
        self.policy.rebuild(&self.backends, |b| tier.admits(b));
    }
}

/// Which backends may take new flows, best first: the up primaries; if
/// none, the up backups; if none, the suspect primaries, then the suspect
/// backups (a suspicion is weaker than a health check's verdict); if none,
/// when the cluster fails open, every primary (every backend if it has no
/// primary), else none. A backend of weight 0 never makes a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Backends with this status and this role (`backup`).
    Only(BackendStatus, bool),
    /// Fail-open with every backend down: these roles (`true`: backups
    /// too).
    All {
        backups: bool,
    },
    Nothing,
}

impl Tier {
    fn of(backends: &[Backend], fail_open: bool) -> Tier {
        let has = |status, backup| {
            backends
                .iter()
                .any(|b| b.status == status && b.backup == backup && b.weight > 0)
        };
        for status in [BackendStatus::Up, BackendStatus::Suspect] {
            for backup in [false, true] {
                if has(status, backup) {
                    return Tier::Only(status, backup);
                }
            }
        }
        if fail_open {
            let primaries = backends.iter().any(|b| !b.backup && b.weight > 0);
            Tier::All {
                backups: !primaries,
            }
        } else {
            Tier::Nothing
        }
    }

    fn admits(self, backend: &Backend) -> bool {
        match self {
            Tier::Only(status, backup) => backend.status == status && backend.backup == backup,
            Tier::All { backups } => backups || !backend.backup,
            Tier::Nothing => false,
        }
    }
}
