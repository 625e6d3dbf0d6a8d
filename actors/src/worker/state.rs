//! The Worker's bookkeeping as plain data: health, stats, session binding, its request
//! slots, and the rules for what a checkout, a checkin, a timed-out request or the end of
//! a session does to them, and when a worker should retire. The actor in `worker.rs` only
//! wires these transitions to messages, so the seed's PoolWorker scenarios are tested here
//! without any process.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

/// Worker health: one vocabulary for code, status output, logs and tests (DESIGN.md).
/// Whether the worker is busy is a separate fact (its requests in flight), never a health
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Spawned, handshake not answered yet.
    Starting,
    /// Answered the handshake; serving.
    Ready,
    /// Still serving, but `pool.degrade_after` consecutive requests failed.
    Degraded,
    /// Failed a health ping or reached `pool.remove_after` consecutive errors: replaced.
    Unhealthy,
    /// Going through the stop ladder.
    Stopping,
    /// Process gone and reaped.
    Stopped,
}

impl Health {
    /// Whether a request may be sent to a worker in this state.
    pub fn can_serve(self) -> bool {
        matches!(self, Health::Ready | Health::Degraded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Ready => "ready",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
            Health::Stopping => "stopping",
            Health::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters every worker keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStats {
    /// Times the pool handed this worker a request.
    pub checkouts: u64,
    /// Requests finished (answered, failed or timed out).
    pub requests: u64,
    /// Requests that ended in an error (a timeout included).
    pub errors: u64,
    /// Distinct sessions this worker has served.
    pub sessions_served: u64,
}

/// How a checkout ends, or another event that changes the worker's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkin {
    /// The request succeeded.
    Ok,
    /// The request failed in a way that may be the worker's fault; counts toward
    /// degradation.
    Error,
    /// The request failed for a reason outside the worker (the LM provider is down, the
    /// caller named an unknown program or command): counted as an error, but the worker
    /// itself answered correctly, so its health is untouched.
    CallerError,
    /// A session ended: drop the binding if it is this one and tell Python to forget it.
    SessionCleanup(String),
    /// The worker is being removed.
    Close,
}

/// What the owner of the state must do after a checkin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckinOutcome {
    /// Keep serving.
    Keep,
    /// Keep serving, and send `cleanup_session` for this session to the process.
    CleanupSession(String),
    /// Take the worker out of the pool and replace it.
    Remove,
}

/// When a worker has served long enough to be replaced by a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetireRule {
    /// After this many finished requests (0 = never).
    pub max_requests: u64,
    /// After this long alive (zero = never).
    pub max_lifetime: Duration,
}

/// A worker's state, independent of its process.
#[derive(Debug, Clone)]
pub struct WorkerState {
    pub id: String,
    /// The session this worker is bound to (served last), if any.
    pub session: Option<String>,
    pub health: Health,
    pub stats: WorkerStats,
    capacity: usize,
    /// Requests sent and not yet answered by the process, the stuck ones included.
    in_flight: usize,
    /// Requests whose caller was already answered with a timeout but whose slot stays
    /// taken until the process answers or is recycled.
    stuck: usize,
    consecutive_errors: u32,
    served: HashSet<String>,
    degrade_after: u32,
    remove_after: u32,
}

impl WorkerState {
    /// A worker with `capacity` request slots that has been spawned but not yet answered
    /// its handshake.
    pub fn new(
        id: impl Into<String>,
        capacity: usize,
        degrade_after: u32,
        remove_after: u32,
    ) -> Self {
        WorkerState {
            id: id.into(),
            session: None,
            health: Health::Starting,
            stats: WorkerStats::default(),
            capacity: capacity.max(1),
            in_flight: 0,
            stuck: 0,
            consecutive_errors: 0,
            served: HashSet::new(),
            degrade_after: degrade_after.max(1),
            remove_after: remove_after.max(1),
        }
    }

    /// The handshake succeeded.
    pub fn mark_ready(&mut self) {
        if self.health == Health::Starting {
            self.health = Health::Ready;
        }
    }

    /// How many requests it runs at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests sent and not yet answered by the process (stuck ones included).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Requests already answered to their caller as timed out, still held by the process.
    pub fn stuck(&self) -> usize {
        self.stuck
    }

    /// Whether any request is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight > 0
    }

    /// Hand the worker a request, binding it to `session` if one is given. An anonymous
    /// checkout leaves any existing binding alone.
    pub fn checkout(&mut self, session: Option<&str>) {
        self.in_flight += 1;
        self.stats.checkouts += 1;
        if let Some(session) = session {
            // Looked up first: a session's every request would otherwise copy its id.
            if !self.served.contains(session) {
                self.served.insert(session.to_owned());
                self.stats.sessions_served += 1;
            }
            if self.session.as_deref() != Some(session) {
                self.session = Some(session.to_owned());
            }
        }
    }

    /// Consecutive failed requests since the last success.
    #[cfg(test)]
    fn consecutive_errors(&self) -> u32 {
        self.consecutive_errors
    }

    /// Return a request slot (or apply a session/close event).
    pub fn checkin(&mut self, how: Checkin) -> CheckinOutcome {
        match how {
            Checkin::Ok => {
                self.finish_one();
                self.consecutive_errors = 0;
                if self.health == Health::Degraded {
                    self.health = Health::Ready;
                }
                CheckinOutcome::Keep
            }
            Checkin::Error => {
                self.finish_one();
                self.stats.errors += 1;
                self.fault()
            }
            Checkin::CallerError => {
                self.finish_one();
                self.stats.errors += 1;
                CheckinOutcome::Keep
            }
            Checkin::SessionCleanup(session) => {
                if self.session.as_deref() == Some(session.as_str()) {
                    self.session = None;
                }
                if self.served.remove(&session) {
                    CheckinOutcome::CleanupSession(session)
                } else {
                    CheckinOutcome::Keep
                }
            }
            Checkin::Close => {
                self.health = Health::Stopping;
                CheckinOutcome::Remove
            }
        }
    }

    fn finish_one(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats.requests += 1;
    }

    /// A worker fault: degrade, or remove once `remove_after` are in a row.
    fn fault(&mut self) -> CheckinOutcome {
        self.consecutive_errors += 1;
        if self.consecutive_errors >= self.remove_after {
            self.health = Health::Unhealthy;
            CheckinOutcome::Remove
        } else {
            if self.consecutive_errors >= self.degrade_after && self.health == Health::Ready {
                self.health = Health::Degraded;
            }
            CheckinOutcome::Keep
        }
    }

    /// A request ran past its timeout: its caller is answered, its slot stays taken until
    /// the process answers it. Counts as a failed request. Returns whether the worker
    /// should be drained: once stuck requests fill half of its slots, it is no longer
    /// worth sending work to.
    pub fn time_out(&mut self) -> bool {
        self.stuck += 1;
        self.stats.requests += 1;
        self.stats.errors += 1;
        self.fault();
        self.stuck * 2 >= self.capacity
    }

    /// The process finally answered a request that had timed out: the slot is free.
    pub fn late_answer(&mut self) {
        self.stuck = self.stuck.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A health ping failed.
    pub fn mark_unhealthy(&mut self) {
        self.health = Health::Unhealthy;
    }

    /// Why the worker should be replaced now, if it should: unhealthy, or past `rule`'s
    /// limits at `age`.
    pub fn retire_reason(&self, rule: RetireRule, age: Duration) -> Option<String> {
        if self.health == Health::Unhealthy {
            return Some(format!(
                "{} consecutive errors (pool.remove_after)",
                self.consecutive_errors
            ));
        }
        if rule.max_requests > 0 && self.stats.requests >= rule.max_requests {
            return Some(format!(
                "served {} requests (pool.max_requests)",
                self.stats.requests
            ));
        }
        if !rule.max_lifetime.is_zero() && age >= rule.max_lifetime {
            return Some(format!(
                "alive for {:?} (pool.max_lifetime)",
                rule.max_lifetime
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> WorkerState {
        let mut w = WorkerState::new("w1", 1, 3, 5);
        w.mark_ready();
        w
    }

    #[test]
    fn pool_worker_init_worker_initializes_worker_with_correct_state_structure() {
        let w = ready();
        assert_eq!(w.id, "w1");
        assert_eq!(w.session, None);
        assert_eq!(w.health, Health::Ready);
        assert!(!w.busy());
        assert_eq!(w.stats, WorkerStats::default());
    }

    #[test]
    fn a_new_worker_is_starting_until_its_handshake() {
        let w = WorkerState::new("w1", 1, 3, 5);
        assert_eq!(w.health, Health::Starting);
        assert!(!w.health.can_serve());
    }

    #[test]
    fn pool_worker_handle_checkout_binds_worker_to_session_on_first_checkout() {
        let mut w = ready();
        w.checkout(Some("s1"));
        assert_eq!(w.session.as_deref(), Some("s1"));
        assert!(w.busy());
        assert_eq!(w.stats.checkouts, 1);
        assert_eq!(w.stats.sessions_served, 1);
    }

    #[test]
    fn pool_worker_handle_checkout_maintains_session_affinity_for_same_session() {
        let mut w = ready();
        w.checkout(Some("s1"));
        w.checkin(Checkin::Ok);
        w.checkout(Some("s1"));
        assert_eq!(w.session.as_deref(), Some("s1"));
        assert_eq!(w.stats.checkouts, 2);
        assert_eq!(
            w.stats.sessions_served, 1,
            "same session is not counted twice"
        );
    }

    #[test]
    fn pool_worker_handle_checkout_allows_anonymous_checkout() {
        let mut w = ready();
        w.checkout(None);
        assert_eq!(w.session, None);
        assert!(w.busy());
        assert_eq!(w.stats.checkouts, 1);
        assert_eq!(w.stats.sessions_served, 0);
    }

    #[test]
    fn pool_worker_handle_checkin_returns_worker_to_ready_state() {
        let mut w = ready();
        w.checkout(Some("s1"));
        assert_eq!(w.checkin(Checkin::Ok), CheckinOutcome::Keep);
        assert!(!w.busy());
        assert_eq!(w.health, Health::Ready);
        assert_eq!(
            w.session.as_deref(),
            Some("s1"),
            "binding kept for affinity"
        );
        assert_eq!(w.stats.requests, 1);
    }

    #[test]
    fn pool_worker_handle_checkin_handles_checkin_with_errors() {
        let mut w = ready();
        w.checkout(None);
        assert_eq!(w.checkin(Checkin::Error), CheckinOutcome::Keep);
        assert_eq!(w.stats.errors, 1);
        assert_eq!(
            w.health,
            Health::Ready,
            "one error stays below pool.degrade_after"
        );
    }

    #[test]
    fn slots_count_requests_in_flight_across_checkouts() {
        let mut w = WorkerState::new("w1", 4, 3, 5);
        w.mark_ready();
        for _ in 0..3 {
            w.checkout(None);
        }
        assert_eq!((w.in_flight(), w.capacity()), (3, 4));
        w.checkin(Checkin::Ok);
        w.checkin(Checkin::CallerError);
        assert_eq!(w.in_flight(), 1);
        assert_eq!((w.stats.requests, w.stats.errors), (2, 1));
    }

    #[test]
    fn consecutive_errors_degrade_then_remove_and_a_success_recovers() {
        let mut w = ready();
        for _ in 0..3 {
            w.checkout(None);
            w.checkin(Checkin::Error);
        }
        assert_eq!(w.health, Health::Degraded);
        w.checkout(None);
        w.checkin(Checkin::Ok);
        assert_eq!(w.health, Health::Ready);
        assert_eq!(w.consecutive_errors(), 0);
        let mut last = CheckinOutcome::Keep;
        for _ in 0..5 {
            w.checkout(None);
            last = w.checkin(Checkin::Error);
        }
        assert_eq!(last, CheckinOutcome::Remove);
        assert_eq!(w.health, Health::Unhealthy);
        assert_eq!(w.stats.errors, 8);
    }

    #[test]
    fn caller_errors_are_counted_but_never_degrade_or_remove_a_worker() {
        let mut w = ready();
        for _ in 0..20 {
            w.checkout(None);
            assert_eq!(w.checkin(Checkin::CallerError), CheckinOutcome::Keep);
        }
        assert_eq!(w.stats.errors, 20);
        assert_eq!(w.stats.requests, 20);
        assert_eq!(w.health, Health::Ready);
        assert_eq!(w.consecutive_errors(), 0);
    }

    #[test]
    fn session_cleanup_checkin_clears_binding_and_asks_python_to_drop_it() {
        let mut w = ready();
        w.checkout(Some("s1"));
        w.checkin(Checkin::Ok);
        assert_eq!(
            w.checkin(Checkin::SessionCleanup("s1".into())),
            CheckinOutcome::CleanupSession("s1".into())
        );
        assert_eq!(w.session, None);
        assert_eq!(
            w.checkin(Checkin::SessionCleanup("s1".into())),
            CheckinOutcome::Keep,
            "forgotten: nothing more to tell Python"
        );
    }

    #[test]
    fn session_cleanup_only_concerns_sessions_this_worker_served() {
        let mut w = ready();
        w.checkout(Some("a"));
        w.checkin(Checkin::Ok);
        w.checkout(Some("b"));
        w.checkin(Checkin::Ok);
        assert_eq!(
            w.checkin(Checkin::SessionCleanup("a".into())),
            CheckinOutcome::CleanupSession("a".into())
        );
        assert_eq!(w.session.as_deref(), Some("b"), "the binding is b's");
        assert_eq!(
            w.checkin(Checkin::SessionCleanup("zzz".into())),
            CheckinOutcome::Keep
        );
        assert_eq!(
            w.checkin(Checkin::SessionCleanup("b".into())),
            CheckinOutcome::CleanupSession("b".into())
        );
        assert_eq!(w.session, None);
    }

    #[test]
    fn close_checkin_removes_the_worker() {
        let mut w = ready();
        assert_eq!(w.checkin(Checkin::Close), CheckinOutcome::Remove);
        assert_eq!(w.health, Health::Stopping);
    }

    #[test]
    fn a_timed_out_request_keeps_its_slot_until_the_late_answer() {
        let mut w = WorkerState::new("w1", 4, 3, 5);
        w.mark_ready();
        w.checkout(None);
        w.checkout(None);
        assert!(
            !w.time_out(),
            "one stuck slot of four is no reason to drain"
        );
        assert_eq!((w.in_flight(), w.stuck()), (2, 1));
        assert_eq!((w.stats.requests, w.stats.errors), (1, 1));
        w.late_answer();
        assert_eq!((w.in_flight(), w.stuck()), (1, 0));
        assert_eq!(w.stats.requests, 1, "the late answer is not counted again");
    }

    #[test]
    fn stuck_slots_reaching_half_the_capacity_drain_the_worker() {
        let mut w = WorkerState::new("w1", 4, 10, 20);
        w.mark_ready();
        for _ in 0..4 {
            w.checkout(None);
        }
        assert!(!w.time_out());
        assert!(w.time_out(), "two of four slots stuck");
        let mut single = WorkerState::new("w2", 1, 10, 20);
        single.mark_ready();
        single.checkout(None);
        assert!(
            single.time_out(),
            "a one-slot worker drains at its first stuck request"
        );
    }

    #[test]
    fn retire_rule_names_the_limit_that_was_reached() {
        let mut w = ready();
        let rule = RetireRule {
            max_requests: 2,
            max_lifetime: Duration::from_secs(60),
        };
        assert_eq!(w.retire_reason(rule, Duration::from_secs(1)), None);
        for _ in 0..2 {
            w.checkout(None);
            w.checkin(Checkin::Ok);
        }
        let why = w.retire_reason(rule, Duration::from_secs(1)).unwrap();
        assert!(why.contains("pool.max_requests"), "{why}");
        let fresh = ready();
        let why = fresh.retire_reason(rule, Duration::from_secs(61)).unwrap();
        assert!(why.contains("pool.max_lifetime"), "{why}");
        assert_eq!(
            fresh.retire_reason(RetireRule::default(), Duration::from_secs(1 << 30)),
            None,
            "zero limits never retire"
        );
        let mut sick = ready();
        sick.mark_unhealthy();
        assert!(sick
            .retire_reason(RetireRule::default(), Duration::ZERO)
            .is_some());
    }
}
