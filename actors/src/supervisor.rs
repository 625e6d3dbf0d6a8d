//! The Supervisor actor: starts the SessionRegistry and the PoolManager, restarts them when
//! they stop or panic (OTP-style intensity: at most `supervisor.max_restarts` within
//! `supervisor.max_window`), and is the single entry point of the system handle.
//!
//! It is our own rather than `actix::Supervisor`, which neither restarts after a panic nor
//! carries state over. Children tell it they stopped from their `stopped()` hook, which actix
//! runs even while a panic unwinds, and hand their state over in that message: the
//! registry's sessions and the pool's workers and queue move to the successor, never shared.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::config::ActorsConfig;
use crate::error::ActorError;
use crate::launcher::WorkerLauncher;
use crate::pool::{
    ForgetSessions, GetPoolStatus, PoolManager, PoolStatus, PoolStopped, ShutdownPool, Submit,
    WaitReady,
};
use crate::session::{
    self, RegistryStopped, SessionMetrics, SessionRegistry, SessionTable, SessionsEnded,
};
use crate::worker::{Job, Reply, Stop};

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

/// Run a command on some worker. `session_id` tracks/touches that session and prefers
/// the worker that served it last. The answer arrives on `reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub command: String,
    pub args: Value,
    pub session_id: Option<String>,
    pub timeout: Option<Duration>,
    pub reply: Reply,
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
pub struct Shutdown {
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
    pool: Option<Addr<PoolManager>>,
    registry: Option<Addr<SessionRegistry>>,
    restarts: VecDeque<Instant>,
    counts: RestartCounts,
    state: State,
    // Messages that arrived while a child was between death and restart.
    pool_backlog: Vec<Deferred<PoolManager>>,
    registry_backlog: Vec<Deferred<SessionRegistry>>,
}

impl Supervisor {
    /// `name` prefixes worker ids and log lines; it must be unique per system only for
    /// readable logs, nothing is registered under it.
    pub fn new(name: String, config: ActorsConfig, launcher: Arc<dyn WorkerLauncher>) -> Self {
        Supervisor {
            config,
            name,
            launcher,
            pool: None,
            registry: None,
            restarts: VecDeque::new(),
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

    fn start_pool(&mut self, handover: Option<crate::pool::PoolHandover>, ctx: &mut Context<Self>) {
        let pool = PoolManager::new(
            self.name.clone(),
            self.config.pool.clone(),
            self.config.worker.clone(),
            self.config.shutdown.clone(),
            self.launcher.clone(),
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

    /// Record a restart; false once the intensity limit is passed.
    fn allow_restart(&mut self) -> bool {
        let now = Instant::now();
        let window = self.config.supervisor.max_window;
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        self.restarts.len() as u32 <= self.config.supervisor.max_restarts
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
            registry.do_send(session::Shutdown);
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
        if self.state == State::Running && self.allow_restart() {
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
        if self.allow_restart() {
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

    fn handle(&mut self, msg: Execute, ctx: &mut Self::Context) {
        if let Some(error) = self.refuse() {
            let _ = msg.reply.send(Err(error));
            return;
        }
        let job = Job {
            command: msg.command,
            args: msg.args,
            session_id: msg.session_id,
            timeout: msg.timeout.unwrap_or(self.config.pool.request_timeout),
            attempt: 0,
            submitted: Instant::now(),
            reply: msg.reply,
        };
        if let Some(session_id) = job.session_id.clone() {
            // Using a session tracks it (or keeps it alive) before the request runs, so
            // `session.max_sessions` applies and the sweep sees it as active.
            let (tx, rx) = oneshot::channel();
            self.with_registry(move |registry| {
                let touch = registry.send(session::Touch {
                    session_id,
                    create: true,
                });
                actix::spawn(async move {
                    let _ = tx.send(touch.await);
                });
            });
            let pool_job = async move {
                match rx.await {
                    Ok(Ok(Ok(()))) => Ok(job),
                    Ok(Ok(Err(e))) => Err((job, e)),
                    _ => Err((job, ActorError::ShuttingDown)),
                }
            };
            ctx.spawn(
                pool_job
                    .into_actor(self)
                    .map(|result, act, _| match result {
                        Ok(job) => act.with_pool(move |pool| pool.do_send(Submit(job))),
                        Err((job, e)) => job.answer(Err(e)),
                    }),
            );
        } else {
            self.with_pool(move |pool| pool.do_send(Submit(job)));
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

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
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
                    registry.do_send(session::Shutdown);
                }
            }),
        )
    }
}

impl Handler<InjectCrash> for Supervisor {
    type Result = ();

    fn handle(&mut self, InjectCrash(target): InjectCrash, _ctx: &mut Self::Context) {
        match target {
            CrashTarget::Pool => self.with_pool(|pool| pool.do_send(crate::pool::Crash)),
            CrashTarget::Registry => {
                self.with_registry(|registry| registry.do_send(session::Crash))
            }
        }
    }
}

impl crate::pool::PoolHandover {
    /// Nobody will take these workers over: answer queued requests with `error` and stop
    /// every worker process.
    pub(crate) fn abandon(mut self, error: ActorError, kill: Duration) {
        for (_, job, _) in std::mem::take(&mut self.queue) {
            job.answer(Err(error.clone()));
        }
        for addr in self.worker_addrs() {
            addr.do_send(Stop {
                graceful: Duration::ZERO,
                kill,
                done: None,
            });
        }
    }
}

pub use crate::pool::RunHealthCheck;

impl Handler<RunHealthCheck> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: RunHealthCheck, _ctx: &mut Self::Context) {
        if self.state == State::Running {
            self.with_pool(move |pool| pool.do_send(msg));
        }
    }
}
