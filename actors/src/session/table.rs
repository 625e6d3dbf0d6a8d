//! The SessionRegistry's state as plain data, apart from the actor.
//!
//! Everything a session registry decides (whether a session may be created, what a sweep
//! removes, what the metrics say) happens here, in methods that take the current time as an
//! argument. That keeps the rules testable without an actix system or real clocks, and it
//! lets the table be moved out of a stopped registry and into its successor whole.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::error::ActorError;

/// One tracked session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// The caller's session id.
    pub id: String,
    /// Wall-clock creation time, for reporting only.
    pub created_at: SystemTime,
    /// Monotonic creation time; ages and durations are measured from it.
    pub created: Instant,
    /// When the session was last tracked or touched; the sweep compares it with the TTL.
    pub last_active: Instant,
    /// How many times the session was touched.
    pub requests: u64,
    /// Opaque state owned by the layer above (e.g. program definitions); starts as `{}`.
    pub state: Value,
}

impl SessionRecord {
    fn new(id: String, now: Instant) -> Self {
        SessionRecord {
            id,
            created_at: SystemTime::now(),
            created: now,
            last_active: now,
            requests: 0,
            state: Value::Object(serde_json::Map::new()),
        }
    }

    fn info(&self, now: Instant) -> SessionInfo {
        SessionInfo {
            id: self.id.clone(),
            created_at_unix: self
                .created_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                // A clock set before 1970 is not worth failing a request over.
                .unwrap_or(0.0),
            age_ms: millis(now.saturating_duration_since(self.created)),
            idle_ms: millis(now.saturating_duration_since(self.last_active)),
            requests: self.requests,
        }
    }
}

/// A snapshot of one session, as reported to callers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionInfo {
    pub id: String,
    /// Creation time in seconds since the Unix epoch.
    pub created_at_unix: f64,
    /// Time since creation.
    pub age_ms: u64,
    /// Time since the session was last tracked or touched.
    pub idle_ms: u64,
    /// How many times the session was touched.
    pub requests: u64,
}

/// Counters over the registry's lifetime (they survive a registry restart with the table).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SessionMetrics {
    /// Sessions tracked right now.
    pub active: usize,
    /// Sessions ever created.
    pub total_created: u64,
    /// Sessions ever ended, by `end` or by the sweep.
    pub total_ended: u64,
    /// Sessions the sweep removed for being idle past the TTL.
    pub stale_cleaned: u64,
    /// Mean lifetime (creation to end) of the ended sessions; 0 when none has ended.
    pub average_duration_ms: u64,
}

/// All sessions plus lifetime counters.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use dspex_actors::session::SessionTable;
///
/// let mut table = SessionTable::default();
/// let t0 = Instant::now();
/// let (info, created) = table.track("s1", t0, 100).unwrap();
/// assert!(created);
/// assert_eq!(info.id, "s1");
///
/// // Idle for two seconds with a one-second TTL: the sweep removes it.
/// let removed = table.sweep(t0 + Duration::from_secs(2), Duration::from_secs(1));
/// assert_eq!(removed, vec!["s1".to_string()]);
/// assert_eq!(table.metrics(t0).stale_cleaned, 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct SessionTable {
    sessions: HashMap<String, SessionRecord>,
    total_created: u64,
    total_ended: u64,
    stale_cleaned: u64,
    /// Sum of the lifetimes of ended sessions, for the average in the metrics.
    ended_duration: Duration,
}

impl SessionTable {
    /// Number of sessions tracked right now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether `id` is tracked.
    pub fn contains(&self, id: &str) -> bool {
        self.sessions.contains_key(id)
    }

    /// The full record of a session, if tracked.
    pub fn session(&self, id: &str) -> Option<&SessionRecord> {
        self.sessions.get(id)
    }

    /// Starts tracking `id`, or returns the existing session unchanged.
    ///
    /// Returns the session's info and whether it was created by this call. Tracking an
    /// existing id is idempotent: it counts nothing and does not refresh `last_active`
    /// (use [`touch`](Self::touch) for that). `max_sessions` of 0 means no limit.
    ///
    /// # Errors
    ///
    /// [`ActorError::TooManySessions`] when `id` is new and `max_sessions` are already
    /// tracked.
    pub fn track(
        &mut self,
        id: &str,
        now: Instant,
        max_sessions: usize,
    ) -> Result<(SessionInfo, bool), ActorError> {
        if let Some(session) = self.sessions.get(id) {
            return Ok((session.info(now), false));
        }
        self.insert_new(id, now, max_sessions)
            .map(|session| (session.info(now), true))
    }

    fn insert_new(
        &mut self,
        id: &str,
        now: Instant,
        max_sessions: usize,
    ) -> Result<&mut SessionRecord, ActorError> {
        if max_sessions != 0 && self.sessions.len() >= max_sessions {
            return Err(ActorError::TooManySessions { max: max_sessions });
        }
        self.total_created += 1;
        Ok(self
            .sessions
            .entry(id.to_owned())
            .or_insert_with(|| SessionRecord::new(id.to_owned(), now)))
    }

    /// Records activity on `id`: refreshes `last_active` and counts a request.
    ///
    /// An unknown id is tracked first when `create` is true (subject to `max_sessions`, 0
    /// meaning no limit), so its first touch leaves it with one request.
    ///
    /// # Errors
    ///
    /// [`ActorError::SessionNotFound`] for an unknown id with `create` false;
    /// [`ActorError::TooManySessions`] when creating it would exceed the limit.
    pub fn touch(
        &mut self,
        id: &str,
        now: Instant,
        create: bool,
        max_sessions: usize,
    ) -> Result<(), ActorError> {
        let session = match self.sessions.get_mut(id) {
            Some(session) => session,
            None if create => self.insert_new(id, now, max_sessions)?,
            None => return Err(ActorError::SessionNotFound(id.to_owned())),
        };
        session.last_active = now;
        session.requests += 1;
        Ok(())
    }

    /// Stops tracking `id` and returns its final info.
    ///
    /// # Errors
    ///
    /// [`ActorError::SessionNotFound`] when `id` is not tracked.
    pub fn end(&mut self, id: &str, now: Instant) -> Result<SessionInfo, ActorError> {
        let session = self
            .sessions
            .remove(id)
            .ok_or_else(|| ActorError::SessionNotFound(id.to_owned()))?;
        self.count_ended(&session, now);
        Ok(session.info(now))
    }

    fn count_ended(&mut self, session: &SessionRecord, now: Instant) {
        self.total_ended += 1;
        self.ended_duration += now.saturating_duration_since(session.created);
    }

    /// The info of a tracked session.
    ///
    /// # Errors
    ///
    /// [`ActorError::SessionNotFound`] when `id` is not tracked.
    pub fn get(&self, id: &str, now: Instant) -> Result<SessionInfo, ActorError> {
        self.sessions
            .get(id)
            .map(|session| session.info(now))
            .ok_or_else(|| ActorError::SessionNotFound(id.to_owned()))
    }

    /// Every tracked session, sorted by id so the output is stable.
    pub fn list(&self, now: Instant) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self.sessions.values().map(|s| s.info(now)).collect();
        all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Removes every session idle for longer than `ttl` and returns their ids (unordered).
    ///
    /// One pass over the table with no per-session allocation: the removed session's own
    /// id string is moved into the result. That keeps a sweep of 100 000 sessions far
    /// inside the 50 ms budget (`cargo run --release -p dspex-actors --example bench_sweep`),
    /// so the registry stays responsive while it runs.
    pub fn sweep(&mut self, now: Instant, ttl: Duration) -> Vec<String> {
        let mut removed = Vec::new();
        let mut ended_duration = Duration::ZERO;
        self.sessions.retain(|_, session| {
            let stale = now.saturating_duration_since(session.last_active) > ttl;
            if stale {
                ended_duration += now.saturating_duration_since(session.created);
                removed.push(std::mem::take(&mut session.id));
            }
            !stale
        });
        let count = removed.len() as u64;
        self.total_ended += count;
        self.stale_cleaned += count;
        self.ended_duration += ended_duration;
        removed
    }

    /// Current counters. `now` is unused today but keeps the signature uniform with the
    /// other read methods, so time-derived metrics can be added without breaking callers.
    pub fn metrics(&self, _now: Instant) -> SessionMetrics {
        let average_duration_ms = if self.total_ended == 0 {
            0
        } else {
            // u128 division: a sum of many long sessions can exceed u64 milliseconds only
            // in theory, but the cast below then saturates instead of wrapping.
            let avg = self.ended_duration.as_millis() / u128::from(self.total_ended);
            u64::try_from(avg).unwrap_or(u64::MAX)
        };
        SessionMetrics {
            active: self.sessions.len(),
            total_created: self.total_created,
            total_ended: self.total_ended,
            stale_cleaned: self.stale_cleaned,
            average_duration_ms,
        }
    }

    /// Applies `update` to the session's state and returns what it returned.
    ///
    /// The update runs on a copy that replaces the state only when it succeeds, so an
    /// update that fails (or panics) leaves the state exactly as it was.
    ///
    /// # Errors
    ///
    /// [`ActorError::SessionNotFound`] when `id` is not tracked; otherwise whatever error
    /// `update` returns.
    pub fn update_state<F>(&mut self, id: &str, update: F) -> Result<Value, ActorError>
    where
        F: FnOnce(&mut Value) -> Result<Value, ActorError>,
    {
        let session = self
            .sessions
            .get_mut(id)
            .ok_or_else(|| ActorError::SessionNotFound(id.to_owned()))?;
        let mut draft = session.state.clone();
        let result = update(&mut draft)?;
        session.state = draft;
        Ok(result)
    }

    /// The session's state.
    ///
    /// # Errors
    ///
    /// [`ActorError::SessionNotFound`] when `id` is not tracked.
    pub fn state(&self, id: &str) -> Result<&Value, ActorError> {
        self.sessions
            .get(id)
            .map(|session| &session.state)
            .ok_or_else(|| ActorError::SessionNotFound(id.to_owned()))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NO_LIMIT: usize = 0;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn not_found(id: &str) -> ActorError {
        ActorError::SessionNotFound(id.to_owned())
    }

    #[test]
    fn track_creates_a_fresh_session_with_empty_state() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        let (info, created) = table.track("a", t0, NO_LIMIT).unwrap();
        assert!(created);
        assert_eq!(info.id, "a");
        assert_eq!((info.age_ms, info.idle_ms, info.requests), (0, 0, 0));
        assert!(info.created_at_unix > 1_600_000_000.0);
        assert_eq!(table.state("a").unwrap(), &json!({}));
        assert_eq!(table.metrics(t0).total_created, 1);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn track_existing_id_returns_it_unchanged_and_counts_nothing() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, NO_LIMIT).unwrap();
        let (info, created) = table.track("a", t0 + secs(3), NO_LIMIT).unwrap();
        assert!(!created);
        assert_eq!(info.age_ms, 3000);
        // Not refreshed: tracking is not activity.
        assert_eq!(info.idle_ms, 3000);
        assert_eq!(table.metrics(t0).total_created, 1);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn track_refuses_new_sessions_at_the_limit_but_returns_existing_ones() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, 2).unwrap();
        table.track("b", t0, 2).unwrap();
        assert_eq!(
            table.track("c", t0, 2),
            Err(ActorError::TooManySessions { max: 2 })
        );
        assert!(!table.contains("c"));
        assert_eq!(table.metrics(t0).total_created, 2);
        assert!(table.track("a", t0, 2).is_ok());
        table.end("a", t0).unwrap();
        assert!(table.track("c", t0, 2).unwrap().1);
    }

    #[test]
    fn track_with_zero_limit_is_unlimited() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        for i in 0..50 {
            table.track(&format!("s{i}"), t0, 0).unwrap();
        }
        assert_eq!(table.len(), 50);
    }

    #[test]
    fn touch_refreshes_last_active_and_counts_requests() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, NO_LIMIT).unwrap();
        table.touch("a", t0 + secs(5), false, NO_LIMIT).unwrap();
        table.touch("a", t0 + secs(7), false, NO_LIMIT).unwrap();
        let info = table.get("a", t0 + secs(8)).unwrap();
        assert_eq!(info.requests, 2);
        assert_eq!(info.idle_ms, 1000);
        assert_eq!(info.age_ms, 8000);
    }

    #[test]
    fn touch_unknown_without_create_is_not_found() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        assert_eq!(table.touch("x", t0, false, NO_LIMIT), Err(not_found("x")));
        assert!(table.is_empty());
        assert_eq!(table.metrics(t0).total_created, 0);
    }

    #[test]
    fn touch_unknown_with_create_tracks_it_with_one_request() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.touch("x", t0, true, NO_LIMIT).unwrap();
        assert_eq!(table.get("x", t0).unwrap().requests, 1);
        assert_eq!(table.metrics(t0).total_created, 1);
    }

    #[test]
    fn touch_with_create_respects_the_limit() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, 1).unwrap();
        assert_eq!(
            table.touch("b", t0, true, 1),
            Err(ActorError::TooManySessions { max: 1 })
        );
        // An existing session is touched even at the limit.
        table.touch("a", t0, true, 1).unwrap();
        assert_eq!(table.get("a", t0).unwrap().requests, 1);
    }

    #[test]
    fn end_removes_the_session_and_reports_its_final_info() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, NO_LIMIT).unwrap();
        table.touch("a", t0 + secs(1), false, NO_LIMIT).unwrap();
        let info = table.end("a", t0 + secs(4)).unwrap();
        assert_eq!(
            (info.id.as_str(), info.age_ms, info.requests),
            ("a", 4000, 1)
        );
        assert!(!table.contains("a"));
        assert_eq!(table.get("a", t0), Err(not_found("a")));
        let m = table.metrics(t0);
        assert_eq!((m.active, m.total_ended, m.stale_cleaned), (0, 1, 0));
    }

    #[test]
    fn end_unknown_is_not_found_and_counts_nothing() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        assert_eq!(table.end("ghost", t0), Err(not_found("ghost")));
        assert_eq!(table.metrics(t0), SessionMetrics::default());
    }

    #[test]
    fn get_unknown_is_not_found() {
        let table = SessionTable::default();
        assert_eq!(table.get("nope", Instant::now()), Err(not_found("nope")));
    }

    #[test]
    fn list_is_sorted_by_id() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        for id in ["c", "a", "b"] {
            table.track(id, t0, NO_LIMIT).unwrap();
        }
        let ids: Vec<String> = table.list(t0).into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(SessionTable::default().list(t0).is_empty());
    }

    #[test]
    fn sweep_removes_only_sessions_idle_longer_than_ttl() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("old", t0, NO_LIMIT).unwrap();
        table.track("edge", t0 + secs(5), NO_LIMIT).unwrap();
        table.track("touched", t0, NO_LIMIT).unwrap();
        table
            .touch("touched", t0 + secs(8), false, NO_LIMIT)
            .unwrap();

        // At t0+10 with ttl 5: old idled 10 s (removed), edge exactly 5 s (kept, the
        // limit is "longer than"), touched 2 s (kept).
        let removed = table.sweep(t0 + secs(10), secs(5));
        assert_eq!(removed, ["old"]);
        assert!(table.contains("edge") && table.contains("touched"));
        let m = table.metrics(t0);
        assert_eq!((m.active, m.total_ended, m.stale_cleaned), (2, 1, 1));
    }

    #[test]
    fn sweep_of_nothing_stale_returns_empty_and_counts_nothing() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, NO_LIMIT).unwrap();
        assert!(table.sweep(t0 + secs(1), secs(60)).is_empty());
        assert_eq!(table.metrics(t0).stale_cleaned, 0);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn metrics_average_covers_ended_and_swept_sessions() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        assert_eq!(table.metrics(t0).average_duration_ms, 0);
        table.track("a", t0, NO_LIMIT).unwrap();
        table.track("b", t0, NO_LIMIT).unwrap();
        table.track("c", t0, NO_LIMIT).unwrap();
        table.touch("c", t0 + secs(9), false, NO_LIMIT).unwrap();
        table.end("a", t0 + secs(2)).unwrap(); // lived 2 s
        table.sweep(t0 + secs(6), secs(3)); // b lived 6 s; c is kept
        let m = table.metrics(t0);
        assert_eq!(
            m,
            SessionMetrics {
                active: 1,
                total_created: 3,
                total_ended: 2,
                stale_cleaned: 1,
                average_duration_ms: 4000,
            }
        );
    }

    #[test]
    fn update_state_applies_the_change_and_returns_its_result() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, NO_LIMIT).unwrap();
        let out = table
            .update_state("a", |state| {
                state["programs"] = json!({"p1": {"signature": "q -> a"}});
                Ok(json!("stored"))
            })
            .unwrap();
        assert_eq!(out, json!("stored"));
        assert_eq!(
            table.state("a").unwrap(),
            &json!({"programs": {"p1": {"signature": "q -> a"}}})
        );
    }

    #[test]
    fn update_state_that_fails_leaves_the_state_untouched() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, NO_LIMIT).unwrap();
        let err = table
            .update_state("a", |state| {
                state["half"] = json!("written");
                Err(ActorError::Protocol("rejected".into()))
            })
            .unwrap_err();
        assert_eq!(err, ActorError::Protocol("rejected".into()));
        assert_eq!(table.state("a").unwrap(), &json!({}));
    }

    #[test]
    fn update_state_and_state_of_unknown_session_are_not_found() {
        let mut table = SessionTable::default();
        let ran = std::cell::Cell::new(false);
        let result = table.update_state("x", |_| {
            ran.set(true);
            Ok(Value::Null)
        });
        assert_eq!(result, Err(not_found("x")));
        assert!(!ran.get(), "the update must not run for an unknown session");
        assert_eq!(table.state("x"), Err(not_found("x")));
    }

    #[test]
    fn clone_carries_sessions_state_and_counters() {
        let mut table = SessionTable::default();
        let t0 = Instant::now();
        table.track("a", t0, NO_LIMIT).unwrap();
        table.track("b", t0, NO_LIMIT).unwrap();
        table.end("b", t0 + secs(1)).unwrap();
        table
            .update_state("a", |s| {
                s["k"] = json!(1);
                Ok(Value::Null)
            })
            .unwrap();
        let copy = table.clone();
        assert_eq!(copy.state("a").unwrap(), &json!({"k": 1}));
        assert_eq!(copy.metrics(t0), table.metrics(t0));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Track(u8),
            Touch(u8, bool),
            End(u8),
            Sweep(u8),
            Wait(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..8).prop_map(Op::Track),
                (0u8..8, any::<bool>()).prop_map(|(i, c)| Op::Touch(i, c)),
                (0u8..8).prop_map(Op::End),
                (0u8..5).prop_map(Op::Sweep),
                (0u8..5).prop_map(Op::Wait),
            ]
        }

        proptest! {
            /// Whatever happens, every created session is either active or ended, and the
            /// limit is never exceeded.
            #[test]
            fn counters_always_balance(ops in proptest::collection::vec(op(), 0..60)) {
                let mut table = SessionTable::default();
                let mut now = Instant::now();
                let max = 5;
                for op in ops {
                    match op {
                        Op::Track(i) => { let _ = table.track(&i.to_string(), now, max); }
                        Op::Touch(i, c) => { let _ = table.touch(&i.to_string(), now, c, max); }
                        Op::End(i) => { let _ = table.end(&i.to_string(), now); }
                        Op::Sweep(ttl) => { table.sweep(now, secs(u64::from(ttl))); }
                        Op::Wait(s) => now += secs(u64::from(s)),
                    }
                    let m = table.metrics(now);
                    prop_assert!(m.active <= max);
                    prop_assert_eq!(m.active, table.len());
                    prop_assert_eq!(m.total_created, m.active as u64 + m.total_ended);
                    prop_assert!(m.stale_cleaned <= m.total_ended);
                }
            }
        }
    }
}
