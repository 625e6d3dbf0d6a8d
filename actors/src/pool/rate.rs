//! Pool-wide rate control of limited requests (in dspex: the ones that call a language
//! model), as plain data with injected time.
//!
//! A remote service that allows N calls at once and answers "429" above that is best used
//! at N. The pool does not know N, so it probes for it: the limit on limited requests in
//! flight grows by about one per round of successes (additive increase, `+1/limit` per
//! success), and a refusal brings it down to what the far end was still serving when it
//! refused (the pool's requests still in flight), and by at least a tenth, so that
//! refusals unrelated to the pool's own concurrency (a provider under load) still make it
//! back off (multiplicative decrease). A burst sent above the limit thus lands at the limit
//! once its refusals are in, and in steady state the pool serves at N, probing N + 1 once
//! per round. A refusal that names a `Retry-After` also pauses every limited dispatch until
//! then. On top, an optional token bucket caps the rate at which limited requests start.

use std::time::{Duration, Instant};

use serde::Serialize;

/// What the limiter recorded about one dispatch of a limited request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// Whether the limit was already at its floor when the request was sent: a refusal
    /// then is the far end's verdict on the request, not on the pool's probing.
    pub at_floor: bool,
}

/// The least a refusal takes off the limit, as a factor.
const BACKOFF: f64 = 0.9;

/// The rate limiter's state, for status output.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RateStatus {
    /// Limited requests allowed in flight right now (the AIMD limit, rounded down).
    pub limit: usize,
    /// The ceiling: `lm.max_in_flight`, or the pool's capacity.
    pub max: usize,
    /// Limited requests in flight.
    pub in_flight: usize,
    /// Refusals ("429") seen so far.
    pub throttled: u64,
    /// Milliseconds until limited dispatch resumes after a `Retry-After` (0: not paused).
    pub paused_ms: u64,
    /// The token bucket's rate, if one is set (`lm.requests_per_minute`).
    pub requests_per_minute: Option<u32>,
}

/// Refills continuously at `per_minute`, holding at most ten seconds' worth (at least one).
#[derive(Debug, Clone)]
struct TokenBucket {
    per_minute: u32,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(per_minute: u32, now: Instant) -> Self {
        let capacity = (f64::from(per_minute) / 6.0).max(1.0);
        TokenBucket {
            per_minute,
            capacity,
            tokens: capacity,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * f64::from(self.per_minute) / 60.0).min(self.capacity);
        self.refilled = now;
    }

    /// When the next whole token is there (now if one is).
    fn ready_at(&self, now: Instant) -> Instant {
        if self.tokens >= 1.0 {
            return now;
        }
        let missing = 1.0 - self.tokens;
        now + Duration::from_secs_f64(missing * 60.0 / f64::from(self.per_minute))
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    max: f64,
    limit: f64,
    in_flight: usize,
    paused_until: Option<Instant>,
    bucket: Option<TokenBucket>,
    throttled: u64,
}

impl RateLimiter {
    /// A limiter allowing at most `max` limited requests in flight (at least 1), starting
    /// there, and `per_minute` starts per minute (0: no rate limit).
    pub fn new(max: usize, per_minute: u32, now: Instant) -> Self {
        let max = max.max(1) as f64;
        RateLimiter {
            max,
            limit: max,
            in_flight: 0,
            paused_until: None,
            bucket: (per_minute > 0).then(|| TokenBucket::new(per_minute, now)),
            throttled: 0,
        }
    }

    /// The limit as a count of requests.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Whether a limited request may start now.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now < until) {
            return false;
        }
        if self.in_flight >= self.limit() {
            return false;
        }
        match &mut self.bucket {
            Some(bucket) => {
                bucket.refill(now);
                bucket.tokens >= 1.0
            }
            None => true,
        }
    }

    /// A limited request starts (after [`admit`](Self::admit) said yes).
    pub fn take(&mut self, now: Instant) -> Ticket {
        self.in_flight += 1;
        if let Some(bucket) = &mut self.bucket {
            bucket.refill(now);
            bucket.tokens -= 1.0;
        }
        Ticket {
            at_floor: self.limit < 2.0,
        }
    }

    /// A limited request succeeded: the limit grows by about one per round.
    pub fn succeeded(&mut self) {
        self.release(1);
        self.limit = (self.limit + 1.0 / self.limit).min(self.max);
    }

    /// A limited request ended without telling anything about the far end's capacity
    /// (an error, a timeout's late answer, a crash): only its slot is returned.
    pub fn release(&mut self, n: usize) {
        self.in_flight = self.in_flight.saturating_sub(n);
    }

    /// A limited request was refused for rate: the limit falls to the requests still in
    /// flight (what the far end was serving) and by at least a tenth, never below one;
    /// limited dispatch pauses for `retry_after`.
    pub fn throttled(&mut self, retry_after: Option<Duration>, now: Instant) {
        self.release(1);
        self.throttled += 1;
        self.limit = (self.in_flight as f64).min(self.limit * BACKOFF).max(1.0);
        if let Some(wait) = retry_after {
            let until = now + wait;
            if self.paused_until.map_or(true, |p| p < until) {
                self.paused_until = Some(until);
            }
        }
    }

    /// When limited dispatch may resume if it is blocked by a pause or an empty bucket
    /// (not by the limit: a finished request wakes the pool then).
    pub fn reopens_at(&self, now: Instant) -> Option<Instant> {
        let paused = self.paused_until.filter(|until| *until > now);
        let bucket = self
            .bucket
            .as_ref()
            .map(|b| {
                let mut b = b.clone();
                b.refill(now);
                b.ready_at(now)
            })
            .filter(|at| *at > now);
        match (paused, bucket) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn status(&self, now: Instant) -> RateStatus {
        RateStatus {
            limit: self.limit(),
            max: self.max as usize,
            in_flight: self.in_flight,
            throttled: self.throttled,
            paused_ms: self
                .paused_until
                .map(|until| until.saturating_duration_since(now).as_millis() as u64)
                .unwrap_or(0),
            requests_per_minute: self.bucket.as_ref().map(|b| b.per_minute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(r: &mut RateLimiter, now: Instant) -> Vec<Ticket> {
        let mut tickets = Vec::new();
        while r.admit(now) {
            tickets.push(r.take(now));
        }
        tickets
    }

    #[test]
    fn starts_at_the_ceiling_and_admits_up_to_the_limit() {
        let now = Instant::now();
        let mut r = RateLimiter::new(8, 0, now);
        assert_eq!(fill(&mut r, now).len(), 8);
        assert!(!r.admit(now));
        r.release(1);
        assert!(r.admit(now));
    }

    #[test]
    fn a_burst_above_the_far_ends_limit_lands_at_that_limit() {
        let now = Instant::now();
        let mut r = RateLimiter::new(16, 0, now);
        assert_eq!(fill(&mut r, now).len(), 16);
        // The far end serves 4 and refuses 12: each refusal leaves fewer in flight.
        for _ in 0..12 {
            r.throttled(None, now);
        }
        assert_eq!((r.limit(), r.status(now).in_flight), (4, 4));
    }

    #[test]
    fn in_steady_state_a_probe_above_the_limit_costs_one_refusal_and_no_capacity() {
        let now = Instant::now();
        let mut r = RateLimiter::new(16, 0, now);
        fill(&mut r, now);
        for _ in 0..12 {
            r.throttled(None, now);
        }
        // Successes (each replaced by a new request) raise the limit to 5...
        while r.limit() < 5 {
            r.succeeded();
            r.take(now);
        }
        r.take(now);
        assert_eq!(r.status(now).in_flight, 5);
        // ...the fifth in flight is refused, and the limit goes back to the 4 served.
        r.throttled(None, now);
        assert_eq!(r.limit(), 4);
    }

    #[test]
    fn refusals_unrelated_to_the_pools_concurrency_still_lower_the_limit() {
        let now = Instant::now();
        let mut r = RateLimiter::new(10, 0, now);
        fill(&mut r, now);
        // A provider under load refuses while the pool is full: a tenth off each time.
        r.throttled(None, now);
        r.take(now);
        assert_eq!(r.limit(), 9);
        r.throttled(None, now);
        r.take(now);
        assert_eq!(r.limit(), 8, "9 x 0.9 = 8.1");
    }

    #[test]
    fn successes_raise_the_limit_by_about_one_per_round_up_to_the_ceiling() {
        let now = Instant::now();
        let mut r = RateLimiter::new(10, 0, now);
        r.take(now);
        r.throttled(None, now);
        assert_eq!(r.limit(), 1, "nothing else was in flight");
        // A round at limit 1 is one success, at limit 2 two.
        r.take(now);
        r.succeeded();
        assert_eq!(r.limit(), 2);
        r.take(now);
        r.succeeded();
        assert_eq!(r.limit(), 2, "2 + 1/2");
        r.take(now);
        r.succeeded();
        assert_eq!(r.limit(), 2, "2.5 + 1/2.5 = 2.9");
        r.take(now);
        r.succeeded();
        assert_eq!(r.limit(), 3, "2.9 + 1/2.9 > 3");
        for _ in 0..200 {
            r.take(now);
            r.succeeded();
        }
        assert_eq!(r.limit(), 10, "never above the ceiling");
    }

    #[test]
    fn the_limit_never_drops_below_one_and_refusals_there_are_at_the_floor() {
        let now = Instant::now();
        let mut r = RateLimiter::new(4, 0, now);
        for _ in 0..10 {
            let t = r.take(now);
            assert_eq!(t.at_floor, r.limit() < 2);
            r.throttled(None, now);
        }
        assert_eq!(r.limit(), 1);
        assert!(r.take(now).at_floor);
    }

    #[test]
    fn retry_after_pauses_every_limited_dispatch() {
        let now = Instant::now();
        let mut r = RateLimiter::new(4, 0, now);
        r.take(now);
        r.throttled(Some(Duration::from_secs(2)), now);
        assert!(!r.admit(now + Duration::from_secs(1)));
        assert_eq!(r.reopens_at(now), Some(now + Duration::from_secs(2)));
        assert!(r.admit(now + Duration::from_secs(2)));
        assert_eq!(r.status(now).paused_ms, 2000);
    }

    #[test]
    fn token_bucket_spaces_requests_at_the_configured_rate() {
        let now = Instant::now();
        // 60 per minute: one per second, a burst of ten.
        let mut r = RateLimiter::new(100, 60, now);
        assert_eq!(fill(&mut r, now).len(), 10);
        let reopen = r.reopens_at(now).unwrap();
        assert_eq!(reopen, now + Duration::from_secs(1));
        assert!(!r.admit(now + Duration::from_millis(900)));
        assert!(r.admit(now + Duration::from_secs(1)));
    }

    #[test]
    fn release_returns_slots_without_changing_the_limit() {
        let now = Instant::now();
        let mut r = RateLimiter::new(3, 0, now);
        fill(&mut r, now);
        r.release(3);
        assert_eq!((r.status(now).in_flight, r.limit()), (0, 3));
    }
}
