//! When the pool starts workers, how it backs off from workers that cannot start, and
//! when it gives up on the callers waiting for the pool to be ready — as plain data.
//!
//! A worker that cannot start (a bad handler module, a missing package, the process limit)
//! must not make the pool spin: each failure in a row doubles the wait before the next
//! attempt, from 100 ms up to 10 s. The pool keeps serving with the workers that did start
//! and keeps trying to fill the rest. Callers waiting for the pool to be ready are only
//! failed when nothing can serve them: no worker ever became ready, none is starting, and
//! at least `pool.size` attempts in a row failed.

use std::time::Duration;

use crate::error::ActorError;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub(crate) struct Startup {
    consecutive_failures: u32,
    ever_ready: bool,
    last_error: Option<ActorError>,
}

impl Startup {
    /// A worker answered its handshake.
    pub fn ready(&mut self) {
        self.consecutive_failures = 0;
        self.ever_ready = true;
    }

    /// A worker failed to start; returns how long to wait before starting another.
    pub fn failed(&mut self, error: ActorError) -> Duration {
        self.consecutive_failures += 1;
        self.last_error = Some(error);
        let doublings = self.consecutive_failures.saturating_sub(1).min(10);
        (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
    }

    pub fn ever_ready(&self) -> bool {
        self.ever_ready
    }

    /// The most recent start failure, while failures are the latest news.
    pub fn last_error(&self) -> Option<&ActorError> {
        self.last_error
            .as_ref()
            .filter(|_| self.consecutive_failures > 0)
    }

    /// Whether callers waiting for readiness should be told it will not come, given how
    /// many workers are `ready` and `starting` in a pool of `size`.
    pub fn hopeless(&self, size: usize, ready: usize, starting: usize) -> bool {
        !self.ever_ready
            && ready == 0
            && starting == 0
            && self.consecutive_failures as usize >= size.max(1)
    }

    /// What a successor pool continues from.
    pub fn ever_ready_flag(ever_ready: bool) -> Self {
        Startup {
            ever_ready,
            ..Startup::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err() -> ActorError {
        ActorError::Spawn("no".into())
    }

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_10s() {
        let mut s = Startup::default();
        let waits: Vec<u64> = (0..9).map(|_| s.failed(err()).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        s.ready();
        assert_eq!(
            s.failed(err()),
            Duration::from_millis(100),
            "a success resets it"
        );
    }

    #[test]
    fn waiting_is_hopeless_only_when_nothing_started_nothing_is_starting_and_size_attempts_failed()
    {
        let mut s = Startup::default();
        for _ in 0..3 {
            s.failed(err());
        }
        assert!(!s.hopeless(4, 0, 0), "fewer failures than the pool size");
        s.failed(err());
        assert!(s.hopeless(4, 0, 0));
        assert!(!s.hopeless(4, 0, 1), "one is still starting");
        assert!(!s.hopeless(4, 1, 0), "one is up");
        s.ready();
        for _ in 0..10 {
            s.failed(err());
        }
        assert!(
            !s.hopeless(4, 0, 0),
            "the pool served before: keep waiting for it"
        );
    }

    #[test]
    fn partial_start_keeps_serving_and_reports_the_failure() {
        let mut s = Startup::default();
        s.failed(err());
        s.ready();
        assert!(s.last_error().is_none());
        s.failed(ActorError::Spawn("process limit".into()));
        assert!(matches!(s.last_error(), Some(ActorError::Spawn(m)) if m == "process limit"));
        assert!(!s.hopeless(100, 25, 0));
    }
}
