//! One cluster's backends and its selection policy.
//!
//! Owns each backend's status and active-flow count (and a handle on its
//! count of pending `DNS_ID` queries, moved by the DNS mux), an index of
//! the backends by id, and keeps the policy's tables in step with them:
//! every mutation that changes what a pick may return marks the tables
//! stale, and [`BackendList::refresh`] rebuilds them once for any number of
//! mutations. The worker refreshes every list its orders changed after
//! each batch of orders (`BackendMap::refresh`), so a pick finds its tables
//! built; [`BackendList::select`] refreshes a list still stale (a caller
//! without that loop) rather than pick from stale tables. Rebuilding on
//! every mutation made a replay of n backends of one cluster O(n²).

use std::collections::HashMap;
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
    /// Each backend's position in `backends`.
    index: HashMap<BackendId, usize>,
    policy: LoadBalancingPolicy,
    fail_open: bool,
    /// How many backends are suspect (kept by `refresh`).
    suspects: usize,
    /// A mutation since the policy's tables were last built.
    stale: bool,
    /// Table rebuilds so far (see [`BackendList::rebuilds`]).
    rebuilds: u64,
}

impl BackendList {
    /// An empty list with `algorithm`, seeded with `seed`; fail-open.
    pub fn new(algorithm: Algorithm, seed: u64) -> Self {
        BackendList {
            backends: Vec::new(),
            index: HashMap::new(),
            policy: LoadBalancingPolicy::new(algorithm, seed),
            fail_open: true,
            suspects: 0,
            stale: false,
            rebuilds: 0,
        }
    }

    /// How many times the policy's tables were rebuilt: once per refresh
    /// after any number of mutations, so tests can prove that a replay of n
    /// backends does not rebuild n times.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Whether a mutation waits for [`BackendList::refresh`].
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Rebuilds the policy's tables (and the suspect count) if a mutation
    /// changed what a pick may return since the last rebuild.
    pub fn refresh(&mut self) {
        if !self.stale {
            return;
        }
        self.stale = false;
        self.rebuilds += 1;
        self.suspects = self
            .backends
            .iter()
            .filter(|b| b.status == BackendStatus::Suspect)
            .count();
        let tier = Tier::of(&self.backends, self.fail_open);
        self.policy.rebuild(&self.backends, |b| tier.admits(b));
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Backend> {
        let position = self.position(id)?;
        self.backends.get_mut(position)
    }

    /// In debug builds, after a rebuild: the index names every backend at
    /// its position.
    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        assert_eq!(
            self.index.len(),
            self.backends.len(),
            "one index entry per backend"
        );
        assert!(
            self.backends
                .iter()
                .enumerate()
                .all(|(i, b)| self.index.get(&b.id) == Some(&i)),
            "the index names every backend at its position"
        );
    }

    /// The backends, in insertion order (removal may reorder).
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend with this id.
    pub fn get(&self, id: &str) -> Option<&Backend> {
        self.backends.get(self.position(id)?)
    }

    /// The selection algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.policy.algorithm()
    }

    /// Whether all-down means "balance over all" (`true`) or "no backend".
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// Changes the algorithm (its table is built at the next refresh).
    pub fn set_algorithm(&mut self, algorithm: Algorithm) {
        if algorithm != self.policy.algorithm() {
            self.policy.set_algorithm(algorithm);
            self.mark_stale();
        }
    }

    /// Changes what happens when every backend is down.
    pub fn set_fail_open(&mut self, fail_open: bool) {
        if fail_open != self.fail_open {
            self.fail_open = fail_open;
            self.mark_stale();
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
        let outcome = match self.get_mut(id.as_str()) {
            Some(existing) => {
                let previous_address = existing.address;
                existing.address = address;
                existing.weight = weight;
                existing.backup = backup;
                Upsert::Updated { previous_address }
            }
            None => {
                let mut backend = Backend::new(id.clone(), address, weight);
                backend.backup = backup;
                self.index.insert(id, self.backends.len());
                self.backends.push(backend);
                Upsert::Added
            }
        };
        self.mark_stale();
        outcome
    }

    /// Sets (or clears) a backend's QUIC-LB server ID; `false` if the
    /// backend is unknown. The caller checked that no other backend of the
    /// cluster has it ([`Self::by_server_id`]).
    pub fn set_quic_lb_server_id(&mut self, id: &str, server_id: Option<ServerId>) -> bool {
        match self.get_mut(id) {
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
        let position = self.index.remove(id)?;
        let removed = self.backends.remove(position);
        // The backends after it moved down by one (a removal costs the
        // cluster's backends, as its rebuild does).
        for (i, b) in self.backends.iter().enumerate().skip(position) {
            self.index.insert(b.id.clone(), i);
        }
        self.mark_stale();
        Some(removed)
    }

    /// Removes every backend, for a removed cluster.
    pub fn drain(&mut self) -> Vec<Backend> {
        let all = std::mem::take(&mut self.backends);
        self.index.clear();
        self.mark_stale();
        all
    }

    /// Sets a backend's status; `Some(previous)` when it changed.
    pub fn set_status(&mut self, id: &str, status: BackendStatus) -> Option<BackendStatus> {
        let backend = self.get_mut(id)?;
        let previous = backend.status;
        if previous == status {
            return None;
        }
        backend.status = status;
        if status != BackendStatus::Suspect {
            backend.suspect_until = None;
        }
        self.mark_stale();
        Some(previous)
    }

    /// Marks an up backend suspect until `until` (`None`: until it answers
    /// or a health check decides); a suspect one has its suspicion extended,
    /// a down one stays down. `true` when it was up.
    pub fn suspect(&mut self, id: &str, until: Option<Instant>) -> bool {
        let Some(backend) = self.get_mut(id) else {
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
                self.mark_stale();
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
            self.mark_stale();
        }
    }

    /// Whether some backend is suspect (so a pick should first expire
    /// lapsed suspicions), as of the last [`refresh`](Self::refresh).
    pub fn has_suspects(&self) -> bool {
        self.suspects > 0
    }

    /// Chooses a backend for a new flow; `None` when none may take it.
    /// Refreshes the tables first if a mutation left them stale.
    pub fn select(&mut self, affinity_hash: u64) -> Option<&Backend> {
        self.refresh();
        let index = self.policy.pick(&self.backends, affinity_hash)?;
        self.backends.get(index)
    }

    /// Counts a flow opened on a backend; `false` if it is unknown.
    pub fn flow_opened(&mut self, id: &str) -> bool {
        match self.get_mut(id) {
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
        match self.get_mut(id) {
            Some(b) => {
                debug_assert!(b.active_flows > 0, "flow_closed without flow_opened");
                b.active_flows = b.active_flows.saturating_sub(1);
                true
            }
            None => false,
        }
    }

    /// What a pick may return changed: the tables wait for
    /// [`refresh`](Self::refresh).
    fn mark_stale(&mut self) {
        self.stale = true;
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
