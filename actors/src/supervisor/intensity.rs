//! OTP-style restart intensity as plain data: a supervisor may restart its children at
//! most `max_restarts` times within a sliding window of `max_window`; one more and it gives
//! up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct RestartIntensity {
    max_restarts: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    pub fn new(max_restarts: u32, window: Duration) -> Self {
        RestartIntensity {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; false once it would be more than `max_restarts` within
    /// the window.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() as u32 <= self.max_restarts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_restarts_within_the_window_and_refuses_one_more() {
        let t = Instant::now();
        let mut r = RestartIntensity::new(3, Duration::from_secs(5));
        assert!(r.allow(t));
        assert!(r.allow(t + Duration::from_secs(1)));
        assert!(r.allow(t + Duration::from_secs(2)));
        assert!(!r.allow(t + Duration::from_secs(3)));
    }

    #[test]
    fn restarts_older_than_the_window_no_longer_count() {
        let t = Instant::now();
        let mut r = RestartIntensity::new(2, Duration::from_secs(5));
        assert!(r.allow(t));
        assert!(r.allow(t + Duration::from_secs(1)));
        assert!(
            r.allow(t + Duration::from_secs(7)),
            "the first two slid out"
        );
        assert!(r.allow(t + Duration::from_secs(8)));
        assert!(!r.allow(t + Duration::from_secs(9)));
    }

    #[test]
    fn zero_restarts_means_never_restart() {
        let mut r = RestartIntensity::new(0, Duration::from_secs(5));
        assert!(!r.allow(Instant::now()));
    }
}
