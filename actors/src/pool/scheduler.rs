//! Which request runs on which worker, as plain data: the idle set, the bounded FIFO wait
//! queue with per-request deadlines, and session affinity. The PoolManager actor feeds it
//! events and carries out its decisions; everything here is synchronous and tested alone.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::config::Affinity;

/// A request waiting for a worker.
#[derive(Debug)]
pub struct Queued<J> {
    pub seq: u64,
    pub session: Option<String>,
    pub deadline: Instant,
    pub job: J,
}

/// What happened to a submitted request.
#[derive(Debug)]
pub enum Submitted<J> {
    /// Run it on this worker now (the worker is marked busy).
    Run { worker: String, job: J },
    /// Queued; the caller should arm a timer for `seq` at its deadline.
    Queued { seq: u64 },
    /// The queue is full.
    Busy { job: J, queued: usize },
}

/// The pool's scheduling state.
#[derive(Debug)]
pub struct Scheduler<J> {
    mode: Affinity,
    max_queue: usize,
    /// Workers that can take a request right now.
    idle: BTreeSet<String>,
    /// Workers that exist and can serve (busy or idle).
    live: HashSet<String>,
    /// session → the worker that served it last.
    affinity: HashMap<String, String>,
    queue: VecDeque<Queued<J>>,
    next_seq: u64,
}

impl<J> Scheduler<J> {
    pub fn new(mode: Affinity, max_queue: usize) -> Self {
        Scheduler {
            mode,
            max_queue,
            idle: BTreeSet::new(),
            live: HashSet::new(),
            affinity: HashMap::new(),
            queue: VecDeque::new(),
            next_seq: 0,
        }
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    pub fn is_idle(&self, worker: &str) -> bool {
        self.idle.contains(worker)
    }

    /// The worker a session last ran on, if it is still alive.
    pub fn preferred(&self, session: &str) -> Option<&str> {
        self.affinity
            .get(session)
            .filter(|w| self.live.contains(w.as_str()))
            .map(String::as_str)
    }

    /// The worker `session` may run on now, if any.
    fn pick(&self, session: Option<&str>) -> Option<String> {
        if let Some(preferred) = session.and_then(|s| self.preferred(s)) {
            if self.idle.contains(preferred) {
                return Some(preferred.to_owned());
            }
            if self.mode == Affinity::Strict {
                return None;
            }
        }
        self.idle.iter().next().cloned()
    }

    fn assign(&mut self, worker: &str, session: Option<&str>) {
        self.idle.remove(worker);
        if let Some(session) = session {
            self.affinity.insert(session.to_owned(), worker.to_owned());
        }
    }

    /// Submit a request: run it now, queue it, or refuse it.
    pub fn submit(&mut self, session: Option<String>, job: J, deadline: Instant) -> Submitted<J> {
        // Requests already waiting go first (FIFO), unless affinity lets this one use a
        // worker none of them can.
        if self.queue.is_empty() {
            if let Some(worker) = self.pick(session.as_deref()) {
                self.assign(&worker, session.as_deref());
                return Submitted::Run { worker, job };
            }
        }
        if self.queue.len() >= self.max_queue {
            return Submitted::Busy {
                job,
                queued: self.queue.len(),
            };
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(Queued {
            seq,
            session,
            deadline,
            job,
        });
        Submitted::Queued { seq }
    }

    /// Put a request back at the head of the queue (a retry after a crash). Ignores
    /// `max_queue`: the request was already admitted.
    pub fn requeue_front(&mut self, session: Option<String>, job: J, deadline: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_front(Queued {
            seq,
            session,
            deadline,
            job,
        });
        seq
    }

    /// Append a request handed over by a predecessor, keeping its deadline. Ignores
    /// `max_queue`: the request was already admitted.
    pub fn restore(&mut self, session: Option<String>, job: J, deadline: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(Queued {
            seq,
            session,
            deadline,
            job,
        });
        seq
    }

    /// A worker can serve (after start, or joined by adoption); it is idle unless `busy`.
    pub fn add_worker(&mut self, worker: &str, busy: bool) {
        self.live.insert(worker.to_owned());
        if !busy {
            self.idle.insert(worker.to_owned());
        }
    }

    /// A worker finished its request and is free.
    pub fn worker_idle(&mut self, worker: &str) {
        if self.live.contains(worker) {
            self.idle.insert(worker.to_owned());
        }
    }

    /// Take a worker out (before it stops, or after it died). Sessions bound to it lose
    /// their affinity, so strict requests waiting for it may run elsewhere.
    pub fn remove_worker(&mut self, worker: &str) {
        self.idle.remove(worker);
        self.live.remove(worker);
        self.affinity.retain(|_, w| w != worker);
    }

    /// Mark a worker busy outside the request path (e.g. while it is being stopped).
    pub fn take_idle(&mut self, worker: &str) -> bool {
        self.idle.remove(worker)
    }

    /// A session ended: forget its affinity.
    pub fn forget_session(&mut self, session: &str) {
        self.affinity.remove(session);
    }

    /// Match queued requests with idle workers, oldest request first.
    pub fn dispatch(&mut self) -> Vec<(String, Queued<J>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.queue.len() && !self.idle.is_empty() {
            let session = self.queue[i].session.clone();
            match self.pick(session.as_deref()) {
                Some(worker) => {
                    self.assign(&worker, session.as_deref());
                    let queued = self.queue.remove(i).expect("index checked");
                    out.push((worker, queued));
                }
                None => i += 1,
            }
        }
        out
    }

    /// Remove a queued request whose deadline passed; `None` if it already left the queue.
    pub fn expire(&mut self, seq: u64) -> Option<Queued<J>> {
        let pos = self.queue.iter().position(|q| q.seq == seq)?;
        self.queue.remove(pos)
    }

    /// Remove every queued request whose deadline is at or before `now`.
    pub fn expire_due(&mut self, now: Instant) -> Vec<Queued<J>> {
        if !self.queue.iter().any(|q| q.deadline <= now) {
            return Vec::new();
        }
        let (due, keep): (VecDeque<_>, VecDeque<_>) =
            self.queue.drain(..).partition(|q| q.deadline <= now);
        self.queue = keep;
        due.into_iter().collect()
    }

    /// The earliest deadline among queued requests.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.iter().map(|q| q.deadline).min()
    }

    /// Every queued request, oldest first (shutdown, or handing state to a successor).
    pub fn drain_queue(&mut self) -> Vec<Queued<J>> {
        self.queue.drain(..).collect()
    }

    /// The session → worker map (handed to a restarted PoolManager).
    pub fn affinity_map(&self) -> &HashMap<String, String> {
        &self.affinity
    }

    pub fn restore_affinity(&mut self, map: HashMap<String, String>) {
        self.affinity = map;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn sched(mode: Affinity) -> Scheduler<&'static str> {
        let mut s = Scheduler::new(mode, 2);
        s.add_worker("w1", false);
        s.add_worker("w2", false);
        s
    }

    fn run_on<J: std::fmt::Debug>(s: Submitted<J>) -> String {
        match s {
            Submitted::Run { worker, .. } => worker,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn session_prefers_the_worker_that_served_it_last() {
        let mut s = sched(Affinity::Hint);
        s.submit(None, "x", later()); // w1 busy with an anonymous request
        let first = run_on(s.submit(Some("s".into()), "a", later()));
        assert_eq!(first, "w2");
        s.worker_idle("w1");
        s.worker_idle("w2");
        let again = run_on(s.submit(Some("s".into()), "b", later()));
        assert_eq!(again, "w2", "affinity beats the first idle worker");
    }

    #[test]
    fn hint_affinity_falls_back_to_any_idle_worker() {
        let mut s = sched(Affinity::Hint);
        assert_eq!(run_on(s.submit(Some("s".into()), "a", later())), "w1");
        // w1 still busy: a hint falls back to w2.
        assert_eq!(run_on(s.submit(Some("s".into()), "b", later())), "w2");
    }

    #[test]
    fn strict_affinity_waits_for_its_worker_and_lets_others_pass() {
        let mut s = sched(Affinity::Strict);
        assert_eq!(run_on(s.submit(Some("s".into()), "a", later())), "w1");
        assert!(matches!(
            s.submit(Some("s".into()), "b", later()),
            Submitted::Queued { .. }
        ));
        // An anonymous request queued behind it can still take w2.
        assert!(matches!(
            s.submit(None, "c", later()),
            Submitted::Queued { .. }
        ));
        let ran = s.dispatch();
        assert_eq!(ran.len(), 1);
        assert_eq!((ran[0].0.as_str(), ran[0].1.job), ("w2", "c"));
        s.worker_idle("w1");
        let ran = s.dispatch();
        assert_eq!((ran[0].0.as_str(), ran[0].1.job), ("w1", "b"));
    }

    #[test]
    fn strict_request_runs_anywhere_once_its_worker_is_gone() {
        let mut s = sched(Affinity::Strict);
        run_on(s.submit(Some("s".into()), "a", later()));
        run_on(s.submit(None, "x", later())); // w2 busy
        assert!(matches!(
            s.submit(Some("s".into()), "b", later()),
            Submitted::Queued { .. }
        ));
        s.remove_worker("w1");
        s.worker_idle("w2");
        let ran = s.dispatch();
        assert_eq!((ran[0].0.as_str(), ran[0].1.job), ("w2", "b"));
    }

    #[test]
    fn queue_is_fifo_and_bounded() {
        let mut s = sched(Affinity::Hint);
        run_on(s.submit(None, "a", later()));
        run_on(s.submit(None, "b", later()));
        assert!(matches!(
            s.submit(None, "c", later()),
            Submitted::Queued { .. }
        ));
        assert!(matches!(
            s.submit(None, "d", later()),
            Submitted::Queued { .. }
        ));
        match s.submit(None, "e", later()) {
            Submitted::Busy { job, queued } => assert_eq!((job, queued), ("e", 2)),
            other => panic!("expected Busy, got {other:?}"),
        }
        s.worker_idle("w2");
        let ran = s.dispatch();
        assert_eq!(ran.len(), 1);
        assert_eq!(ran[0].1.job, "c");
    }

    #[test]
    fn a_new_request_does_not_jump_the_queue() {
        let mut s = sched(Affinity::Hint);
        run_on(s.submit(None, "a", later()));
        run_on(s.submit(None, "b", later()));
        assert!(matches!(
            s.submit(None, "c", later()),
            Submitted::Queued { .. }
        ));
        s.worker_idle("w1");
        // A worker is idle but "c" waits: "d" must queue behind it, not take w1.
        assert!(matches!(
            s.submit(None, "d", later()),
            Submitted::Queued { .. }
        ));
        let ran: Vec<_> = s.dispatch().into_iter().map(|(_, q)| q.job).collect();
        assert_eq!(ran, vec!["c"]);
    }

    #[test]
    fn expire_removes_only_queued_requests() {
        let mut s = sched(Affinity::Hint);
        run_on(s.submit(None, "a", later()));
        run_on(s.submit(None, "b", later()));
        let Submitted::Queued { seq } = s.submit(None, "c", later()) else {
            panic!()
        };
        assert_eq!(s.expire(seq).map(|q| q.job), Some("c"));
        assert!(s.expire(seq).is_none());
        assert_eq!(s.queue_len(), 0);
    }

    #[test]
    fn expire_due_removes_exactly_the_overdue_requests_keeping_order() {
        let mut s = Scheduler::new(Affinity::Hint, 10);
        s.add_worker("w1", false);
        s.add_worker("w2", false);
        run_on(s.submit(None, "a", later()));
        run_on(s.submit(None, "b", later()));
        let now = Instant::now();
        s.submit(None, "late", now + Duration::from_secs(60));
        s.submit(None, "due", now);
        s.submit(None, "later", now + Duration::from_secs(90));
        let due: Vec<_> = s.expire_due(now).into_iter().map(|q| q.job).collect();
        assert_eq!(due, vec!["due"]);
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(60)));
        s.worker_idle("w1");
        s.worker_idle("w2");
        let ran: Vec<_> = s.dispatch().into_iter().map(|(_, q)| q.job).collect();
        assert_eq!(ran, vec!["late", "later"]);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn requeued_retry_goes_first() {
        let mut s = sched(Affinity::Hint);
        run_on(s.submit(None, "a", later()));
        run_on(s.submit(None, "b", later()));
        s.submit(None, "c", later());
        s.remove_worker("w1");
        s.requeue_front(None, "a-retry", later());
        s.worker_idle("w2");
        let ran: Vec<_> = s.dispatch().into_iter().map(|(_, q)| q.job).collect();
        assert_eq!(ran, vec!["a-retry"]);
    }

    #[test]
    fn idle_of_a_removed_worker_is_ignored() {
        let mut s = sched(Affinity::Hint);
        s.remove_worker("w1");
        s.worker_idle("w1");
        assert!(!s.is_idle("w1"));
        assert_eq!(s.idle_count(), 1);
    }
}
