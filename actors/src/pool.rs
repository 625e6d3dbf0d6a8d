//! The PoolManager actor: keeps `pool.size` workers alive, places requests on free worker
//! slots (FIFO queue, affinity, deadlines, pool-wide rate control), drains and replaces
//! workers that are stuck, unhealthy or due for recycling, retries every request a dead
//! worker held, pings workers, and drains everything on shutdown.
//!
//! It never waits on Python: `Submit` hands the request to a Worker, which answers the
//! caller directly and tells the pool when the slot is free again. The decisions live in
//! plain data ([`scheduler`], [`rate`], [`startup`]); this actor wires them to messages and
//! timers.

pub(crate) mod rate;
mod scheduler;
mod startup;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::{ActorsConfig, PoolConfig, RateConfig};
use crate::error::{ActorError, Classifier, TimeoutStage};
use crate::launcher::WorkerLauncher;
use crate::worker::{
    Adopt, Dispatch, Exit, ForgetSession, Health, HealthCheck, Job, Outcome, Release, RetireRule,
    Snapshot, Stop, Worker, WorkerEvent, WorkerEventKind, WorkerSettings, WorkerSnapshot,
    WorkerStats,
};
use rate::RateLimiter;
pub use rate::RateStatus;
use scheduler::{Freed, Placed, Queued, Scheduler};
use startup::Startup;

/// Run a request on some worker; the answer arrives on `job.reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Submit(pub Job);

/// Resolve once at least `min_ready` workers are ready, or fail when the pool cannot start
/// any worker (see [`startup`]) or shuts down.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WaitReady {
    pub min_ready: usize,
    pub reply: oneshot::Sender<Result<(), ActorError>>,
}

type ReadyWaiter = (usize, oneshot::Sender<Result<(), ActorError>>);

/// Current pool state and metrics.
#[derive(Message)]
#[rtype(result = "PoolStatus")]
pub(crate) struct GetPoolStatus;

/// Sessions ended: forget their affinity and let workers drop their cached programs.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ForgetSessions(pub Vec<String>);

/// Ping every worker now (also runs every `pool.health_check_interval`); one that does not
/// answer is replaced.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RunHealthCheck;

/// Graceful shutdown: refuse new work, let running and queued requests finish until
/// `graceful` has passed, then stop every worker by the ladder. `done` fires when no
/// worker process remains.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ShutdownPool {
    pub graceful: Duration,
    pub done: oneshot::Sender<()>,
}

/// Fault injection for supervision tests: the handler panics.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Crash;

/// Sent to the supervisor from `stopped()`. `handover` is `None` after a requested
/// shutdown; otherwise it carries everything a successor needs to continue.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PoolStopped {
    pub handover: Option<PoolHandover>,
}

/// A stopped PoolManager's state, moved to its successor (never shared).
pub(crate) struct PoolHandover {
    workers: Vec<(String, Entry)>,
    queue: Vec<Queued<Job>>,
    affinity: HashMap<String, String>,
    rate: RateLimiter,
    next_worker: u64,
    ever_ready: bool,
    totals: PoolTotals,
    latencies: VecDeque<Duration>,
    ready_waiters: Vec<ReadyWaiter>,
}

impl PoolHandover {
    /// Nobody will take these workers over: answer queued requests with `error` and stop
    /// every worker process.
    pub(crate) fn abandon(self, error: ActorError, kill: Duration) {
        for q in self.queue {
            q.job.answer(Err(error.clone()));
        }
        for (_, entry) in self.workers {
            entry.addr.do_send(Stop {
                graceful: Duration::ZERO,
                kill,
                done: None,
            });
        }
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
    /// Requests refused for rate ("429") by the far end, retries included.
    pub throttled: u64,
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

/// What the pool reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolStatus {
    pub size: usize,
    /// Request slots of the workers that take work (`worker_concurrency` each).
    pub capacity: usize,
    /// Requests in flight on all workers.
    pub in_flight: usize,
    pub ready: usize,
    /// Workers with at least one request in flight.
    pub busy: usize,
    pub starting: usize,
    pub queue_depth: usize,
    pub shutting_down: bool,
    pub workers: Vec<WorkerSnapshot>,
    pub totals: PoolTotals,
    pub latency: LatencySummary,
    /// The pool-wide control of limited requests.
    pub rate: RateStatus,
    /// Why workers failed to start, while the latest attempt failed.
    pub last_start_error: Option<String>,
}

const LATENCY_WINDOW: usize = 4096;
/// Rate refusals after which a request gives up however they were counted: a far end
/// that refuses forever must not keep a request alive forever.
const MAX_THROTTLES: u32 = 100;
/// How long the pool waits for workers' snapshots when asked for status.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

struct Entry {
    addr: Addr<Worker>,
    started: Instant,
    pid: Option<u32>,
    health: Health,
    /// Why it takes no new work, once it is being drained for replacement.
    retiring: Option<String>,
    /// Requests whose caller timed out but the process still holds.
    stuck: usize,
    stop_sent: bool,
}

struct ShutdownState {
    waiters: Vec<oneshot::Sender<()>>,
    stopping: bool,
}

/// See the module docs.
pub(crate) struct PoolManager {
    name: String,
    config: PoolConfig,
    rate_config: RateConfig,
    settings: Arc<WorkerSettings>,
    graceful_timeout: Duration,
    launcher: Arc<dyn WorkerLauncher>,
    classifier: Classifier,
    workers: BTreeMap<String, Entry>,
    sched: Scheduler<Job>,
    next_worker: u64,
    startup: Startup,
    start_retry_armed: bool,
    ready_waiters: Vec<ReadyWaiter>,
    totals: PoolTotals,
    latencies: VecDeque<Duration>,
    shutdown: Option<ShutdownState>,
    supervisor: Option<Recipient<PoolStopped>>,
    handover: Option<PoolHandover>,
    /// The one timer that wakes the pool for queued requests (deadlines, back-off, rate),
    /// and when it fires.
    timer: Option<(Instant, SpawnHandle)>,
}

impl PoolManager {
    /// A pool named `name` (a prefix for worker ids and logs; never registered anywhere).
    /// `handover` continues a predecessor's work.
    pub fn new(
        name: String,
        config: &ActorsConfig,
        launcher: Arc<dyn WorkerLauncher>,
        classifier: Classifier,
        supervisor: Option<Recipient<PoolStopped>>,
        handover: Option<PoolHandover>,
    ) -> Self {
        let pool = config.pool.clone();
        let interval = pool.health_check_interval;
        let health_timeout = if interval.is_zero() {
            Duration::from_secs(10)
        } else {
            interval.clamp(Duration::from_secs(2), Duration::from_secs(10))
        };
        let settings = WorkerSettings {
            capacity: pool.worker_concurrency.max(1),
            startup_timeout: pool.startup_timeout,
            health_timeout: health_timeout.min(pool.request_timeout),
            ping_when_busy: config.worker.ping_when_busy,
            max_frame_bytes: config.worker.max_frame_bytes,
            keep_log_lines: config.worker.keep_log_lines,
            degrade_after: pool.degrade_after,
            remove_after: pool.remove_after,
            retire: RetireRule {
                max_requests: pool.max_requests,
                max_lifetime: pool.max_lifetime,
            },
            kill_timeout: config.shutdown.kill_timeout,
        };
        let max_limited = match config.rate.max_in_flight {
            0 => pool.capacity(),
            n => n,
        };
        let rate = RateLimiter::new(max_limited, config.rate.requests_per_minute, Instant::now());
        PoolManager {
            name,
            sched: Scheduler::new(pool.affinity, pool.max_queue, rate),
            config: pool,
            rate_config: config.rate.clone(),
            settings: Arc::new(settings),
            graceful_timeout: config.shutdown.graceful_timeout,
            launcher,
            classifier,
            workers: BTreeMap::new(),
            next_worker: 0,
            startup: Startup::default(),
            start_retry_armed: false,
            ready_waiters: Vec::new(),
            totals: PoolTotals::default(),
            latencies: VecDeque::new(),
            shutdown: None,
            supervisor,
            handover,
            timer: None,
        }
    }

    fn serving(&self) -> impl Iterator<Item = &Entry> {
        self.workers.values().filter(|e| e.retiring.is_none())
    }

    fn ready_count(&self) -> usize {
        self.serving().filter(|e| e.health.can_serve()).count()
    }

    fn starting_count(&self) -> usize {
        self.serving()
            .filter(|e| e.health == Health::Starting)
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
            Arc::clone(&self.settings),
            Arc::clone(&self.launcher),
            Arc::clone(&self.classifier),
            ctx.address().recipient(),
        );
        self.totals.started += 1;
        log::debug!("pool {}: starting worker {id}", self.name);
        let addr = worker.start();
        self.workers.insert(
            id,
            Entry {
                addr,
                started: Instant::now(),
                pid: None,
                health: Health::Starting,
                retiring: None,
                stuck: 0,
                stop_sent: false,
            },
        );
    }

    fn run(&mut self, placed: Placed<Job>) {
        let Placed {
            worker,
            mut job,
            ticket,
        } = placed;
        job.ticket = ticket;
        match self.workers.get(&worker) {
            Some(entry) => entry.addr.do_send(Dispatch(job)),
            None => {
                // The scheduler and the worker table disagree; never lose the request.
                log::error!(
                    "pool {}: scheduler chose unknown worker {worker}",
                    self.name
                );
                self.sched
                    .freed(&worker, job.limited, Freed::Other, Instant::now());
                self.requeue(job, None);
            }
        }
    }

    /// Place what can run, then make sure the pool wakes up for what cannot yet.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        for placed in self.sched.dispatch(Instant::now()) {
            self.run(placed);
        }
        self.arm_timer(ctx);
    }

    /// One timer serves the whole queue, armed for the earliest moment something queued
    /// can change (a deadline, the end of a back-off, the rate limit reopening): a timer
    /// per request would pile up thousands of spawned items at high request rates.
    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let Some(at) = self.sched.next_wake(now) else {
            return;
        };
        if let Some((armed, handle)) = self.timer {
            if armed <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
            act.timer = None;
            for queued in act.sched.expire_due(Instant::now()) {
                act.expire(queued.job);
            }
            act.dispatch(ctx);
            act.maybe_finish_shutdown(ctx);
        });
        self.timer = Some((at, handle));
    }

    fn expire(&mut self, job: Job) {
        self.totals.checkout_timeouts += 1;
        let hint = match (self.startup.last_error(), self.ready_count()) {
            (Some(e), 0) => format!("no worker is ready; the last start failed: {e}"),
            (_, ready) => format!(
                "no slot became free ({ready} workers ready, {} requests queued); raise pool.size, pool.worker_concurrency or pool.checkout_timeout",
                self.sched.queue_len()
            ),
        };
        job.answer(Err(ActorError::timeout(
            TimeoutStage::Checkout,
            self.config.checkout_timeout,
            hint,
        )));
    }

    /// Queue a request again at the front: interactive ones get a fresh checkout deadline,
    /// batch ones wait as long as it takes.
    fn requeue(&mut self, job: Job, not_before: Option<Instant>) {
        let deadline = (!job.batch).then(|| Instant::now() + self.config.checkout_timeout);
        self.sched.requeue_front(Queued {
            session: job.session_id.clone(),
            deadline,
            not_before,
            limited: job.limited,
            job,
        });
    }

    /// Take a worker out of service: it gets no new work, a replacement starts, and it is
    /// stopped once its live requests are done or `shutdown.graceful_timeout` has passed.
    fn retire(&mut self, id: &str, reason: String, ctx: &mut Context<Self>) {
        let Some(entry) = self.workers.get_mut(id) else {
            return;
        };
        if entry.retiring.is_some() {
            return;
        }
        log::info!("pool {}: replacing worker {id}: {reason}", self.name);
        entry.retiring = Some(reason);
        self.totals.replaced += 1;
        self.sched.drain(id);
        let worker = id.to_owned();
        ctx.run_later(self.graceful_timeout, move |act, _| {
            if act.workers.get(&worker).is_some_and(|e| !e.stop_sent) {
                act.stop_worker(&worker, Duration::ZERO);
            }
        });
        self.maybe_stop_drained(id);
        self.ensure_workers(ctx);
    }

    /// A retiring worker whose requests are all answered or stuck is stopped.
    fn maybe_stop_drained(&mut self, id: &str) {
        let Some(entry) = self.workers.get(id) else {
            return;
        };
        if entry.retiring.is_none() || entry.stop_sent {
            return;
        }
        let in_flight = self.sched.load(id).map_or(0, |l| l.in_flight);
        if in_flight <= entry.stuck {
            // Stuck requests will not finish: no point waiting for them.
            let graceful = if entry.stuck > 0 {
                Duration::ZERO
            } else {
                self.graceful_timeout
            };
            self.stop_worker(id, graceful);
        }
    }

    fn stop_worker(&mut self, id: &str, graceful: Duration) {
        if let Some(entry) = self.workers.get_mut(id) {
            entry.stop_sent = true;
            entry.health = Health::Stopping;
            entry.addr.do_send(Stop {
                graceful,
                kill: self.settings.kill_timeout,
                done: None,
            });
        }
    }

    fn on_start_failed(&mut self, id: &str, error: ActorError, ctx: &mut Context<Self>) {
        if let Some(entry) = self.workers.remove(id) {
            entry.addr.do_send(Release);
        }
        self.sched.remove_worker(id);
        self.totals.start_failures += 1;
        log::warn!("pool {}: worker {id} failed to start: {error}", self.name);
        let backoff = self.startup.failed(error.clone());
        if self
            .startup
            .hopeless(self.config.size, self.ready_count(), self.starting_count())
        {
            for (_, waiter) in self.ready_waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
        }
        if self.shutdown.is_some() {
            self.maybe_finish_shutdown(ctx);
            return;
        }
        self.start_retry_armed = true;
        ctx.run_later(backoff, |act, ctx| {
            act.start_retry_armed = false;
            act.ensure_workers(ctx);
        });
    }

    /// A request the dead worker held, unanswered: retry it, or tell its caller why not.
    fn orphan(
        &mut self,
        mut job: Job,
        id: &str,
        reason: &str,
        last_output: &str,
        out_of_memory: bool,
    ) {
        if self.shutdown.is_some() {
            job.answer(Err(ActorError::ShuttingDown));
        } else if !out_of_memory && job.attempt < self.config.retry_on_crash {
            job.attempt += 1;
            self.totals.retried += 1;
            log::info!(
                "pool {}: retrying `{}` (attempt {}) after worker {id} ended",
                self.name,
                job.command,
                job.attempt + 1
            );
            self.requeue(job, None);
        } else {
            job.answer(Err(ActorError::WorkerCrashed {
                worker_id: id.to_owned(),
                reason: reason.to_owned(),
                last_output: last_output.to_owned(),
                out_of_memory,
            }));
        }
    }

    fn on_exited(&mut self, id: &str, exit: Exit, ctx: &mut Context<Self>) {
        let retiring = match self.workers.remove(id) {
            Some(entry) => {
                entry.addr.do_send(Release);
                entry.retiring.is_some()
            }
            None => true,
        };
        self.sched.remove_worker(id);
        if !exit.expected && !retiring {
            self.totals.crashed += 1;
            log::warn!("pool {}: worker {id} died: {}", self.name, exit.reason);
        }
        for job in exit.orphans {
            self.orphan(job, id, &exit.reason, &exit.last_output, exit.out_of_memory);
        }
        self.ensure_workers(ctx);
        self.dispatch(ctx);
        self.maybe_finish_shutdown(ctx);
    }

    fn on_throttled(
        &mut self,
        id: &str,
        mut job: Job,
        error: ActorError,
        retry_after: Option<Duration>,
        retire: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let now = Instant::now();
        let ticket = job.ticket.take();
        self.sched
            .freed(id, job.limited, Freed::Throttled { retry_after }, now);
        self.totals.throttled += 1;
        job.throttles += 1;
        // A refusal while the pool was still probing above what the far end allows is the
        // pool's doing; only one at the lowest concurrency counts against the request.
        if ticket.map_or(true, |t| t.at_floor) {
            job.counted_throttles += 1;
        }
        if self.shutdown.is_some()
            || job.counted_throttles > self.rate_config.num_retries
            || job.throttles >= MAX_THROTTLES
        {
            job.answer(Err(error));
        } else {
            let doublings = job.throttles.saturating_sub(1).min(6);
            let backoff = retry_after
                .unwrap_or(Duration::from_millis(500) * 2u32.pow(doublings))
                .min(Duration::from_secs(60));
            log::debug!(
                "pool {}: `{}` refused for rate ({} so far); retrying in {backoff:?}",
                self.name,
                job.command,
                job.throttles
            );
            self.requeue(job, Some(now + backoff));
        }
        if let Some(reason) = retire {
            self.retire(id, reason, ctx);
        }
        self.maybe_stop_drained(id);
        self.dispatch(ctx);
    }

    fn on_event(&mut self, event: WorkerEvent, ctx: &mut Context<Self>) {
        let id = event.worker_id;
        match event.kind {
            WorkerEventKind::Ready { pid } => {
                let Some(entry) = self.workers.get_mut(&id) else {
                    return;
                };
                entry.health = Health::Ready;
                entry.pid = pid;
                let retiring = entry.retiring.is_some();
                self.startup.ready();
                if !retiring {
                    self.sched.add_worker(&id, self.settings.capacity, 0, 0);
                }
                self.wake_ready_waiters();
                self.dispatch(ctx);
                self.ensure_workers(ctx);
            }
            WorkerEventKind::StartFailed { error } => self.on_start_failed(&id, error, ctx),
            WorkerEventKind::Freed {
                outcome,
                limited,
                latency,
                retire,
            } => {
                let how = if outcome == Outcome::Ok {
                    Freed::Ok
                } else {
                    Freed::Other
                };
                self.sched.freed(&id, limited, how, Instant::now());
                if outcome == Outcome::Late {
                    if let Some(entry) = self.workers.get_mut(&id) {
                        entry.stuck = entry.stuck.saturating_sub(1);
                    }
                } else {
                    self.totals.completed += 1;
                    if self.latencies.len() == LATENCY_WINDOW {
                        self.latencies.pop_front();
                    }
                    self.latencies.push_back(latency);
                }
                if let Some(reason) = retire {
                    self.retire(&id, reason, ctx);
                }
                self.maybe_stop_drained(&id);
                self.dispatch(ctx);
                self.maybe_finish_shutdown(ctx);
            }
            WorkerEventKind::Throttled {
                job,
                error,
                retry_after,
                retire,
            } => self.on_throttled(&id, job, error, retry_after, retire, ctx),
            WorkerEventKind::TimedOut { stuck, drain } => {
                if let Some(entry) = self.workers.get_mut(&id) {
                    entry.stuck = stuck;
                }
                if let Some(reason) = drain {
                    self.retire(&id, reason, ctx);
                }
                self.maybe_finish_shutdown(ctx);
            }
            WorkerEventKind::Unhealthy { reason } => {
                // It does not answer: what it holds is lost unless retried elsewhere.
                self.retire(&id, reason, ctx);
                if self.workers.get(&id).is_some_and(|e| !e.stop_sent) {
                    self.stop_worker(&id, Duration::ZERO);
                }
                if let Some(entry) = self.workers.get_mut(&id) {
                    entry.health = Health::Unhealthy;
                }
            }
            WorkerEventKind::Returned { job } => {
                self.sched
                    .freed(&id, job.limited, Freed::Other, Instant::now());
                self.requeue(job, None);
                self.dispatch(ctx);
            }
            WorkerEventKind::Exited(exit) => self.on_exited(&id, exit, ctx),
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

    /// Requests still expected to finish: in flight and not stuck, or queued.
    fn live_work(&self) -> usize {
        let stuck: usize = self.workers.values().map(|e| e.stuck).sum();
        self.sched.in_flight().saturating_sub(stuck) + self.sched.queue_len()
    }

    fn maybe_finish_shutdown(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = &self.shutdown else { return };
        if !state.stopping && self.live_work() == 0 {
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
            self.graceful_timeout
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
            for (_, entry) in std::mem::take(&mut act.workers) {
                entry.addr.do_send(Release);
            }
            ctx.stop();
        }));
    }

    fn take_handover(&mut self) -> PoolHandover {
        let (affinity, rate) = self.sched.hand_over();
        PoolHandover {
            workers: std::mem::take(&mut self.workers).into_iter().collect(),
            queue: self.sched.drain_queue(),
            affinity,
            rate,
            next_worker: self.next_worker,
            ever_ready: self.startup.ever_ready(),
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
        self.startup = Startup::ever_ready_flag(handover.ever_ready);
        self.totals = handover.totals;
        self.latencies = handover.latencies;
        self.ready_waiters = handover.ready_waiters;
        self.sched.take_over(handover.affinity, handover.rate);
        for queued in handover.queue {
            self.sched.restore(queued);
        }
        let me = ctx.address().recipient::<WorkerEvent>();
        for (id, entry) in handover.workers {
            let request = entry.addr.send(Adopt { pool: me.clone() });
            self.workers.insert(id.clone(), entry);
            ctx.spawn(
                request
                    .into_actor(self)
                    .map(move |result, act, ctx| act.adopted(&id, result.ok(), ctx)),
            );
        }
        self.arm_timer(ctx);
    }

    fn adopted(&mut self, id: &str, snapshot: Option<WorkerSnapshot>, ctx: &mut Context<Self>) {
        let Some(entry) = self.workers.get_mut(id) else {
            return;
        };
        let Some(snapshot) = snapshot else {
            // It stopped while nobody was listening. Replace it.
            self.workers.remove(id);
            self.sched.remove_worker(id);
            self.ensure_workers(ctx);
            return;
        };
        entry.health = snapshot.health;
        entry.stuck = snapshot.stuck;
        if snapshot.health.can_serve() {
            self.sched.add_worker(
                id,
                snapshot.capacity,
                snapshot.in_flight,
                snapshot.limited_in_flight,
            );
            if entry.retiring.is_some() {
                self.sched.drain(id);
                self.maybe_stop_drained(id);
            }
            self.dispatch(ctx);
        } else if snapshot.health == Health::Stopped {
            // Gone before the handover; its exit event went to the predecessor.
            if let Some(entry) = self.workers.remove(id) {
                entry.addr.do_send(Release);
            }
            self.ensure_workers(ctx);
        } else if snapshot.health != Health::Starting && entry.retiring.is_none() {
            self.retire(id, "unhealthy when adopted".to_owned(), ctx);
        }
    }

    fn health_check(&mut self) {
        for entry in self.workers.values() {
            if entry.retiring.is_none() && entry.health.can_serve() {
                entry.addr.do_send(HealthCheck);
            }
        }
    }

    fn status(&self, snapshots: Vec<Option<WorkerSnapshot>>) -> PoolStatus {
        let workers: Vec<WorkerSnapshot> = self
            .workers
            .iter()
            .zip(snapshots)
            .map(|((id, entry), snapshot)| {
                let mut s = snapshot.unwrap_or_else(|| WorkerSnapshot {
                    id: id.clone(),
                    pid: entry.pid,
                    health: entry.health,
                    busy: false,
                    in_flight: 0,
                    limited_in_flight: 0,
                    capacity: self.settings.capacity,
                    stuck: entry.stuck,
                    draining: false,
                    session: None,
                    stats: WorkerStats::default(),
                    uptime_ms: 0,
                    rss_bytes: None,
                });
                s.uptime_ms =
                    u64::try_from(entry.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                s.draining = entry.retiring.is_some();
                if s.draining && s.health.can_serve() {
                    s.health = Health::Stopping;
                }
                s
            })
            .collect();
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
            capacity: self.sched.capacity(),
            in_flight: self.sched.in_flight(),
            ready: self.ready_count(),
            busy: workers.iter().filter(|w| w.busy).count(),
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
            rate: self.sched.rate_status(Instant::now()),
            last_start_error: if self.ready_count() < self.config.size {
                self.startup.last_error().map(ToString::to_string)
            } else {
                None
            },
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
        match (&self.supervisor, handover) {
            (Some(supervisor), handover) => supervisor.do_send(PoolStopped { handover }),
            // No one to hand over to: make sure no process outlives us.
            (None, Some(handover)) => {
                handover.abandon(ActorError::ShuttingDown, self.settings.kill_timeout)
            }
            (None, None) => {}
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
        let now = Instant::now();
        let session = job.session_id.clone();
        let limited = job.limited;
        let queued = if job.batch {
            Queued::batch(session, job, limited)
        } else {
            Queued::interactive(session, job, now + self.config.checkout_timeout, limited)
        };
        match self.sched.submit(queued, now) {
            Ok(()) => self.dispatch(ctx),
            Err((job, queued)) => {
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
    type Result = ResponseActFuture<Self, PoolStatus>;

    fn handle(&mut self, _: GetPoolStatus, _ctx: &mut Self::Context) -> Self::Result {
        let asks: Vec<_> = self
            .workers
            .values()
            .map(|entry| {
                let ask = entry.addr.send(Snapshot);
                async move {
                    match tokio::time::timeout(SNAPSHOT_WAIT, ask).await {
                        Ok(Ok(snapshot)) => Some(snapshot),
                        _ => None,
                    }
                }
            })
            .collect();
        let workers: Vec<String> = self.workers.keys().cloned().collect();
        Box::pin(
            futures::future::join_all(asks)
                .into_actor(self)
                .map(move |snapshots, act, _| {
                    // Workers may have come or gone while we asked: match answers by id.
                    let by_id: HashMap<String, WorkerSnapshot> = workers
                        .into_iter()
                        .zip(snapshots)
                        .filter_map(|(id, s)| s.map(|s| (id, s)))
                        .collect();
                    let snapshots = act
                        .workers
                        .keys()
                        .map(|id| by_id.get(id).cloned())
                        .collect();
                    act.status(snapshots)
                }),
        )
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
