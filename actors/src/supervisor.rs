//! The Supervisor actor: starts the SessionRegistry and the PoolManager, restarts them when
//! they stop or panic (OTP-style intensity: at most `supervisor.max_restarts` within
//! `supervisor.max_window`), and is the single entry point of the system handle.
//!
//! It is our own rather than `actix::Supervisor`, which neither restarts after a panic nor
//! carries state over. Children tell it they stopped from their `stopped()` hook, which actix
//! runs even while a panic unwinds, and hand their state over in that message: the
//! registry's sessions and the pool's workers and queue move to the successor, never shared.

mod intensity;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::config::ActorsConfig;
use crate::error::{ActorError, Classifier, ErrorClassifier};
use crate::launcher::WorkerLauncher;
pub use crate::pool::RunHealthCheck;
use crate::pool::{
    Crash, ForgetSessions, GetPoolStatus, PoolHandover, PoolManager, PoolStatus, PoolStopped,
    ShutdownPool, Submit, WaitReady,
};
use crate::session::{
    self, RegistryStopped, SessionMetrics, SessionRegistry, SessionTable, SessionsEnded,
};
use crate::worker::{Job, Rescue};
use intensity::RestartIntensity;

/// The reply channel of one request.
pub type Reply = oneshot::Sender<Result<Value, ActorError>>;

/// Where the events a worker reports while a request runs (progress, for instance) go.
pub type EventSender = mpsc::UnboundedSender<Value>;

/// System health (DESIGN.md "One status vocabulary").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemHealth {
    /// No worker has become ready yet.
    Starting,
    /// `pool.size` workers ready.
    Healthy,
    /// Serving, but with fewer ready workers than `pool.size`.
    Degraded,
    /// The supervisor gave up restarting its children.
    Failed,
    /// Shut down (or shutting down).
    Stopped,
}

impl SystemHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemHealth::Starting => "starting",
            SystemHealth::Healthy => "healthy",
            SystemHealth::Degraded => "degraded",
            SystemHealth::Failed => "failed",
            SystemHealth::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for SystemHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything `GetStatus` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SystemStatus {
    pub name: String,
    pub health: SystemHealth,
    /// Why the system failed, when it did.
    pub failure: Option<String>,
    pub restarts: RestartCounts,
    pub pool: Option<PoolStatus>,
    pub sessions: Option<SessionMetrics>,
}

/// How many times each child was restarted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RestartCounts {
    pub pool: u32,
    pub registry: u32,
}

/// How long a worker may take to answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestTimeout {
    /// `pool.request_timeout`.
    #[default]
    Default,
    /// This long.
    After(Duration),
    /// No limit (a long optimization, say).
    Never,
}

/// A request to run a command on some worker: what [`Execute`] carries besides its reply.
///
/// `session_id` keeps that session alive (touching it, without waiting for the registry)
/// and prefers the worker that served it last. An interactive request (the default) waits
/// in the pool's queue at most `pool.checkout_timeout` and is refused when `pool.max_queue`
/// requests already wait; a `batch` request waits for capacity as long as it takes (its
/// caller bounds how many it sends). A `limited` request counts against the pool-wide rate
/// control (`lm.max_in_flight`, refusals for rate, `lm.requests_per_minute`).
///
/// # Examples
///
/// ```
/// use dspex_actors::{Call, RequestTimeout};
/// use std::time::Duration;
/// let call = Call::new("execute_program", serde_json::json!({}))
///     .session("s1")
///     .batch()
///     .limited()
///     .timeout(Duration::from_secs(5));
/// assert!(call.batch && call.limited);
/// assert_eq!(call.timeout, RequestTimeout::After(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone)]
pub struct Call {
    pub command: String,
    pub args: Value,
    pub session_id: Option<String>,
    /// How long the worker may take; `pool.request_timeout` by default.
    pub timeout: RequestTimeout,
    /// Wait for capacity without `pool.checkout_timeout` or `pool.max_queue` (the caller
    /// bounds how many requests it has outstanding, as `dspex run` does).
    pub batch: bool,
    /// Counts against the pool-wide LM rate control (`lm.max_in_flight`, 429 back-off,
    /// `lm.requests_per_minute`).
    pub limited: bool,
    /// Receives the events the worker reports while the request runs (e.g. progress).
    pub events: Option<EventSender>,
}

impl Call {
    /// An interactive, unlimited request without a session.
    pub fn new(command: impl Into<String>, args: Value) -> Self {
        Call {
            command: command.into(),
            args,
            session_id: None,
            timeout: RequestTimeout::Default,
            batch: false,
            limited: false,
            events: None,
        }
    }

    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Overrides `pool.request_timeout` for this request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = RequestTimeout::After(timeout);
        self
    }

    /// No time limit for this request (an optimizer run, say).
    pub fn no_timeout(mut self) -> Self {
        self.timeout = RequestTimeout::Never;
        self
    }

    /// See [`Call::batch`](struct.Call.html#structfield.batch).
    pub fn batch(mut self) -> Self {
        self.batch = true;
        self
    }

    /// See [`Call::limited`](struct.Call.html#structfield.limited).
    pub fn limited(mut self) -> Self {
        self.limited = true;
        self
    }

    /// Send the worker's events for this request to `events`.
    pub fn events(mut self, events: EventSender) -> Self {
        self.events = Some(events);
        self
    }
}

/// Run `call` on some worker. The answer arrives on `reply`.
///
/// # Examples
///
/// ```
/// use dspex_actors::{Call, Execute};
/// let (reply, _answer) = tokio::sync::oneshot::channel();
/// let msg = Execute::new(Call::new("echo", serde_json::json!({"x": 1})).batch(), reply);
/// assert!(msg.call.batch);
/// ```
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub call: Call,
    pub reply: Reply,
}

impl Execute {
    pub fn new(call: Call, reply: Reply) -> Self {
        Execute { call, reply }
    }
}

/// Forward a SessionRegistry message (`Track`, `End`, `List`, ...) to the current registry.
pub struct ToRegistry<M>(pub M);

impl<M> Message for ToRegistry<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Result = Result<M::Result, ActorError>;
}

/// Status of the whole system.
#[derive(Message)]
#[rtype(result = "SystemStatus")]
pub struct GetStatus;

/// Resolves when `min_ready` workers are ready (or the initial workers failed to start).
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct AwaitReady {
    pub min_ready: usize,
}

/// Graceful shutdown of the whole tree; answers when no worker process remains.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownSystem {
    pub graceful: Duration,
}

/// Fault injection for supervision tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashTarget {
    Pool,
    Registry,
}

#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectCrash(pub CrashTarget);

#[derive(Debug, Clone, PartialEq)]
enum State {
    Running,
    Failed(String),
    ShuttingDown,
}

type Deferred<A> = Box<dyn FnOnce(&Addr<A>)>;

/// See the module docs.
pub struct Supervisor {
    config: ActorsConfig,
    name: String,
    launcher: Arc<dyn WorkerLauncher>,
    classifier: Classifier,
    pool: Option<Addr<PoolManager>>,
    registry: Option<Addr<SessionRegistry>>,
    intensity: RestartIntensity,
    counts: RestartCounts,
    state: State,
    // Messages that arrived while a child was between death and restart.
    pool_backlog: Vec<Deferred<PoolManager>>,
    registry_backlog: Vec<Deferred<SessionRegistry>>,
}

impl Supervisor {
    /// `name` prefixes worker ids and log lines; it must be unique per system only for
    /// readable logs, nothing is registered under it. `launcher` starts workers;
    /// `classifier` says what the errors they report mean (use
    /// [`WorkerFaults`](crate::WorkerFaults) when no error is special).
    pub fn new(
        name: String,
        config: ActorsConfig,
        launcher: Arc<dyn WorkerLauncher>,
        classifier: impl ErrorClassifier,
    ) -> Self {
        Supervisor {
            intensity: RestartIntensity::new(
                config.supervisor.max_restarts,
                config.supervisor.max_window,
            ),
            config,
            name,
            launcher,
            classifier: Arc::new(classifier),
            pool: None,
            registry: None,
            counts: RestartCounts::default(),
            state: State::Running,
            pool_backlog: Vec::new(),
            registry_backlog: Vec::new(),
        }
    }

    fn refuse(&self) -> Option<ActorError> {
        match &self.state {
            State::Running => None,
            State::Failed(why) => Some(ActorError::SystemFailed(why.clone())),
            State::ShuttingDown => Some(ActorError::ShuttingDown),
        }
    }

    fn start_pool(&mut self, handover: Option<PoolHandover>, ctx: &mut Context<Self>) {
        let pool = PoolManager::new(
            self.name.clone(),
            &self.config,
            Arc::clone(&self.launcher),
            Arc::clone(&self.classifier),
            Some(ctx.address().recipient()),
            handover,
        )
        .start();
        for deferred in self.pool_backlog.drain(..) {
            deferred(&pool);
        }
        self.pool = Some(pool);
    }

    fn start_registry(&mut self, table: SessionTable, ctx: &mut Context<Self>) {
        let me = ctx.address();
        let registry = SessionRegistry::new(
            self.config.session.clone(),
            table,
            me.clone().recipient(),
            me.recipient(),
        )
        .start();
        for deferred in self.registry_backlog.drain(..) {
            deferred(&registry);
        }
        self.registry = Some(registry);
    }

    /// Send to the pool now, or as soon as it is back.
    fn with_pool(&mut self, f: impl FnOnce(&Addr<PoolManager>) + 'static) {
        match &self.pool {
            Some(pool) if pool.connected() => f(pool),
            _ => self.pool_backlog.push(Box::new(f)),
        }
    }

    fn with_registry(&mut self, f: impl FnOnce(&Addr<SessionRegistry>) + 'static) {
        match &self.registry {
            Some(registry) if registry.connected() => f(registry),
            _ => self.registry_backlog.push(Box::new(f)),
        }
    }

    fn fail(&mut self, why: String) {
        log::error!("system {}: {why}; giving up", self.name);
        self.state = State::Failed(why);
        if let Some(pool) = self.pool.take() {
            let (done, _) = oneshot::channel();
            pool.do_send(ShutdownPool {
                graceful: Duration::ZERO,
                done,
            });
        }
        if let Some(registry) = self.registry.take() {
            registry.do_send(session::StopRegistry);
        }
        // Deferred messages hold reply channels; dropping them answers their callers
        // with a closed channel, which the handle reports as this failure.
        self.pool_backlog.clear();
        self.registry_backlog.clear();
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        log::info!("system {}: starting", self.name);
        self.start_registry(SessionTable::default(), ctx);
        self.start_pool(None, ctx);
    }
}

impl Handler<PoolStopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: PoolStopped, ctx: &mut Self::Context) {
        self.pool = None;
        let Some(handover) = msg.handover else { return };
        if self.state == State::Running && self.intensity.allow(Instant::now()) {
            self.counts.pool += 1;
            log::warn!(
                "system {}: PoolManager stopped unexpectedly; restarting it",
                self.name
            );
            self.start_pool(Some(handover), ctx);
            return;
        }
        if self.state == State::Running {
            self.fail(format!(
                "PoolManager stopped more than {} times within {:?} (supervisor.max_restarts)",
                self.config.supervisor.max_restarts, self.config.supervisor.max_window
            ));
        }
        // Nobody takes the workers over: stop them so no process outlives the pool.
        handover.abandon(
            self.refuse().unwrap_or(ActorError::ShuttingDown),
            self.config.shutdown.kill_timeout,
        );
    }
}

impl Handler<RegistryStopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: RegistryStopped, ctx: &mut Self::Context) {
        self.registry = None;
        if self.state != State::Running {
            return;
        }
        if self.intensity.allow(Instant::now()) {
            self.counts.registry += 1;
            log::warn!(
                "system {}: SessionRegistry stopped unexpectedly; restarting it with {} sessions",
                self.name,
                msg.table.len()
            );
            self.start_registry(msg.table, ctx);
        } else {
            self.fail(format!(
                "SessionRegistry stopped more than {} times within {:?} (supervisor.max_restarts)",
                self.config.supervisor.max_restarts, self.config.supervisor.max_window
            ));
        }
    }
}

impl Handler<SessionsEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SessionsEnded, _ctx: &mut Self::Context) {
        if self.state == State::Running {
            self.with_pool(move |pool| pool.do_send(ForgetSessions(msg.session_ids)));
        }
    }
}

impl Handler<Execute> for Supervisor {
    type Result = ();

    fn handle(&mut self, Execute { call, reply }: Execute, ctx: &mut Self::Context) {
        if let Some(error) = self.refuse() {
            let _ = reply.send(Err(error));
            return;
        }
        let timeout = match call.timeout {
            RequestTimeout::Default => Some(self.config.pool.request_timeout),
            RequestTimeout::After(d) => Some(d),
            RequestTimeout::Never => None,
        };
        if let Some(session_id) = &call.session_id {
            // Keep the session alive without waiting: sessions are tracked when they open,
            // so a request need not wait for the registry before it runs.
            let touch = session::Touch {
                session_id: session_id.clone(),
                create: true,
            };
            self.with_registry(move |registry| registry.do_send(touch));
        }
        let job = Job {
            command: call.command,
            args: call.args,
            session_id: call.session_id,
            timeout,
            batch: call.batch,
            limited: call.limited,
            attempt: 0,
            throttles: 0,
            counted_throttles: 0,
            ticket: None,
            submitted: Instant::now(),
            events: call.events,
            reply: Some(reply),
            rescue: Some(ctx.address().recipient()),
            rescues: 0,
        };
        self.with_pool(move |pool| pool.do_send(Submit(job)));
    }
}

impl Handler<Rescue> for Supervisor {
    type Result = ();

    fn handle(&mut self, Rescue(job): Rescue, _ctx: &mut Self::Context) {
        match self.refuse() {
            Some(error) => job.answer(Err(error)),
            None => self.with_pool(move |pool| pool.do_send(Submit(job))),
        }
    }
}

impl<M> Handler<ToRegistry<M>> for Supervisor
where
    M: Message + Clone + Send + 'static,
    M::Result: Send,
    SessionRegistry: Handler<M>,
{
    type Result = ResponseFuture<Result<M::Result, ActorError>>;

    fn handle(&mut self, ToRegistry(msg): ToRegistry<M>, ctx: &mut Self::Context) -> Self::Result {
        if let Some(error) = self.refuse() {
            return Box::pin(async move { Err(error) });
        }
        let rx = self.forward_to_registry(msg.clone());
        let me = ctx.address();
        Box::pin(async move {
            match rx.await {
                Ok(Ok(result)) => Ok(result),
                // The registry died with the message still in its mailbox (a panic on an
                // earlier message). Deliver it once more, to the successor.
                _ => match me.send(RetryToRegistry(msg)).await {
                    Ok(result) => result,
                    Err(_) => Err(ActorError::ShuttingDown),
                },
            }
        })
    }
}

struct RetryToRegistry<M>(M);

impl<M> Message for RetryToRegistry<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Result = Result<M::Result, ActorError>;
}

impl<M> Handler<RetryToRegistry<M>> for Supervisor
where
    M: Message + Send + 'static,
    M::Result: Send,
    SessionRegistry: Handler<M>,
{
    type Result = ResponseFuture<Result<M::Result, ActorError>>;

    fn handle(
        &mut self,
        RetryToRegistry(msg): RetryToRegistry<M>,
        _ctx: &mut Self::Context,
    ) -> Self::Result {
        if let Some(error) = self.refuse() {
            return Box::pin(async move { Err(error) });
        }
        let rx = self.forward_to_registry(msg);
        Box::pin(async move {
            match rx.await {
                Ok(Ok(result)) => Ok(result),
                _ => Err(ActorError::SystemFailed(
                    "the session registry stopped twice while handling the request".into(),
                )),
            }
        })
    }
}

impl Supervisor {
    fn forward_to_registry<M>(
        &mut self,
        msg: M,
    ) -> oneshot::Receiver<Result<M::Result, MailboxError>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionRegistry: Handler<M>,
    {
        let (tx, rx) = oneshot::channel();
        self.with_registry(move |registry| {
            let request = registry.send(msg);
            actix::spawn(async move {
                let _ = tx.send(request.await);
            });
        });
        rx
    }
}

impl Handler<AwaitReady> for Supervisor {
    type Result = ResponseFuture<Result<(), ActorError>>;

    fn handle(&mut self, msg: AwaitReady, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(error) = self.refuse() {
            return Box::pin(async move { Err(error) });
        }
        let (tx, rx) = oneshot::channel();
        let min_ready = msg.min_ready.max(1);
        self.with_pool(move |pool| {
            pool.do_send(WaitReady {
                min_ready,
                reply: tx,
            })
        });
        Box::pin(async move { rx.await.unwrap_or(Err(ActorError::ShuttingDown)) })
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = ResponseFuture<SystemStatus>;

    fn handle(&mut self, _: GetStatus, _ctx: &mut Self::Context) -> Self::Result {
        let name = self.name.clone();
        let restarts = self.counts.clone();
        let size = self.config.pool.size;
        let (health, failure) = match &self.state {
            State::Failed(why) => (Some(SystemHealth::Failed), Some(why.clone())),
            State::ShuttingDown => (Some(SystemHealth::Stopped), None),
            State::Running => (None, None),
        };
        let pool = self.pool.clone();
        let registry = self.registry.clone();
        Box::pin(async move {
            let pool = match pool {
                Some(pool) => pool.send(GetPoolStatus).await.ok(),
                None => None,
            };
            let sessions = match registry {
                Some(registry) => registry.send(session::Metrics).await.ok(),
                None => None,
            };
            let health = health.unwrap_or(match &pool {
                Some(p) if p.ready >= size => SystemHealth::Healthy,
                Some(p) if p.ready == 0 && p.totals.completed == 0 && p.totals.crashed == 0 => {
                    SystemHealth::Starting
                }
                _ => SystemHealth::Degraded,
            });
            SystemStatus {
                name,
                health,
                failure,
                restarts,
                pool,
                sessions,
            }
        })
    }
}

impl Handler<ShutdownSystem> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: ShutdownSystem, _ctx: &mut Self::Context) -> Self::Result {
        if self.state == State::Running {
            self.state = State::ShuttingDown;
        }
        log::info!("system {}: shutting down", self.name);
        let (done, rx) = oneshot::channel();
        match &self.pool {
            Some(pool) => pool.do_send(ShutdownPool {
                graceful: msg.graceful,
                done,
            }),
            None => drop(done),
        }
        self.pool_backlog.clear();
        self.registry_backlog.clear();
        Box::pin(
            async move {
                let _ = rx.await;
            }
            .into_actor(self)
            .map(|_, act, _| {
                if let Some(registry) = act.registry.take() {
                    registry.do_send(session::StopRegistry);
                }
            }),
        )
    }
}

impl Handler<InjectCrash> for Supervisor {
    type Result = ();

    fn handle(&mut self, InjectCrash(target): InjectCrash, _ctx: &mut Self::Context) {
        match target {
            CrashTarget::Pool => self.with_pool(|pool| pool.do_send(Crash)),
            CrashTarget::Registry => {
                self.with_registry(|registry| registry.do_send(session::Crash))
            }
        }
    }
}

impl Handler<RunHealthCheck> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: RunHealthCheck, _ctx: &mut Self::Context) {
        if self.state == State::Running {
            self.with_pool(move |pool| pool.do_send(msg));
        }
    }
}
