//! The PoolManager actor: keeps `pool.size` workers alive, matches requests to free workers
//! (FIFO queue, affinity, deadlines), replaces dead or unhealthy workers, retries a request
//! whose worker crashed, pings idle workers, and drains everything on shutdown.
//!
//! It never waits on Python: `Submit` hands the request to a Worker, which answers the
//! caller directly and tells the pool when it is free again.

pub mod scheduler;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::{PoolConfig, ShutdownConfig, WorkerConfig};
use crate::error::{ActorError, TimeoutStage};
use crate::launcher::WorkerLauncher;
use crate::worker::{
    process, Adopt, Dispatch, ForgetSession, Health, HealthCheck, Job, Stop, Worker, WorkerEvent,
    WorkerEventKind, WorkerSettings, WorkerSnapshot, WorkerStats,
};
use scheduler::{Scheduler, Submitted};

/// Run a request on some worker; the answer arrives on `job.reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit(pub Job);

/// Resolve once at least `min_ready` workers are ready, or fail if the initial workers
/// failed to start (every one of the first `pool.size` attempts) or the pool shuts down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WaitReady {
    pub min_ready: usize,
    pub reply: oneshot::Sender<Result<(), ActorError>>,
}

type ReadyWaiter = (usize, oneshot::Sender<Result<(), ActorError>>);

/// Current pool state and metrics.
#[derive(Message)]
#[rtype(result = "PoolStatus")]
pub struct GetPoolStatus;

/// Sessions ended: forget their affinity and let workers drop their cached programs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetSessions(pub Vec<String>);

/// Ping every idle worker now (also runs every `pool.health_check_interval`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunHealthCheck;

/// Graceful shutdown: refuse new work, let running and queued requests finish until
/// `graceful` has passed, then stop every worker by the ladder. `done` fires when no
/// worker process remains.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownPool {
    pub graceful: Duration,
    pub done: oneshot::Sender<()>,
}

/// Fault injection for supervision tests: the handler panics.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Sent to the supervisor from `stopped()`. `handover` is `None` after a requested
/// shutdown; otherwise it carries everything a successor needs to continue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PoolStopped {
    pub handover: Option<PoolHandover>,
}

/// A stopped PoolManager's state, moved to its successor (never shared).
pub struct PoolHandover {
    workers: Vec<(String, Entry)>,
    pub(crate) queue: Vec<(Option<String>, Job, Instant)>,
    affinity: HashMap<String, String>,
    next_worker: u64,
    ever_ready: bool,
    totals: PoolTotals,
    latencies: VecDeque<Duration>,
    ready_waiters: Vec<ReadyWaiter>,
}

impl PoolHandover {
    pub(crate) fn worker_addrs(&self) -> impl Iterator<Item = &Addr<Worker>> {
        self.workers.iter().map(|(_, e)| &e.addr)
    }
}

impl std::fmt::Debug for PoolHandover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandover")
            .field("workers", &self.workers.len())
            .field("queue", &self.queue.len())
            .finish()
    }
}

/// Lifetime counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PoolTotals {
    pub submitted: u64,
    pub completed: u64,
    pub retried: u64,
    pub crashed: u64,
    pub started: u64,
    pub start_failures: u64,
    pub replaced: u64,
    pub checkout_timeouts: u64,
    pub rejected_busy: u64,
}

/// Request latency (submit → answer) over the most recent requests, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What `GetPoolStatus` answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolStatus {
    pub size: usize,
    pub ready: usize,
    pub busy: usize,
    pub starting: usize,
    pub queue_depth: usize,
    pub shutting_down: bool,
    pub workers: Vec<WorkerSnapshot>,
    pub totals: PoolTotals,
    pub latency: LatencySummary,
    /// The most recent start failure, while no worker is ready.
    pub last_start_error: Option<String>,
}

const LATENCY_WINDOW: usize = 4096;
const MAX_START_BACKOFF: Duration = Duration::from_secs(10);

struct Entry {
    addr: Addr<Worker>,
    snapshot: WorkerSnapshot,
    started: Instant,
    retiring: bool,
}

struct ShutdownState {
    waiters: Vec<oneshot::Sender<()>>,
    stopping: bool,
}

/// See the module docs.
pub struct PoolManager {
    name: String,
    config: PoolConfig,
    settings: WorkerSettings,
    launcher: Arc<dyn WorkerLauncher>,
    workers: BTreeMap<String, Entry>,
    sched: Scheduler<Job>,
    next_worker: u64,
    consecutive_start_failures: u32,
    start_retry_armed: bool,
    ever_ready: bool,
    last_start_error: Option<ActorError>,
    ready_waiters: Vec<ReadyWaiter>,
    totals: PoolTotals,
    latencies: VecDeque<Duration>,
    shutdown: Option<ShutdownState>,
    supervisor: Option<Recipient<PoolStopped>>,
    handover: Option<PoolHandover>,
    /// The one timer that expires queued requests, and when it fires.
    expiry: Option<(Instant, SpawnHandle)>,
}

impl PoolManager {
    /// A pool named `name` (a prefix for worker ids and logs; never registered anywhere).
    /// `handover` continues a predecessor's work.
    pub fn new(
        name: String,
        config: PoolConfig,
        worker: WorkerConfig,
        shutdown: ShutdownConfig,
        launcher: Arc<dyn WorkerLauncher>,
        supervisor: Option<Recipient<PoolStopped>>,
        handover: Option<PoolHandover>,
    ) -> Self {
        let settings = WorkerSettings {
            startup_timeout: config.startup_timeout,
            health_timeout: config.request_timeout.min(Duration::from_secs(10)),
            max_frame_bytes: worker.max_frame_bytes,
            keep_log_lines: worker.keep_log_lines,
            degrade_after: config.degrade_after,
            remove_after: config.remove_after,
            max_requests: config.max_requests,
            max_lifetime: config.max_lifetime,
            graceful_timeout: shutdown.graceful_timeout,
            kill_timeout: shutdown.kill_timeout,
        };
        PoolManager {
            name,
            sched: Scheduler::new(config.affinity, config.max_queue),
            config,
            settings,
            launcher,
            workers: BTreeMap::new(),
            next_worker: 0,
            consecutive_start_failures: 0,
            start_retry_armed: false,
            ever_ready: false,
            last_start_error: None,
            ready_waiters: Vec::new(),
            totals: PoolTotals::default(),
            latencies: VecDeque::new(),
            shutdown: None,
            supervisor,
            handover,
            expiry: None,
        }
    }

    fn serving(&self) -> impl Iterator<Item = &Entry> {
        self.workers.values().filter(|e| !e.retiring)
    }

    fn ready_count(&self) -> usize {
        self.serving()
            .filter(|e| e.snapshot.health.can_serve())
            .count()
    }

    fn starting_count(&self) -> usize {
        self.serving()
            .filter(|e| e.snapshot.health == Health::Starting)
            .count()
    }

    /// Start workers until `pool.size` are alive, at most `startup_concurrency` at once.
    fn ensure_workers(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown.is_some() || self.start_retry_armed {
            return;
        }
        while self.serving().count() < self.config.size
            && self.starting_count() < self.config.startup_concurrency.max(1)
        {
            self.spawn_worker(ctx);
        }
    }

    fn spawn_worker(&mut self, ctx: &mut Context<Self>) {
        self.next_worker += 1;
        let id = format!("{}.w{}", self.name, self.next_worker);
        let worker = Worker::new(
            id.clone(),
            self.settings.clone(),
            self.launcher.clone(),
            ctx.address().recipient(),
        );
        let snapshot = WorkerSnapshot {
            id: id.clone(),
            pid: None,
            health: Health::Starting,
            busy: false,
            session: None,
            stats: WorkerStats::default(),
            uptime_ms: 0,
            rss_bytes: None,
        };
        self.totals.started += 1;
        log::debug!("pool {}: starting worker {id}", self.name);
        let addr = worker.start();
        self.workers.insert(
            id,
            Entry {
                addr,
                snapshot,
                started: Instant::now(),
                retiring: false,
            },
        );
    }

    fn run(&mut self, worker: String, job: Job) {
        match self.workers.get_mut(&worker) {
            Some(entry) => {
                entry.snapshot.busy = true;
                entry.addr.do_send(Dispatch(job));
            }
            None => {
                // The scheduler and the worker table disagree; never lose the request.
                log::error!(
                    "pool {}: scheduler chose unknown worker {worker}",
                    self.name
                );
                job.answer(Err(ActorError::WorkerCrashed {
                    worker_id: worker,
                    reason: "worker vanished before the request was sent".into(),
                    last_output: String::new(),
                }));
            }
        }
    }

    fn dispatch(&mut self) {
        for (worker, queued) in self.sched.dispatch() {
            self.run(worker, queued.job);
        }
    }

    /// Make sure a timer fires by `deadline`. One timer serves the whole queue (armed for
    /// the earliest deadline): a timer per queued request would pile up thousands of
    /// spawned items in the context at high request rates.
    fn arm_expiry(&mut self, deadline: Instant, ctx: &mut Context<Self>) {
        if let Some((at, handle)) = self.expiry {
            if at <= deadline {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = deadline.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |act, ctx| {
            act.expiry = None;
            for queued in act.sched.expire_due(Instant::now()) {
                act.expire(queued);
            }
            if let Some(next) = act.sched.next_deadline() {
                act.arm_expiry(next, ctx);
            }
        });
        self.expiry = Some((deadline, handle));
    }

    fn expire(&mut self, queued: scheduler::Queued<Job>) {
        self.totals.checkout_timeouts += 1;
        let hint = match (&self.last_start_error, self.ready_count()) {
            (Some(e), 0) => format!("no worker is ready; the last start failed: {e}"),
            (_, ready) => format!(
                "no worker became free ({ready} ready, {} queued); raise pool.size or pool.checkout_timeout",
                self.sched.queue_len()
            ),
        };
        queued.job.answer(Err(ActorError::timeout(
            TimeoutStage::Checkout,
            self.config.checkout_timeout,
            hint,
        )));
    }

    fn retire(&mut self, id: &str, reason: &str) {
        let Some(entry) = self.workers.get_mut(id) else {
            return;
        };
        if entry.retiring {
            return;
        }
        log::info!("pool {}: replacing worker {id}: {reason}", self.name);
        entry.retiring = true;
        self.totals.replaced += 1;
        self.sched.remove_worker(id);
        entry.addr.do_send(Stop {
            graceful: self.settings.graceful_timeout,
            kill: self.settings.kill_timeout,
            done: None,
        });
    }

    fn on_start_failed(&mut self, id: &str, error: ActorError, ctx: &mut Context<Self>) {
        self.workers.remove(id);
        self.sched.remove_worker(id);
        self.totals.start_failures += 1;
        self.consecutive_start_failures += 1;
        log::warn!("pool {}: worker {id} failed to start: {error}", self.name);
        if !self.ever_ready && self.consecutive_start_failures as usize >= self.config.size.max(1) {
            for (_, waiter) in self.ready_waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
        }
        self.last_start_error = Some(error);
        if self.shutdown.is_some() {
            return;
        }
        // Back off so a worker that cannot start (bad handler module, missing package)
        // does not spin; the first retry is quick.
        let exp = self.consecutive_start_failures.saturating_sub(1).min(10);
        let backoff = (Duration::from_millis(100) * 2u32.pow(exp)).min(MAX_START_BACKOFF);
        self.start_retry_armed = true;
        ctx.run_later(backoff, |act, ctx| {
            act.start_retry_armed = false;
            act.ensure_workers(ctx);
        });
    }

    fn on_exited(
        &mut self,
        id: &str,
        reason: String,
        expected: bool,
        orphan: Option<Job>,
        ctx: &mut Context<Self>,
    ) {
        let retiring = self.workers.remove(id).map(|e| e.retiring).unwrap_or(true);
        self.sched.remove_worker(id);
        if !expected && !retiring {
            self.totals.crashed += 1;
            log::warn!("pool {}: worker {id} died: {reason}", self.name);
        }
        if let Some(mut job) = orphan {
            if self.shutdown.is_some() {
                job.answer(Err(ActorError::ShuttingDown));
            } else if job.attempt < self.config.retry_on_crash {
                job.attempt += 1;
                self.totals.retried += 1;
                log::info!(
                    "pool {}: retrying `{}` (attempt {}) after worker {id} died",
                    self.name,
                    job.command,
                    job.attempt + 1
                );
                let deadline = Instant::now() + self.config.checkout_timeout;
                self.sched
                    .requeue_front(job.session_id.clone(), job, deadline);
                self.arm_expiry(deadline, ctx);
            } else {
                let (reason, last_output) = match reason.split_once("; last output: ") {
                    Some((r, out)) => (r.to_owned(), out.to_owned()),
                    None => (reason.clone(), String::new()),
                };
                job.answer(Err(ActorError::WorkerCrashed {
                    worker_id: id.to_owned(),
                    reason,
                    last_output,
                }));
            }
        }
        self.ensure_workers(ctx);
        self.dispatch();
        self.maybe_finish_shutdown(ctx);
    }

    fn on_event(&mut self, event: WorkerEvent, ctx: &mut Context<Self>) {
        let id = event.worker_id;
        match event.kind {
            WorkerEventKind::Ready { pid } => {
                let Some(entry) = self.workers.get_mut(&id) else {
                    return;
                };
                entry.snapshot.health = Health::Ready;
                entry.snapshot.pid = pid;
                let retiring = entry.retiring;
                self.consecutive_start_failures = 0;
                self.last_start_error = None;
                self.ever_ready = true;
                if !retiring {
                    self.sched.add_worker(&id, false);
                }
                self.wake_ready_waiters();
                self.dispatch();
                self.ensure_workers(ctx);
            }
            WorkerEventKind::StartFailed { error } => self.on_start_failed(&id, error, ctx),
            WorkerEventKind::Idle {
                snapshot,
                retire,
                latency,
            } => {
                self.totals.completed += 1;
                if self.latencies.len() == LATENCY_WINDOW {
                    self.latencies.pop_front();
                }
                self.latencies.push_back(latency);
                let Some(entry) = self.workers.get_mut(&id) else {
                    return;
                };
                entry.snapshot = snapshot;
                entry.snapshot.busy = false;
                match retire {
                    Some(reason) => {
                        self.retire(&id, &reason);
                        self.ensure_workers(ctx);
                    }
                    None => self.sched.worker_idle(&id),
                }
                self.dispatch();
                self.maybe_finish_shutdown(ctx);
            }
            WorkerEventKind::Unhealthy { reason } => {
                if let Some(entry) = self.workers.get_mut(&id) {
                    entry.snapshot.health = Health::Unhealthy;
                }
                self.retire(&id, &reason);
                self.ensure_workers(ctx);
            }
            WorkerEventKind::Exited {
                reason,
                expected,
                orphan,
            } => self.on_exited(&id, reason, expected, orphan, ctx),
        }
    }

    fn wake_ready_waiters(&mut self) {
        let ready = self.ready_count();
        let (now, later): (Vec<_>, Vec<_>) = self
            .ready_waiters
            .drain(..)
            .partition(|(min, _)| ready >= *min);
        self.ready_waiters = later;
        for (_, waiter) in now {
            let _ = waiter.send(Ok(()));
        }
    }

    fn maybe_finish_shutdown(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = &self.shutdown else { return };
        if state.stopping {
            return;
        }
        let busy = self.workers.values().any(|e| e.snapshot.busy);
        if !busy && self.sched.queue_len() == 0 {
            self.finish_shutdown(false, ctx);
        }
    }

    /// Stop every worker; `forced` when the graceful window is over.
    fn finish_shutdown(&mut self, forced: bool, ctx: &mut Context<Self>) {
        let Some(state) = &mut self.shutdown else {
            return;
        };
        if state.stopping {
            return;
        }
        state.stopping = true;
        for queued in self.sched.drain_queue() {
            queued.job.answer(Err(ActorError::ShuttingDown));
        }
        let graceful = if forced {
            Duration::ZERO
        } else {
            self.settings.graceful_timeout
        };
        let mut done = Vec::new();
        for entry in self.workers.values() {
            let (tx, rx) = oneshot::channel();
            entry.addr.do_send(Stop {
                graceful,
                kill: self.settings.kill_timeout,
                done: Some(tx),
            });
            done.push(rx);
        }
        log::info!("pool {}: stopping {} workers", self.name, done.len());
        let all = futures::future::join_all(done);
        ctx.spawn(all.into_actor(self).map(|_, act, ctx| {
            if let Some(state) = &mut act.shutdown {
                for waiter in state.waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
            act.workers.clear();
            ctx.stop();
        }));
    }

    fn take_handover(&mut self) -> PoolHandover {
        PoolHandover {
            workers: std::mem::take(&mut self.workers).into_iter().collect(),
            queue: self
                .sched
                .drain_queue()
                .into_iter()
                .map(|q| (q.session, q.job, q.deadline))
                .collect(),
            affinity: self.sched.affinity_map().clone(),
            next_worker: self.next_worker,
            ever_ready: self.ever_ready,
            totals: std::mem::take(&mut self.totals),
            latencies: std::mem::take(&mut self.latencies),
            ready_waiters: std::mem::take(&mut self.ready_waiters),
        }
    }

    fn adopt(&mut self, handover: PoolHandover, ctx: &mut Context<Self>) {
        log::info!(
            "pool {}: taking over {} workers and {} queued requests",
            self.name,
            handover.workers.len(),
            handover.queue.len()
        );
        self.next_worker = handover.next_worker;
        self.ever_ready = handover.ever_ready;
        self.totals = handover.totals;
        self.latencies = handover.latencies;
        self.ready_waiters = handover.ready_waiters;
        self.sched.restore_affinity(handover.affinity);
        for (session, job, deadline) in handover.queue {
            self.sched.restore(session, job, deadline);
            self.arm_expiry(deadline, ctx);
        }
        let me = ctx.address().recipient::<WorkerEvent>();
        for (id, entry) in handover.workers {
            let request = entry.addr.send(Adopt { pool: me.clone() });
            let retiring = entry.retiring;
            self.workers.insert(id.clone(), entry);
            ctx.spawn(
                request
                    .into_actor(self)
                    .map(move |result, act, ctx| match result {
                        Ok(snapshot) => {
                            let Some(entry) = act.workers.get_mut(&id) else {
                                return;
                            };
                            let serving = snapshot.health.can_serve();
                            let busy = snapshot.busy;
                            entry.snapshot = snapshot;
                            if retiring {
                                return;
                            }
                            if serving {
                                act.sched.add_worker(&id, busy);
                                if !busy {
                                    act.dispatch();
                                }
                            } else if entry.snapshot.health != Health::Starting {
                                act.retire(&id, "unhealthy when adopted");
                                act.ensure_workers(ctx);
                            }
                        }
                        Err(_) => {
                            // It stopped while nobody was listening; its request (if any) was
                            // answered with a closed channel. Replace it.
                            act.workers.remove(&id);
                            act.sched.remove_worker(&id);
                            act.ensure_workers(ctx);
                        }
                    }),
            );
        }
    }
}

impl Actor for PoolManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(handover) = self.handover.take() {
            self.adopt(handover, ctx);
        }
        self.ensure_workers(ctx);
        if !self.config.health_check_interval.is_zero() {
            ctx.run_interval(self.config.health_check_interval, |act, _| {
                act.health_check()
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let finished =
            self.shutdown.as_ref().is_some_and(|s| s.stopping) && self.workers.is_empty();
        let handover = if finished {
            None
        } else {
            Some(self.take_handover())
        };
        if let Some(supervisor) = &self.supervisor {
            supervisor.do_send(PoolStopped { handover });
        } else if let Some(handover) = handover {
            // No one to hand over to: make sure no process outlives us.
            for (_, entry) in handover.workers {
                entry.addr.do_send(Stop {
                    graceful: Duration::ZERO,
                    kill: self.settings.kill_timeout,
                    done: None,
                });
            }
        }
    }
}

impl PoolManager {
    fn health_check(&mut self) {
        for (id, entry) in &self.workers {
            if !entry.retiring && self.sched.is_idle(id) {
                entry.addr.do_send(HealthCheck);
            }
        }
    }

    fn status(&self) -> PoolStatus {
        let mut workers: Vec<WorkerSnapshot> = self
            .workers
            .values()
            .map(|e| {
                let mut s = e.snapshot.clone();
                s.uptime_ms = e.started.elapsed().as_millis() as u64;
                s.rss_bytes = s.pid.and_then(process::rss_bytes);
                if e.retiring && s.health.can_serve() {
                    s.health = Health::Stopping;
                }
                s
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut samples: Vec<Duration> = self.latencies.iter().copied().collect();
        samples.sort();
        let pct = |p: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples[i].as_secs_f64() * 1000.0
        };
        PoolStatus {
            size: self.config.size,
            ready: self.ready_count(),
            busy: self.workers.values().filter(|e| e.snapshot.busy).count(),
            starting: self.starting_count(),
            queue_depth: self.sched.queue_len(),
            shutting_down: self.shutdown.is_some(),
            workers,
            totals: self.totals.clone(),
            latency: LatencySummary {
                samples: samples.len(),
                p50_ms: pct(0.5),
                p90_ms: pct(0.9),
                p99_ms: pct(0.99),
                max_ms: samples
                    .last()
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(0.0),
            },
            last_start_error: if self.ready_count() == 0 {
                self.last_start_error.as_ref().map(ToString::to_string)
            } else {
                None
            },
        }
    }
}

impl Handler<WorkerEvent> for PoolManager {
    type Result = ();

    fn handle(&mut self, event: WorkerEvent, ctx: &mut Self::Context) {
        self.on_event(event, ctx);
    }
}

impl Handler<Submit> for PoolManager {
    type Result = ();

    fn handle(&mut self, Submit(job): Submit, ctx: &mut Self::Context) {
        if self.shutdown.is_some() {
            job.answer(Err(ActorError::ShuttingDown));
            return;
        }
        self.totals.submitted += 1;
        let deadline = Instant::now() + self.config.checkout_timeout;
        match self.sched.submit(job.session_id.clone(), job, deadline) {
            Submitted::Run { worker, job } => self.run(worker, job),
            Submitted::Queued { .. } => self.arm_expiry(deadline, ctx),
            Submitted::Busy { job, queued } => {
                self.totals.rejected_busy += 1;
                job.answer(Err(ActorError::PoolBusy { queued }));
            }
        }
    }
}

impl Handler<WaitReady> for PoolManager {
    type Result = ();

    fn handle(&mut self, msg: WaitReady, _ctx: &mut Self::Context) {
        if self.shutdown.is_some() {
            let _ = msg.reply.send(Err(ActorError::ShuttingDown));
        } else {
            self.ready_waiters
                .push((msg.min_ready.min(self.config.size), msg.reply));
            self.wake_ready_waiters();
        }
    }
}

impl Handler<GetPoolStatus> for PoolManager {
    type Result = MessageResult<GetPoolStatus>;

    fn handle(&mut self, _: GetPoolStatus, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<ForgetSessions> for PoolManager {
    type Result = ();

    fn handle(&mut self, ForgetSessions(ids): ForgetSessions, _ctx: &mut Self::Context) {
        for id in ids {
            self.sched.forget_session(&id);
            for entry in self.workers.values() {
                entry.addr.do_send(ForgetSession {
                    session_id: id.clone(),
                });
            }
        }
    }
}

impl Handler<RunHealthCheck> for PoolManager {
    type Result = ();

    fn handle(&mut self, _: RunHealthCheck, _ctx: &mut Self::Context) {
        self.health_check();
    }
}

impl Handler<ShutdownPool> for PoolManager {
    type Result = ();

    fn handle(&mut self, msg: ShutdownPool, ctx: &mut Self::Context) {
        match &mut self.shutdown {
            Some(state) => state.waiters.push(msg.done),
            None => {
                log::info!(
                    "pool {}: shutting down (graceful window {:?})",
                    self.name,
                    msg.graceful
                );
                self.shutdown = Some(ShutdownState {
                    waiters: vec![msg.done],
                    stopping: false,
                });
                for (_, waiter) in self.ready_waiters.drain(..) {
                    let _ = waiter.send(Err(ActorError::ShuttingDown));
                }
                ctx.run_later(msg.graceful, |act, ctx| act.finish_shutdown(true, ctx));
                self.maybe_finish_shutdown(ctx);
            }
        }
    }
}

impl Handler<Crash> for PoolManager {
    type Result = ();

    fn handle(&mut self, _: Crash, _ctx: &mut Self::Context) {
        panic!("fault injected into PoolManager {}", self.name);
    }
}
