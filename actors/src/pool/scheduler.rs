//! Which request runs on which worker, as plain data: every worker's slots, the FIFO wait
//! queue (interactive requests bounded and with deadlines, batch requests neither), session
//! affinity, and the pool-wide [`RateLimiter`] for limited requests. The PoolManager actor
//! feeds it events and carries out its decisions; everything here is synchronous, takes
//! the time as an argument, and is tested alone.
//!
//! Dispatch is by free capacity: a request goes to the least-loaded worker with a free
//! slot, or to its session's worker while that one has a free slot (`strict` affinity
//! waits for it). Waiting requests go first in arrival order; one that cannot run yet
//! (strict affinity, a retry's back-off, the rate limit) lets later ones pass.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::rate::{RateLimiter, RateStatus, Ticket};
use crate::config::Affinity;

/// A request waiting for a slot.
#[derive(Debug)]
pub(crate) struct Queued<J> {
    pub session: Option<String>,
    /// Interactive requests fail when this passes (`pool.checkout_timeout`); batch
    /// requests have none.
    pub deadline: Option<Instant>,
    /// A retry after a rate refusal runs no earlier than this.
    pub not_before: Option<Instant>,
    /// Counts against the rate limiter.
    pub limited: bool,
    pub job: J,
}

impl<J> Queued<J> {
    /// An interactive request: bounded by `pool.max_queue`, fails at `deadline`.
    pub fn interactive(session: Option<String>, job: J, deadline: Instant, limited: bool) -> Self {
        Queued {
            session,
            deadline: Some(deadline),
            not_before: None,
            limited,
            job,
        }
    }

    /// A batch request: waits for capacity as long as it takes.
    pub fn batch(session: Option<String>, job: J, limited: bool) -> Self {
        Queued {
            session,
            deadline: None,
            not_before: None,
            limited,
            job,
        }
    }
}

/// A request the scheduler placed on a worker (whose slot is now counted).
#[derive(Debug)]
pub(crate) struct Placed<J> {
    pub worker: String,
    pub job: J,
    /// The rate limiter's record, for limited requests.
    pub ticket: Option<Ticket>,
}

/// How a slot was freed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Freed {
    /// Answered successfully.
    Ok,
    /// Anything else that says nothing about the far end's capacity.
    Other,
    /// Refused for rate.
    Throttled { retry_after: Option<Duration> },
}

/// A worker's slots as the scheduler sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Load {
    pub capacity: usize,
    pub in_flight: usize,
    /// Of `in_flight`, the limited requests.
    pub limited: usize,
    /// Takes no new work.
    pub draining: bool,
}

/// The pool's scheduling state. See the module docs.
#[derive(Debug)]
pub(crate) struct Scheduler<J> {
    mode: Affinity,
    max_queue: usize,
    workers: HashMap<String, Load>,
    /// Workers with a free slot that take work, by load then id: the first is the
    /// least-loaded.
    free: BTreeSet<(usize, String)>,
    /// session → the worker that served it last.
    affinity: HashMap<String, String>,
    queue: VecDeque<Queued<J>>,
    /// Queued requests with a deadline (the ones `max_queue` bounds).
    interactive: usize,
    rate: RateLimiter,
}

impl<J> Scheduler<J> {
    pub fn new(mode: Affinity, max_queue: usize, rate: RateLimiter) -> Self {
        Scheduler {
            mode,
            max_queue,
            workers: HashMap::new(),
            free: BTreeSet::new(),
            affinity: HashMap::new(),
            queue: VecDeque::new(),
            interactive: 0,
            rate,
        }
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn load(&self, worker: &str) -> Option<&Load> {
        self.workers.get(worker)
    }

    /// Slots of the workers that take work.
    pub fn capacity(&self) -> usize {
        self.workers
            .values()
            .filter(|l| !l.draining)
            .map(|l| l.capacity)
            .sum()
    }

    /// Requests in flight on every worker.
    pub fn in_flight(&self) -> usize {
        self.workers.values().map(|l| l.in_flight).sum()
    }

    pub fn rate_status(&self, now: Instant) -> RateStatus {
        self.rate.status(now)
    }

    /// The worker a session last ran on, if it still takes work.
    pub fn preferred(&self, session: &str) -> Option<&str> {
        self.affinity
            .get(session)
            .filter(|w| self.workers.get(w.as_str()).is_some_and(|l| !l.draining))
            .map(String::as_str)
    }

    fn has_free_slot(&self, worker: &str) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|l| !l.draining && l.in_flight < l.capacity)
    }

    /// The worker a request of `session` may run on now, if any.
    fn pick(&self, session: Option<&str>) -> Option<String> {
        if let Some(preferred) = session.and_then(|s| self.preferred(s)) {
            if self.has_free_slot(preferred) {
                return Some(preferred.to_owned());
            }
            if self.mode == Affinity::Strict {
                return None;
            }
        }
        self.free.iter().next().map(|(_, id)| id.clone())
    }

    /// Re-files `worker` in the free set after its load changed.
    fn update_free(&mut self, worker: &str, old_in_flight: usize) {
        let Some(load) = self.workers.get(worker) else {
            return;
        };
        self.free.remove(&(old_in_flight, worker.to_owned()));
        if !load.draining && load.in_flight < load.capacity {
            self.free.insert((load.in_flight, worker.to_owned()));
        }
    }

    fn place(
        &mut self,
        worker: &str,
        session: Option<&str>,
        limited: bool,
        now: Instant,
    ) -> Option<Ticket> {
        let ticket = limited.then(|| self.rate.take(now));
        let Some(load) = self.workers.get_mut(worker) else {
            return ticket;
        };
        let old = load.in_flight;
        load.in_flight += 1;
        if limited {
            load.limited += 1;
        }
        self.update_free(worker, old);
        if let Some(session) = session {
            if self.affinity.get(session).map(String::as_str) != Some(worker) {
                self.affinity.insert(session.to_owned(), worker.to_owned());
            }
        }
        ticket
    }

    /// Whether `q` could be placed right now if it were first in line.
    fn could_place(&mut self, q: &Queued<J>, now: Instant) -> bool {
        (!q.limited || self.rate.admit(now)) && self.pick(q.session.as_deref()).is_some()
    }

    /// Admit a request to the queue (follow with [`dispatch`](Self::dispatch)). An
    /// interactive request is refused, and handed back with the queue's length, when
    /// `max_queue` interactive requests already wait and it could not run at once.
    pub fn submit(&mut self, q: Queued<J>, now: Instant) -> Result<(), (J, usize)> {
        if q.deadline.is_some() && self.interactive >= self.max_queue && !self.could_place(&q, now)
        {
            return Err((q.job, self.interactive));
        }
        self.push(q, false);
        Ok(())
    }

    /// Put a request back at the head of the queue (a retry); `max_queue` does not apply:
    /// it was admitted before.
    pub fn requeue_front(&mut self, q: Queued<J>) {
        self.push(q, true);
    }

    /// Append a request handed over by a predecessor, keeping its deadline; `max_queue`
    /// does not apply: it was admitted before.
    pub fn restore(&mut self, q: Queued<J>) {
        self.push(q, false);
    }

    fn push(&mut self, q: Queued<J>, front: bool) {
        if q.deadline.is_some() {
            self.interactive += 1;
        }
        if front {
            self.queue.push_front(q);
        } else {
            self.queue.push_back(q);
        }
    }

    fn remove_at(&mut self, i: usize) -> Option<Queued<J>> {
        let q = self.queue.remove(i)?;
        if q.deadline.is_some() {
            self.interactive -= 1;
        }
        Some(q)
    }

    /// Place waiting requests on free slots, oldest first.
    pub fn dispatch(&mut self, now: Instant) -> Vec<Placed<J>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.queue.len() && !self.free.is_empty() {
            let q = &self.queue[i];
            if q.not_before.is_some_and(|t| t > now) || (q.limited && !self.rate.admit(now)) {
                i += 1;
                continue;
            }
            let Some(worker) = self.pick(q.session.as_deref()) else {
                i += 1;
                continue;
            };
            let q = self.remove_at(i).expect("index checked");
            let ticket = self.place(&worker, q.session.as_deref(), q.limited, now);
            out.push(Placed {
                worker,
                job: q.job,
                ticket,
            });
        }
        out
    }

    /// A worker can serve (after start, or joined by adoption with requests in flight).
    pub fn add_worker(&mut self, worker: &str, capacity: usize, in_flight: usize, limited: usize) {
        let load = Load {
            capacity: capacity.max(1),
            in_flight,
            limited,
            draining: false,
        };
        self.workers.insert(worker.to_owned(), load);
        self.update_free(worker, in_flight);
    }

    /// A slot of `worker` is free again.
    pub fn freed(&mut self, worker: &str, limited: bool, how: Freed, now: Instant) {
        let Some(load) = self.workers.get_mut(worker) else {
            // Its slots were already returned with the whole worker.
            return;
        };
        let old = load.in_flight;
        load.in_flight = load.in_flight.saturating_sub(1);
        if limited {
            load.limited = load.limited.saturating_sub(1);
            match how {
                Freed::Ok => self.rate.succeeded(),
                Freed::Other => self.rate.release(1),
                Freed::Throttled { retry_after } => self.rate.throttled(retry_after, now),
            }
        }
        self.update_free(worker, old);
    }

    /// Send `worker` nothing more; its session bindings go elsewhere.
    pub fn drain(&mut self, worker: &str) {
        if let Some(load) = self.workers.get_mut(worker) {
            load.draining = true;
            let in_flight = load.in_flight;
            self.free.remove(&(in_flight, worker.to_owned()));
        }
    }

    /// Take a worker out (it died or stopped): its slots, and the rate limiter's count of
    /// its limited requests, are returned. Sessions bound to it lose their affinity.
    pub fn remove_worker(&mut self, worker: &str) -> Option<Load> {
        let load = self.workers.remove(worker)?;
        self.free.remove(&(load.in_flight, worker.to_owned()));
        self.rate.release(load.limited);
        self.affinity.retain(|_, w| w != worker);
        Some(load)
    }

    /// A session ended: forget its affinity.
    pub fn forget_session(&mut self, session: &str) {
        self.affinity.remove(session);
    }

    /// Remove every queued request whose deadline is at or before `now`.
    pub fn expire_due(&mut self, now: Instant) -> Vec<Queued<J>> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].deadline.is_some_and(|d| d <= now) {
                due.extend(self.remove_at(i));
            } else {
                i += 1;
            }
        }
        due
    }

    /// When the pool must look at the queue again without any other event: the earliest
    /// deadline, retry back-off, or reopening of the rate limit that a queued request waits
    /// for.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut earliest = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        let mut limited_waiting = false;
        for q in &self.queue {
            if let Some(d) = q.deadline {
                earliest(d);
            }
            match q.not_before {
                Some(t) if t > now => earliest(t),
                _ => limited_waiting |= q.limited,
            }
        }
        if limited_waiting {
            if let Some(t) = self.rate.reopens_at(now) {
                earliest(t);
            }
        }
        wake
    }

    /// Every queued request, oldest first (shutdown, or handing state to a successor).
    pub fn drain_queue(&mut self) -> Vec<Queued<J>> {
        self.interactive = 0;
        self.queue.drain(..).collect()
    }

    /// What a successor continues from: affinity and the rate limiter (the queue goes
    /// with [`drain_queue`](Self::drain_queue), workers rejoin by adoption).
    pub fn hand_over(&mut self) -> (HashMap<String, String>, RateLimiter) {
        (std::mem::take(&mut self.affinity), self.rate.clone())
    }

    pub fn take_over(&mut self, affinity: HashMap<String, String>, rate: RateLimiter) {
        self.affinity = affinity;
        self.rate = rate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// Two workers of `capacity` slots, no rate limit to speak of.
    fn sched(mode: Affinity, capacity: usize) -> Scheduler<&'static str> {
        let mut s = Scheduler::new(mode, 2, RateLimiter::new(1000, 0, now()));
        s.add_worker("w1", capacity, 0, 0);
        s.add_worker("w2", capacity, 0, 0);
        s
    }

    fn submit(
        s: &mut Scheduler<&'static str>,
        session: Option<&str>,
        job: &'static str,
    ) -> Vec<(String, &'static str)> {
        s.submit(
            Queued::interactive(session.map(Into::into), job, later(), false),
            now(),
        )
        .unwrap_or_else(|(job, _)| panic!("{job} refused"));
        placed(s.dispatch(now()))
    }

    fn placed(p: Vec<Placed<&'static str>>) -> Vec<(String, &'static str)> {
        p.into_iter().map(|p| (p.worker, p.job)).collect()
    }

    fn free(s: &mut Scheduler<&'static str>, worker: &str) {
        s.freed(worker, false, Freed::Ok, now());
    }

    #[test]
    fn requests_go_to_the_least_loaded_worker_until_every_slot_is_taken() {
        let mut s = sched(Affinity::Hint, 2);
        let workers: Vec<String> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|j| submit(&mut s, None, j).pop().unwrap().0)
            .collect();
        assert_eq!(workers, ["w1", "w2", "w1", "w2"], "spread, then fill");
        assert!(submit(&mut s, None, "e").is_empty(), "no slot left: queued");
        assert_eq!((s.in_flight(), s.capacity(), s.queue_len()), (4, 4, 1));
        free(&mut s, "w2");
        assert_eq!(placed(s.dispatch(now())), [("w2".to_owned(), "e")]);
    }

    #[test]
    fn session_prefers_its_worker_while_it_has_a_free_slot() {
        let mut s = sched(Affinity::Hint, 2);
        submit(&mut s, None, "x"); // w1 has one request
        assert_eq!(submit(&mut s, Some("s"), "a")[0].0, "w2");
        // w2 now has as many as w1, but the session sticks to it.
        assert_eq!(submit(&mut s, Some("s"), "b")[0].0, "w2");
        // w2 is full: a hint falls back to the least-loaded worker.
        assert_eq!(submit(&mut s, Some("s"), "c")[0].0, "w1");
    }

    #[test]
    fn strict_affinity_waits_for_a_slot_on_its_worker_and_lets_others_pass() {
        let mut s = sched(Affinity::Strict, 1);
        assert_eq!(submit(&mut s, Some("s"), "a")[0].0, "w1");
        assert!(submit(&mut s, Some("s"), "b").is_empty());
        // An anonymous request behind it can still take w2.
        assert_eq!(submit(&mut s, None, "c"), [("w2".to_owned(), "c")]);
        free(&mut s, "w1");
        assert_eq!(placed(s.dispatch(now())), [("w1".to_owned(), "b")]);
    }

    #[test]
    fn strict_request_runs_anywhere_once_its_worker_drains_or_is_gone() {
        let mut s = sched(Affinity::Strict, 1);
        submit(&mut s, Some("s"), "a");
        submit(&mut s, None, "x");
        assert!(submit(&mut s, Some("s"), "b").is_empty());
        s.drain("w1");
        free(&mut s, "w2");
        assert_eq!(placed(s.dispatch(now())), [("w2".to_owned(), "b")]);
        assert!(s.remove_worker("w1").is_some());
        assert_eq!(s.preferred("s"), Some("w2"));
    }

    #[test]
    fn interactive_queue_is_fifo_and_bounded_but_batch_requests_are_not() {
        let mut s = sched(Affinity::Hint, 1);
        submit(&mut s, None, "a");
        submit(&mut s, None, "b");
        submit(&mut s, None, "c");
        submit(&mut s, None, "d");
        match s.submit(Queued::interactive(None, "e", later(), false), now()) {
            Err((job, queued)) => assert_eq!((job, queued), ("e", 2)),
            Ok(()) => panic!("a third interactive request must be refused"),
        }
        for job in ["f", "g", "h"] {
            s.submit(Queued::batch(None, job, false), now()).unwrap();
        }
        assert_eq!(s.queue_len(), 5);
        free(&mut s, "w2");
        free(&mut s, "w1");
        let order: Vec<_> = placed(s.dispatch(now()))
            .into_iter()
            .map(|(_, j)| j)
            .collect();
        assert_eq!(order, ["c", "d"]);
    }

    #[test]
    fn max_queue_zero_still_runs_a_request_that_has_a_slot() {
        let mut s: Scheduler<&str> =
            Scheduler::new(Affinity::Hint, 0, RateLimiter::new(10, 0, now()));
        s.add_worker("w1", 1, 0, 0);
        assert!(s
            .submit(Queued::interactive(None, "a", later(), false), now())
            .is_ok());
        assert_eq!(s.dispatch(now()).len(), 1);
        assert!(s
            .submit(Queued::interactive(None, "b", later(), false), now())
            .is_err());
        assert!(
            s.submit(Queued::batch(None, "c", false), now()).is_ok(),
            "batch waits"
        );
    }

    #[test]
    fn a_new_request_does_not_jump_the_queue() {
        let mut s = sched(Affinity::Hint, 1);
        submit(&mut s, None, "a");
        submit(&mut s, None, "b");
        assert!(submit(&mut s, None, "c").is_empty());
        free(&mut s, "w1");
        // "d" arrives together with the free slot: "c" was first.
        s.submit(Queued::batch(None, "d", false), now()).unwrap();
        let order: Vec<_> = placed(s.dispatch(now()))
            .into_iter()
            .map(|(_, j)| j)
            .collect();
        assert_eq!(order, ["c"]);
    }

    #[test]
    fn expire_due_removes_exactly_the_overdue_interactive_requests_keeping_order() {
        let mut s = Scheduler::new(Affinity::Hint, 10, RateLimiter::new(10, 0, now()));
        s.add_worker("w1", 1, 1, 0);
        let t = now();
        for (job, deadline) in [
            ("late", t + Duration::from_secs(60)),
            ("due", t),
            ("later", t + Duration::from_secs(90)),
        ] {
            s.submit(Queued::interactive(None, job, deadline, false), t)
                .unwrap();
        }
        s.submit(Queued::batch(None, "batch", false), t).unwrap();
        let due: Vec<_> = s.expire_due(t).into_iter().map(|q| q.job).collect();
        assert_eq!(due, ["due"]);
        assert_eq!(s.next_wake(t), Some(t + Duration::from_secs(60)));
        s.freed("w1", false, Freed::Ok, t);
        let next: Vec<_> = placed(s.dispatch(t)).into_iter().map(|(_, j)| j).collect();
        assert_eq!(next, ["late"]);
    }

    #[test]
    fn a_retry_goes_first_but_waits_out_its_back_off() {
        let mut s = sched(Affinity::Hint, 1);
        submit(&mut s, None, "a");
        submit(&mut s, None, "b");
        submit(&mut s, None, "c");
        let t = now();
        let mut retry = Queued::batch(None, "a-retry", false);
        retry.not_before = Some(t + Duration::from_secs(5));
        s.requeue_front(retry);
        s.freed("w1", false, Freed::Ok, t);
        assert_eq!(
            placed(s.dispatch(t)),
            [("w1".to_owned(), "c")],
            "the retry sleeps"
        );
        assert_eq!(s.next_wake(t), Some(t + Duration::from_secs(5)));
        s.freed("w1", false, Freed::Ok, t);
        assert_eq!(
            placed(s.dispatch(t + Duration::from_secs(5))),
            [("w1".to_owned(), "a-retry")]
        );
    }

    #[test]
    fn limited_requests_wait_for_the_rate_limit_and_others_pass_them() {
        let mut s: Scheduler<&str> =
            Scheduler::new(Affinity::Hint, 10, RateLimiter::new(1, 0, now()));
        s.add_worker("w1", 4, 0, 0);
        let t = now();
        for (job, limited) in [("lm1", true), ("lm2", true), ("ping", false)] {
            s.submit(Queued::batch(None, job, limited), t).unwrap();
        }
        let first = s.dispatch(t);
        let jobs: Vec<_> = first.iter().map(|p| p.job).collect();
        assert_eq!(jobs, ["lm1", "ping"]);
        assert!(first[0].ticket.is_some() && first[1].ticket.is_none());
        assert_eq!(s.rate_status(t).in_flight, 1);
        s.freed("w1", true, Freed::Ok, t);
        assert_eq!(placed(s.dispatch(t)), [("w1".to_owned(), "lm2")]);
    }

    #[test]
    fn a_refusal_halves_the_limit_and_a_removed_worker_returns_its_limited_slots() {
        let mut s: Scheduler<usize> =
            Scheduler::new(Affinity::Hint, 100, RateLimiter::new(8, 0, now()));
        s.add_worker("w1", 8, 0, 0);
        let t = now();
        for i in 0..8 {
            s.submit(Queued::batch(None, i, true), t).unwrap();
        }
        let placed = s.dispatch(t);
        assert_eq!(placed.len(), 8);
        s.freed("w1", true, Freed::Throttled { retry_after: None }, t);
        assert_eq!(
            s.rate_status(t).limit,
            7,
            "down to the seven still in flight"
        );
        assert_eq!(s.rate_status(t).in_flight, 7);
        let load = s.remove_worker("w1").unwrap();
        assert_eq!((load.in_flight, load.limited), (7, 7));
        assert_eq!(s.rate_status(t).in_flight, 0);
    }

    #[test]
    fn a_draining_worker_gets_nothing_more_and_frees_its_slots_as_they_finish() {
        let mut s = sched(Affinity::Hint, 2);
        submit(&mut s, None, "a");
        s.drain("w1");
        assert_eq!(s.capacity(), 2);
        let next: Vec<_> = (0..2)
            .map(|_| submit(&mut s, None, "x")[0].0.clone())
            .collect();
        assert_eq!(next, ["w2", "w2"]);
        s.freed("w1", false, Freed::Ok, now());
        assert_eq!(s.load("w1").unwrap().in_flight, 0);
        assert!(submit(&mut s, None, "y").is_empty(), "w1 stays out");
    }

    #[test]
    fn a_late_freed_event_of_a_removed_worker_is_ignored() {
        let mut s = sched(Affinity::Hint, 1);
        submit(&mut s, None, "a");
        s.remove_worker("w1");
        s.freed("w1", true, Freed::Ok, now());
        assert!(s.load("w1").is_none());
        assert_eq!(s.rate_status(now()).in_flight, 0);
    }
}
