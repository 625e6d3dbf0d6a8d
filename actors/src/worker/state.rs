//! The Worker's bookkeeping as plain data: health, stats and session binding, and what a
//! checkout or checkin does to them. The actor in `worker.rs` only wires these transitions to
//! messages, so the seed's PoolWorker scenarios are tested here without any process.

use std::collections::HashSet;

use serde::Serialize;

/// Worker health: one vocabulary for code, status output, logs and tests (DESIGN.md).
/// Whether the worker is busy is a separate flag, never a health value.
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
    /// Requests answered (successfully or not).
    pub requests: u64,
    /// Requests that ended in an error.
    pub errors: u64,
    /// Distinct sessions this worker has served.
    pub sessions_served: u64,
}

/// How a checkout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkin {
    /// The request succeeded.
    Ok,
    /// The request failed; counts toward degradation.
    Error,
    /// The request failed for a reason outside the worker (the LM provider is down, the
    /// caller named an unknown program or command): counted as an error, but the worker
    /// itself answered correctly, so its health is untouched.
    CallerError,
    /// The session ended: drop the binding and tell Python to forget the session.
    SessionCleanup,
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

/// A worker's state, independent of its process.
#[derive(Debug, Clone)]
pub struct WorkerState {
    pub id: String,
    /// The session this worker is bound to (served last), if any.
    pub session: Option<String>,
    pub health: Health,
    pub busy: bool,
    pub stats: WorkerStats,
    consecutive_errors: u32,
    served: HashSet<String>,
    degrade_after: u32,
    remove_after: u32,
}

impl WorkerState {
    /// A worker that has been spawned but not yet answered its handshake.
    pub fn new(id: impl Into<String>, degrade_after: u32, remove_after: u32) -> Self {
        WorkerState {
            id: id.into(),
            session: None,
            health: Health::Starting,
            busy: false,
            stats: WorkerStats::default(),
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

    /// Hand the worker to a request, binding it to `session` if one is given.
    /// An anonymous checkout leaves any existing binding alone.
    pub fn checkout(&mut self, session: Option<&str>) {
        self.busy = true;
        self.stats.checkouts += 1;
        if let Some(session) = session {
            if self.served.insert(session.to_owned()) {
                self.stats.sessions_served += 1;
            }
            self.session = Some(session.to_owned());
        }
    }

    /// Whether this worker has served `session` (and so may cache its programs).
    pub fn has_served(&self, session: &str) -> bool {
        self.served.contains(session)
    }

    /// Consecutive failed requests since the last success.
    pub fn consecutive_errors(&self) -> u32 {
        self.consecutive_errors
    }

    /// Return the worker from a checkout (or apply a session/close event).
    pub fn checkin(&mut self, how: Checkin) -> CheckinOutcome {
        match how {
            Checkin::Ok => {
                self.busy = false;
                self.stats.requests += 1;
                self.consecutive_errors = 0;
                if self.health == Health::Degraded {
                    self.health = Health::Ready;
                }
                CheckinOutcome::Keep
            }
            Checkin::Error => {
                self.busy = false;
                self.stats.requests += 1;
                self.stats.errors += 1;
                self.consecutive_errors += 1;
                if self.consecutive_errors >= self.remove_after {
                    self.health = Health::Unhealthy;
                    CheckinOutcome::Remove
                } else {
                    if self.consecutive_errors >= self.degrade_after && self.health == Health::Ready
                    {
                        self.health = Health::Degraded;
                    }
                    CheckinOutcome::Keep
                }
            }
            Checkin::CallerError => {
                self.busy = false;
                self.stats.requests += 1;
                self.stats.errors += 1;
                CheckinOutcome::Keep
            }
            Checkin::SessionCleanup => match self.session.take() {
                Some(session) => {
                    self.served.remove(&session);
                    CheckinOutcome::CleanupSession(session)
                }
                None => CheckinOutcome::Keep,
            },
            Checkin::Close => {
                self.busy = false;
                self.health = Health::Stopping;
                CheckinOutcome::Remove
            }
        }
    }

    /// Forget `session` if this worker served it; returns whether Python must be told.
    pub fn forget_session(&mut self, session: &str) -> bool {
        if self.session.as_deref() == Some(session) {
            self.session = None;
        }
        self.served.remove(session)
    }

    /// A health ping failed.
    pub fn mark_unhealthy(&mut self) {
        self.health = Health::Unhealthy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> WorkerState {
        let mut w = WorkerState::new("w1", 3, 5);
        w.mark_ready();
        w
    }

    #[test]
    fn pool_worker_init_worker_initializes_worker_with_correct_state_structure() {
        let w = ready();
        assert_eq!(w.id, "w1");
        assert_eq!(w.session, None);
        assert_eq!(w.health, Health::Ready);
        assert!(!w.busy);
        assert_eq!(w.stats, WorkerStats::default());
    }

    #[test]
    fn a_new_worker_is_starting_until_its_handshake() {
        let w = WorkerState::new("w1", 3, 5);
        assert_eq!(w.health, Health::Starting);
        assert!(!w.health.can_serve());
    }

    #[test]
    fn pool_worker_handle_checkout_binds_worker_to_session_on_first_checkout() {
        let mut w = ready();
        w.checkout(Some("s1"));
        assert_eq!(w.session.as_deref(), Some("s1"));
        assert!(w.busy);
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
        assert!(w.busy);
        assert_eq!(w.stats.checkouts, 1);
        assert_eq!(w.stats.sessions_served, 0);
    }

    #[test]
    fn pool_worker_handle_checkin_returns_worker_to_ready_state() {
        let mut w = ready();
        w.checkout(Some("s1"));
        assert_eq!(w.checkin(Checkin::Ok), CheckinOutcome::Keep);
        assert!(!w.busy);
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
            w.checkin(Checkin::SessionCleanup),
            CheckinOutcome::CleanupSession("s1".into())
        );
        assert_eq!(w.session, None);
        assert!(!w.has_served("s1"));
    }

    #[test]
    fn close_checkin_removes_the_worker() {
        let mut w = ready();
        assert_eq!(w.checkin(Checkin::Close), CheckinOutcome::Remove);
        assert_eq!(w.health, Health::Stopping);
    }

    #[test]
    fn forget_session_only_reports_sessions_this_worker_served() {
        let mut w = ready();
        w.checkout(Some("a"));
        w.checkin(Checkin::Ok);
        w.checkout(Some("b"));
        w.checkin(Checkin::Ok);
        assert!(w.forget_session("a"));
        assert_eq!(w.session.as_deref(), Some("b"));
        assert!(!w.forget_session("zzz"));
        assert!(w.forget_session("b"));
        assert_eq!(w.session, None);
    }
}
