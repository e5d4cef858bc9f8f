//! The worker-wide flow budget: one pool of flows that every UDP listener of
//! a worker draws from, sized by what a flow really costs the host.
//!
//! Every admitted flow holds one connected upstream socket: one file
//! descriptor of the worker, and one ephemeral source port of the host
//! (`connect` on an unbound socket takes one from `ip_local_port_range`,
//! shared by every process and every worker). [`PoolLimits::capacity`] turns
//! the fd limit, the size of that range, the number of workers sharing it
//! and the number of upstream source addresses (each brings its own range)
//! into a number of flows; [`FlowPool::allowance`] says how many new flows
//! one listener may admit now, given what every listener holds, so that one
//! busy listener can use most of the pool without starving the others.
//!
//! Pure accounting: no system calls (the shell reads the fd limit and the
//! port range and passes them in), no clock, no state beyond the capacity.
//! The shell (`super::shell`) turns an allowance into the core's
//! `max_flows` before each read of a listener; the core
//! (`crate::protocol::udp`) sheds at that cap and counts it. See
//! `doc/udp.md` ("One flow budget per worker") for the formulas and the
//! fairness rule.

/// Descriptors kept for everything that is not a flow: the channel, the
/// listener sockets, health probes, statsd, logs, TCP and HTTP listeners.
pub(crate) const RESERVED_FDS: u64 = 256;

/// Ephemeral ports left to the rest of the host (other programs' outgoing
/// sockets, the kernel's own random probing, which slows down as the range
/// fills): one eighth of the range.
pub(crate) const PORT_HEADROOM_DIVISOR: u64 = 8;

/// The reserve is at most this fraction (one eighth) of the pool.
pub(crate) const RESERVE_DIVISOR: usize = 8;

/// What bounds the number of flows of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolLimits {
    /// The worker's soft `RLIMIT_NOFILE` (after raising it).
    pub fd_limit: u64,
    /// Ports in `net.ipv4.ip_local_port_range` (`hi − lo + 1`), `None`
    /// when it could not be read (the port term is then left out).
    pub ephemeral_ports: Option<u64>,
    /// Workers sharing the host's port range (`worker_count`, at least 1).
    pub workers: u64,
    /// Configured upstream source addresses (`0`: none, the kernel picks
    /// the route's address and all flows share one port range).
    pub source_addresses: u64,
}

impl PoolLimits {
    /// Limits with only the fd limit known (one worker, no port range).
    pub(crate) fn from_fd_limit(fd_limit: u64) -> Self {
        PoolLimits {
            fd_limit,
            ephemeral_ports: None,
            workers: 1,
            source_addresses: 0,
        }
    }

    /// Flows the fd limit allows: `(fd_limit − 256) × 9/10`.
    pub(crate) fn fd_budget(&self) -> u64 {
        self.fd_limit.saturating_sub(RESERVED_FDS) / 10 * 9
            + self.fd_limit.saturating_sub(RESERVED_FDS) % 10 * 9 / 10
    }

    /// Flows this worker's share of the port range allows:
    /// `(ports − ports / 8) × max(1, addresses) / workers`.
    pub(crate) fn port_budget(&self) -> Option<u64> {
        let ports = self.ephemeral_ports?;
        let usable = ports - ports / PORT_HEADROOM_DIVISOR;
        let ranges = self.source_addresses.max(1);
        Some(usable.saturating_mul(ranges) / self.workers.max(1))
    }

    /// The pool: the smaller of the two budgets, at least 1 flow.
    pub(crate) fn capacity(&self) -> usize {
        let flows = match self.port_budget() {
            Some(ports) => self.fd_budget().min(ports),
            None => self.fd_budget(),
        };
        usize::try_from(flows).unwrap_or(usize::MAX).max(1)
    }
}

/// One listener as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Its live flows (awaiting a backend or established): each holds, or
    /// is about to hold, a socket.
    pub flows: usize,
    /// Its explicit `max_flows` (`None`: automatic, the pool only).
    pub cap: Option<usize>,
    /// Whether it admits new flows at all (being read): only those count
    /// in the fair share.
    pub admitting: bool,
}

/// The worker-wide pool of flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowPool {
    capacity: usize,
}

impl FlowPool {
    /// A pool of `capacity` flows (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        FlowPool {
            capacity: capacity.max(1),
        }
    }

    /// Its size in flows.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// One listener's fair share when `admitting` listeners draw from the
    /// pool: `capacity / admitting`, at least 1.
    pub(crate) fn fair_share(&self, admitting: usize) -> usize {
        (self.capacity / admitting.max(1)).max(1)
    }

    /// Slots only a listener below its fair share may take: one fair share,
    /// at most an eighth of the pool (none with a single listener, whose
    /// share is the whole pool).
    pub(crate) fn reserve(&self, admitting: usize) -> usize {
        if admitting <= 1 {
            return 0;
        }
        self.fair_share(admitting)
            .min(self.capacity / RESERVE_DIVISOR)
    }

    /// How many new flows `me` may admit now, given every other listener
    /// of the worker (`others`, `me` excluded).
    ///
    /// With `free = capacity − flows of all listeners`:
    /// - below its fair share, a listener may take any free slot, up to its
    ///   share;
    /// - beyond its share, only free slots above the reserve.
    ///
    /// So the last `reserve` free slots always wait for listeners below
    /// their share, and slots freed by ending flows go to them first. The
    /// result never exceeds `free`, nor `me.cap − me.flows`.
    pub(crate) fn allowance(&self, me: Member, others: Others) -> usize {
        let admitting = usize::from(me.admitting) + others.admitting;
        let free = self
            .capacity
            .saturating_sub(me.flows.saturating_add(others.flows));
        let share = self.fair_share(admitting);
        let below = share.saturating_sub(me.flows).min(free);
        let beyond = (free - below).saturating_sub(self.reserve(admitting));
        let allowed = below + beyond;
        match me.cap {
            Some(cap) => allowed.min(cap.saturating_sub(me.flows)),
            None => allowed,
        }
    }

    /// The `max_flows` to give `me`'s flow manager for its next batch of
    /// datagrams: its live flows plus its allowance.
    pub(crate) fn cap_for(&self, me: Member, others: Others) -> usize {
        me.flows.saturating_add(self.allowance(me, others))
    }
}

/// The other listeners of the worker, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Others {
    /// Their live flows.
    pub flows: usize,
    /// How many of them admit new flows.
    pub admitting: usize,
}

impl Others {
    /// Sums `members` (the shell files them one by one instead, in
    /// `super::ledger`; this is the walk its debug check compares with).
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn sum(members: impl IntoIterator<Item = Member>) -> Self {
        members
            .into_iter()
            .fold(Others::default(), |acc, m| Others {
                flows: acc.flows.saturating_add(m.flows),
                admitting: acc.admitting + usize::from(m.admitting),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(flows: usize) -> Member {
        Member {
            flows,
            cap: None,
            admitting: true,
        }
    }

    /// Admits one flow at a time on listener `who` while its allowance
    /// says so (as the shell does batch after batch); returns how many.
    fn fill(pool: &FlowPool, members: &mut [Member], who: usize, wanted: usize) -> usize {
        let mut admitted = 0;
        while admitted < wanted {
            let me = members[who];
            let others = Others::sum(
                members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != who)
                    .map(|(_, m)| *m),
            );
            if pool.allowance(me, others) == 0 {
                break;
            }
            members[who].flows += 1;
            admitted += 1;
        }
        admitted
    }

    #[test]
    fn the_fd_budget_keeps_a_reserve_and_a_tenth_of_the_limit() {
        assert_eq!(PoolLimits::from_fd_limit(1_048_576).capacity(), 943_488);
        assert_eq!(PoolLimits::from_fd_limit(20_000).capacity(), 17_769);
        assert_eq!(PoolLimits::from_fd_limit(1024).capacity(), 691);
        // A tiny limit still admits one flow.
        assert_eq!(PoolLimits::from_fd_limit(100).capacity(), 1);
    }

    #[test]
    fn the_port_range_is_shared_by_the_workers_with_headroom() {
        // 32768..=60999: 28,232 ports, 3,529 left to the host.
        let limits = PoolLimits {
            fd_limit: 1_048_576,
            ephemeral_ports: Some(28_232),
            workers: 2,
            source_addresses: 0,
        };
        assert_eq!(limits.port_budget(), Some(12_351));
        assert_eq!(limits.capacity(), 12_351);
        // Two workers never take more than the range minus its headroom.
        assert!(limits.capacity() * 2 <= 28_232 - 28_232 / 8);
    }

    #[test]
    fn each_source_address_brings_its_own_port_range() {
        let limits = PoolLimits {
            fd_limit: 1_048_576,
            ephemeral_ports: Some(28_232),
            workers: 2,
            source_addresses: 4,
        };
        assert_eq!(limits.port_budget(), Some(49_406));
        assert_eq!(limits.capacity(), 49_406);
    }

    #[test]
    fn the_smaller_of_fds_and_ports_wins() {
        let limits = PoolLimits {
            fd_limit: 20_000,
            ephemeral_ports: Some(28_232),
            workers: 1,
            source_addresses: 0,
        };
        assert_eq!(limits.capacity(), 17_769);
        let narrow = PoolLimits {
            ephemeral_ports: Some(1_000),
            ..limits
        };
        assert_eq!(narrow.capacity(), 875);
    }

    #[test]
    fn a_lone_listener_may_fill_the_whole_pool() {
        let pool = FlowPool::new(1_000);
        let mut members = [auto(0)];
        assert_eq!(fill(&pool, &mut members, 0, 5_000), 1_000);
        assert_eq!(pool.allowance(members[0], Others::default()), 0);
    }

    #[test]
    fn one_busy_listener_of_eight_takes_all_but_the_reserve() {
        // The case: 8 listeners, 17,769 flows; a static share
        // stopped the busy one at 2,221.
        let pool = FlowPool::new(17_769);
        let mut members = [auto(0); 8];
        let admitted = fill(&pool, &mut members, 0, 20_000);
        assert_eq!(admitted, 17_769 - 2_221);
        assert!(admitted >= 5_000);
    }

    #[test]
    fn a_quiet_listener_below_its_share_admits_when_the_busy_one_is_full() {
        let pool = FlowPool::new(800);
        let mut members = [auto(0); 4];
        // Share 200, reserve 100: the busy one stops at 700.
        assert_eq!(fill(&pool, &mut members, 0, 10_000), 700);
        // Another listener still gets the 100 reserved slots at once.
        assert_eq!(fill(&pool, &mut members, 1, 150), 100);
        assert_eq!(members.iter().map(|m| m.flows).sum::<usize>(), 800);
    }

    #[test]
    fn slots_freed_by_the_busy_listener_go_first_to_listeners_below_share() {
        let pool = FlowPool::new(800);
        let mut members = [auto(0); 4];
        fill(&pool, &mut members, 0, 10_000);
        fill(&pool, &mut members, 1, 10_000);
        assert_eq!(members[1].flows, 100);
        // 50 of the busy listener's flows end.
        members[0].flows -= 50;
        // The busy one (far above its share) cannot take them back...
        assert_eq!(fill(&pool, &mut members, 0, 10_000), 0);
        // ...the one below its share can.
        assert_eq!(fill(&pool, &mut members, 1, 10_000), 50);
        // Beyond its share it is treated as the busy one: it takes free
        // slots above the reserve only, and leaves the reserve free.
        members[0].flows -= 200;
        assert_eq!(fill(&pool, &mut members, 1, 10_000), 100);
        assert_eq!(members[1].flows, 250);
        let used: usize = members.iter().map(|m| m.flows).sum();
        assert_eq!(800 - used, pool.reserve(4));
    }

    #[test]
    fn the_pool_is_never_overcommitted() {
        let pool = FlowPool::new(500);
        let mut members = [auto(0); 5];
        // Listeners take turns in batches, each as greedy as it may be.
        for round in 0..50 {
            for who in 0..members.len() {
                fill(&pool, &mut members, who, 7 + round % 13);
                let used: usize = members.iter().map(|m| m.flows).sum();
                assert!(used <= 500, "round {round}: {used} flows");
            }
        }
        // Each listener got at least its fair share of 100.
        assert!(members.iter().all(|m| m.flows >= 100), "{members:?}");
    }

    #[test]
    fn an_explicit_max_flows_stays_a_hard_cap() {
        let pool = FlowPool::new(1_000);
        let mut members = [
            Member {
                flows: 0,
                cap: Some(30),
                admitting: true,
            },
            auto(0),
        ];
        assert_eq!(fill(&pool, &mut members, 0, 10_000), 30);
        // And it draws from the pool: its flows hold sockets too.
        let explicit_big = Member {
            flows: 0,
            cap: Some(5_000),
            admitting: true,
        };
        assert_eq!(pool.allowance(explicit_big, Others::default()), 1_000);
    }

    #[test]
    fn listeners_not_read_do_not_dilute_the_share_but_their_flows_count() {
        let pool = FlowPool::new(1_000);
        let stopped = Member {
            flows: 300,
            cap: None,
            admitting: false,
        };
        // Alone in admitting: no reserve, the rest of the pool.
        assert_eq!(pool.allowance(auto(0), Others::sum([stopped])), 700);
    }

    #[test]
    fn cap_for_adds_the_live_flows() {
        let pool = FlowPool::new(100);
        assert_eq!(pool.cap_for(auto(40), Others::default()), 100);
        assert_eq!(pool.cap_for(auto(100), Others::default()), 100);
        // Over the pool (it shrank): no new flow, live ones untouched.
        assert_eq!(pool.cap_for(auto(150), Others::default()), 150);
    }

    mod properties {
        use quickcheck::{Arbitrary, Gen, QuickCheck};

        use super::*;

        /// One listener asks to admit up to `want` flows (as a batch does),
        /// or `ends` of its flows end.
        #[derive(Clone, Debug)]
        enum Step {
            Admit { who: u8, want: u8 },
            End { who: u8, ends: u8 },
        }

        impl Arbitrary for Step {
            fn arbitrary(g: &mut Gen) -> Self {
                if u8::arbitrary(g) % 3 == 0 {
                    Step::End {
                        who: u8::arbitrary(g),
                        ends: u8::arbitrary(g) % 40,
                    }
                } else {
                    Step::Admit {
                        who: u8::arbitrary(g),
                        want: u8::arbitrary(g),
                    }
                }
            }
        }

        #[derive(Clone, Debug)]
        struct Case {
            capacity: usize,
            caps: Vec<Option<usize>>,
            steps: Vec<Step>,
        }

        impl Arbitrary for Case {
            fn arbitrary(g: &mut Gen) -> Self {
                let listeners = 1 + usize::from(u8::arbitrary(g) % 6);
                Case {
                    capacity: 1 + usize::from(u16::arbitrary(g) % 600),
                    caps: (0..listeners)
                        .map(|_| (u8::arbitrary(g) % 4 == 0).then(|| usize::from(u8::arbitrary(g))))
                        .collect(),
                    steps: Vec::arbitrary(g),
                }
            }
        }

        /// Replays a case; `Err` names the first broken promise.
        fn run(case: &Case) -> Result<(), String> {
            let pool = FlowPool::new(case.capacity);
            let mut members: Vec<Member> = case
                .caps
                .iter()
                .map(|&cap| Member {
                    flows: 0,
                    cap,
                    admitting: true,
                })
                .collect();
            let n = members.len();
            let share = pool.fair_share(n);
            let reserve = pool.reserve(n);
            for step in &case.steps {
                match *step {
                    Step::End { who, ends } => {
                        let m = &mut members[usize::from(who) % n];
                        m.flows = m.flows.saturating_sub(usize::from(ends));
                    }
                    Step::Admit { who, want } => {
                        let who = usize::from(who) % n;
                        let me = members[who];
                        let others = Others::sum(
                            members
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| *i != who)
                                .map(|(_, m)| *m),
                        );
                        let allowed = pool.allowance(me, others);
                        let used = me.flows + others.flows;
                        let free = case.capacity - used;
                        let room = me.cap.map_or(usize::MAX, |c| c.saturating_sub(me.flows));
                        // Below its share (and its cap), a listener gets a
                        // slot whenever one is free.
                        if me.flows < share && room > 0 && free > 0 && allowed == 0 {
                            return Err(format!("{me:?} below share {share} refused, {free} free"));
                        }
                        let admitted = allowed.min(usize::from(want));
                        let after = me.flows + admitted;
                        // Beyond its share, it never eats into the reserve.
                        if after > share.max(me.flows) && free - admitted < reserve {
                            return Err(format!(
                                "{me:?} went to {after} beyond share {share}, leaving {} free < reserve {reserve}",
                                free - admitted
                            ));
                        }
                        if let Some(cap) = me.cap {
                            if after > cap.max(me.flows) {
                                return Err(format!("{me:?} went past its cap to {after}"));
                            }
                        }
                        members[who].flows = after;
                        let total: usize = members.iter().map(|m| m.flows).sum();
                        if total > case.capacity {
                            return Err(format!("{total} flows in a pool of {}", case.capacity));
                        }
                    }
                }
            }
            Ok(())
        }

        #[test]
        fn the_pool_keeps_its_promises_whatever_the_order_of_batches() {
            fn prop(case: Case) -> bool {
                match run(&case) {
                    Ok(()) => true,
                    Err(broken) => {
                        eprintln!("broken: {broken}");
                        false
                    }
                }
            }
            QuickCheck::new()
                .tests(500)
                .rng(Gen::new(120))
                .quickcheck(prop as fn(Case) -> bool);
        }
    }
}
