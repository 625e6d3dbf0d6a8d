//! The Worker actor: owns one worker process (or in-memory stand-in), speaks the wire
//! protocol with it, and answers each caller directly on the caller's oneshot channel.
//!
//! The PoolManager decides *which* worker runs a request; the Worker does the talking:
//! handshake, id correlation, the request timeout (a timed-out worker is killed, since
//! Python cannot be interrupted safely, so a late reply can never reach anyone), logging
//! of the child's output, crash detection and the stop ladder.

pub mod process;
pub mod state;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{ActorError, TimeoutStage};
use crate::launcher::WorkerLauncher;
use crate::protocol::{FrameCodec, FrameError, Request, Response};
use process::ChildProcess;
pub use state::{Checkin, CheckinOutcome, Health, WorkerState, WorkerStats};
use transport::{LogStream, LogTail};

/// Python error types that say nothing about the worker's own health: the worker
/// answered correctly, the cause is the LM provider or the caller. Counting them toward
/// `pool.remove_after` would replace healthy workers over and over during, say, a run
/// whose API key is wrong.
pub const CALLER_ERROR_TYPES: &[&str] = &[
    "LMError",
    "ProgramNotFound",
    "ProgramExists",
    "UnknownCommand",
    "InvalidRequest",
];

/// The reply channel of one request.
pub type Reply = oneshot::Sender<Result<Value, ActorError>>;

/// One request on its way to a worker.
#[derive(Debug)]
pub struct Job {
    pub command: String,
    pub args: Value,
    pub session_id: Option<String>,
    /// How long the worker may take to answer.
    pub timeout: Duration,
    /// How many times this request was already retried after a worker crash.
    pub attempt: u32,
    pub submitted: Instant,
    pub reply: Reply,
}

impl Job {
    /// Answer the caller (who may have gone away; that is fine).
    pub fn answer(self, result: Result<Value, ActorError>) {
        let _ = self.reply.send(result);
    }
}

/// Everything a Worker needs to know besides its id.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub startup_timeout: Duration,
    pub health_timeout: Duration,
    pub max_frame_bytes: usize,
    pub keep_log_lines: usize,
    pub degrade_after: u32,
    pub remove_after: u32,
    pub max_requests: u64,
    pub max_lifetime: Duration,
    pub graceful_timeout: Duration,
    pub kill_timeout: Duration,
}

/// A point-in-time view of a worker, for status output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerSnapshot {
    pub id: String,
    pub pid: Option<u32>,
    pub health: Health,
    pub busy: bool,
    pub session: Option<String>,
    pub stats: WorkerStats,
    pub uptime_ms: u64,
    pub rss_bytes: Option<u64>,
}

/// What a Worker tells its pool.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WorkerEvent {
    pub worker_id: String,
    pub kind: WorkerEventKind,
}

#[derive(Debug)]
pub enum WorkerEventKind {
    /// Handshake answered: the worker serves.
    Ready { pid: Option<u32> },
    /// Spawn or handshake failed; the actor has stopped.
    StartFailed { error: ActorError },
    /// A request finished and the worker is free again. `retire` is set when the worker
    /// should be replaced (unhealthy, `max_requests`, `max_lifetime`).
    Idle {
        snapshot: WorkerSnapshot,
        retire: Option<String>,
        latency: Duration,
    },
    /// A health ping failed: replace the worker.
    Unhealthy { reason: String },
    /// The process is gone and the actor has stopped. `orphan` is the request it was
    /// running when it died unexpectedly (the pool may retry it elsewhere).
    Exited {
        reason: String,
        expected: bool,
        orphan: Option<Job>,
    },
}

/// Run a request (sent by the pool, which marked this worker busy).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch(pub Job);

/// Send a health ping if idle; an unanswered or failed ping makes the worker unhealthy.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HealthCheck;

/// A session ended: if this worker served it, tell Python to drop its cached programs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetSession {
    pub session_id: String,
}

/// Stop by the ladder: `shutdown` command, close the request pipe, wait `graceful`,
/// SIGTERM the process group, wait `kill`, SIGKILL, reap. `done` fires when reaped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop {
    pub graceful: Duration,
    pub kill: Duration,
    pub done: Option<oneshot::Sender<()>>,
}

/// A new PoolManager takes this worker over after its predecessor stopped.
#[derive(Message)]
#[rtype(result = "WorkerSnapshot")]
pub struct Adopt {
    pub pool: Recipient<WorkerEvent>,
}

/// Current state, for status output.
#[derive(Message)]
#[rtype(result = "WorkerSnapshot")]
pub struct Snapshot;

/// One line of the child's stdout/stderr.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct LogLine(LogStream, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Stopping,
    Gone,
}

enum Call {
    Init,
    Health,
    Internal(&'static str),
    User {
        job: Job,
        timer: SpawnHandle,
        sent: Instant,
    },
}

/// One worker process. See the module docs.
pub struct Worker {
    state: WorkerState,
    settings: WorkerSettings,
    launcher: Arc<dyn WorkerLauncher>,
    pool: Recipient<WorkerEvent>,
    writer: Option<mpsc::UnboundedSender<Request>>,
    process: Option<ChildProcess>,
    pid: Option<u32>,
    /// Whether there is an OS process behind the transport (not the in-memory fake).
    real_process: bool,
    next_id: u64,
    calls: HashMap<u64, Call>,
    tail: LogTail,
    spawned_at: Instant,
    phase: Phase,
    stop_waiters: Vec<oneshot::Sender<()>>,
}

impl Worker {
    pub fn new(
        id: String,
        settings: WorkerSettings,
        launcher: Arc<dyn WorkerLauncher>,
        pool: Recipient<WorkerEvent>,
    ) -> Self {
        let state = WorkerState::new(id, settings.degrade_after, settings.remove_after);
        let tail = LogTail::new(settings.keep_log_lines);
        Worker {
            state,
            settings,
            launcher,
            pool,
            writer: None,
            process: None,
            pid: None,
            real_process: false,
            next_id: 1,
            calls: HashMap::new(),
            tail,
            spawned_at: Instant::now(),
            phase: Phase::Starting,
            stop_waiters: Vec::new(),
        }
    }

    fn id(&self) -> &str {
        &self.state.id
    }

    fn notify(&self, kind: WorkerEventKind) {
        self.pool.do_send(WorkerEvent {
            worker_id: self.state.id.clone(),
            kind,
        });
    }

    /// The snapshot sent with every event: no `/proc` read on the request path (the pool
    /// fills in RSS when someone asks for status).
    fn snapshot(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            id: self.state.id.clone(),
            pid: self.pid,
            health: self.state.health,
            busy: self.state.busy,
            session: self.state.session.clone(),
            stats: self.state.stats.clone(),
            uptime_ms: self.spawned_at.elapsed().as_millis() as u64,
            rss_bytes: None,
        }
    }

    /// Send a frame; returns its id. A closed writer is noticed by the reader (EOF).
    fn send(&mut self, command: &str, args: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(writer) = &self.writer {
            let _ = writer.send(Request::new(id, command, args));
        }
        id
    }

    fn last_output(&self) -> String {
        let joined = self.tail.joined();
        if joined.is_empty() {
            "(no output)".to_owned()
        } else {
            joined
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) -> Result<(), ActorError> {
        let conn = self.launcher.launch(&self.state.id)?;
        self.pid = conn.process.as_ref().map(ChildProcess::pid);
        self.real_process = conn.process.is_some();
        self.process = conn.process;

        let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
        let mut sink = FramedWrite::new(
            conn.writer,
            FrameCodec::<Response, Request>::new(self.settings.max_frame_bytes),
        );
        let id = self.state.id.clone();
        actix::spawn(async move {
            while let Some(request) = rx.recv().await {
                if let Err(e) = sink.send(request).await {
                    log::debug!("worker {id}: request pipe closed: {e}");
                    break;
                }
            }
            // Dropping the sink closes the request pipe: the child sees EOF.
            let _ = SinkExt::<Request>::close(&mut sink).await;
        });
        self.writer = Some(tx);

        ctx.add_stream(FramedRead::new(
            conn.reader,
            FrameCodec::<Response, Request>::new(self.settings.max_frame_bytes),
        ));
        for (stream, reader) in conn.logs {
            ctx.add_stream(transport::log_lines(reader).map(move |line| LogLine(stream, line)));
        }
        Ok(())
    }

    fn fail_start(&mut self, error: ActorError, ctx: &mut Context<Self>) {
        if self.phase == Phase::Gone {
            return;
        }
        log::warn!("worker {} failed to start: {error}", self.id());
        self.phase = Phase::Gone;
        self.state.health = Health::Stopped;
        self.notify(WorkerEventKind::StartFailed { error });
        self.kill_and_stop(ctx);
    }

    /// Kill the process group at once and reap it in the background, then stop the actor.
    fn kill_and_stop(&mut self, ctx: &mut Context<Self>) {
        self.writer = None;
        if let Some(mut child) = self.process.take() {
            let id = self.state.id.clone();
            let _ = child.signal_group(libc::SIGKILL);
            actix::spawn(async move {
                match child.wait().await {
                    Ok(status) => {
                        log::debug!("worker {id} reaped: {}", process::describe_exit(status))
                    }
                    Err(e) => log::warn!("worker {id}: reaping failed: {e}"),
                }
            });
        }
        ctx.stop();
    }

    fn on_response(&mut self, response: Response, ctx: &mut Context<Self>) {
        let Some(call) = self.calls.remove(&response.id()) else {
            log::warn!(
                "worker {}: ignoring a response with unknown id {}",
                self.id(),
                response.id()
            );
            return;
        };
        let result = match response {
            Response::Success { result, .. } => Ok(result),
            Response::Failure { error, .. } => Err(ActorError::Python {
                error_type: error.error_type,
                message: error.message,
                traceback: error.traceback,
            }),
        };
        match call {
            // Stopped before the handshake finished: the answer no longer matters.
            Call::Init if self.phase != Phase::Starting => {}
            Call::Init => match result {
                Ok(v) if v.get("status").and_then(Value::as_str) == Some("ok") => {
                    self.state.mark_ready();
                    self.phase = Phase::Running;
                    log::info!("worker {} ready (pid {:?})", self.id(), self.pid);
                    self.notify(WorkerEventKind::Ready { pid: self.pid });
                }
                Ok(v) => self.fail_start(
                    ActorError::Protocol(format!("handshake answered without status \"ok\": {v}")),
                    ctx,
                ),
                Err(e) => self.fail_start(e, ctx),
            },
            Call::Health => {
                if let Err(e) = result {
                    self.mark_unhealthy(format!("health ping failed: {e}"));
                }
            }
            Call::Internal(command) => {
                if let Err(e) = result {
                    log::warn!("worker {}: `{command}` failed: {e}", self.id());
                }
            }
            Call::User { job, timer, sent } => {
                ctx.cancel_future(timer);
                log::trace!(
                    "worker {}: `{}` answered in {:?}",
                    self.id(),
                    job.command,
                    sent.elapsed()
                );
                let how = match &result {
                    Ok(_) => Checkin::Ok,
                    Err(ActorError::Python { error_type, .. })
                        if CALLER_ERROR_TYPES.contains(&error_type.as_str()) =>
                    {
                        Checkin::CallerError
                    }
                    Err(_) => Checkin::Error,
                };
                let latency = job.submitted.elapsed();
                job.answer(result);
                let outcome = self.state.checkin(how);
                if self.phase != Phase::Running {
                    return;
                }
                let retire = match outcome {
                    CheckinOutcome::Remove => Some(format!(
                        "{} consecutive errors (pool.remove_after)",
                        self.state.consecutive_errors()
                    )),
                    _ if self.settings.max_requests > 0
                        && self.state.stats.requests >= self.settings.max_requests =>
                    {
                        Some(format!(
                            "served {} requests (pool.max_requests)",
                            self.state.stats.requests
                        ))
                    }
                    _ if !self.settings.max_lifetime.is_zero()
                        && self.spawned_at.elapsed() >= self.settings.max_lifetime =>
                    {
                        Some("reached pool.max_lifetime".to_owned())
                    }
                    _ => None,
                };
                self.notify(WorkerEventKind::Idle {
                    snapshot: self.snapshot(),
                    retire,
                    latency,
                });
            }
        }
    }

    fn mark_unhealthy(&mut self, reason: String) {
        if self.phase != Phase::Running {
            return;
        }
        log::warn!("worker {} unhealthy: {reason}", self.id());
        self.state.mark_unhealthy();
        self.notify(WorkerEventKind::Unhealthy { reason });
    }

    /// The response stream broke or ended.
    fn on_transport_closed(&mut self, protocol_error: Option<FrameError>, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Gone => return,
            Phase::Stopping => {
                if !self.real_process && protocol_error.is_none() {
                    // In-memory worker: the stream closing is its exit. A real process is
                    // finished by the stop ladder's reap instead.
                    self.finish_stop("transport closed".to_owned(), ctx);
                }
                return;
            }
            Phase::Starting => {
                let error = match protocol_error {
                    Some(e) => ActorError::Protocol(format!("during the handshake: {e}")),
                    None => ActorError::Spawn(format!(
                        "worker {} exited before answering the handshake; last output: {}",
                        self.id(),
                        self.last_output()
                    )),
                };
                self.fail_start(error, ctx);
                return;
            }
            Phase::Running => {}
        }
        self.phase = Phase::Gone;
        self.state.health = Health::Stopped;
        self.writer = None;
        let id = self.state.id.clone();
        let mut orphan = None;
        for (_, call) in self.calls.drain() {
            if let Call::User { job, timer, .. } = call {
                ctx.cancel_future(timer);
                orphan = Some(job);
            }
        }
        if let Some(e) = protocol_error {
            // The worker broke the protocol: its request fails with a protocol error (a
            // retry could corrupt again), and the process is killed and replaced.
            log::error!("worker {id}: protocol error: {e}; killing it");
            if let Some(job) = orphan.take() {
                job.answer(Err(ActorError::Protocol(format!("worker {id}: {e}"))));
            }
            self.notify(WorkerEventKind::Exited {
                reason: format!("protocol error: {e}"),
                expected: false,
                orphan: None,
            });
            self.kill_and_stop(ctx);
            return;
        }
        // The child closed its response stream: it died. Reap it (it normally is gone
        // already) so the log says how it ended, then hand any request back to the pool.
        let child = self.process.take();
        let fut = async move {
            match child {
                Some(mut child) => {
                    let status = child
                        .terminate(Duration::from_millis(300), Duration::from_millis(500))
                        .await;
                    process::describe_exit(status)
                }
                None => "transport closed".to_owned(),
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |how, act, ctx| {
            let reason = format!("{how}; last output: {}", act.last_output());
            log::warn!("worker {id} exited unexpectedly: {reason}");
            act.notify(WorkerEventKind::Exited {
                reason,
                expected: false,
                orphan,
            });
            ctx.stop();
        }));
    }

    fn finish_stop(&mut self, how: String, ctx: &mut Context<Self>) {
        if self.phase == Phase::Gone {
            return;
        }
        self.phase = Phase::Gone;
        self.state.health = Health::Stopped;
        log::info!("worker {} stopped: {how}", self.id());
        for (_, call) in self.calls.drain() {
            if let Call::User { job, timer, .. } = call {
                ctx.cancel_future(timer);
                job.answer(Err(ActorError::ShuttingDown));
            }
        }
        self.notify(WorkerEventKind::Exited {
            reason: how,
            expected: true,
            orphan: None,
        });
        for done in self.stop_waiters.drain(..) {
            let _ = done.send(());
        }
        ctx.stop();
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Err(e) = self.connect(ctx) {
            self.fail_start(e, ctx);
            return;
        }
        let id = self.state.id.clone();
        let init = self.send("ping", json!({"initialization": true, "worker_id": id}));
        self.calls.insert(init, Call::Init);
        let timeout = self.settings.startup_timeout;
        ctx.run_later(timeout, move |act, ctx| {
            if act.phase == Phase::Starting {
                let error = ActorError::timeout(
                    TimeoutStage::Startup,
                    timeout,
                    format!(
                        "worker {} did not answer its handshake; last output: {} (raise pool.startup_timeout if imports are slow)",
                        act.id(),
                        act.last_output()
                    ),
                );
                act.fail_start(error, ctx);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Normally reaped already; this only runs with a live child if the actor system
        // itself is torn down. kill_on_drop is the backstop for the leader, this for the group.
        if let Some(child) = &self.process {
            let _ = child.signal_group(libc::SIGKILL);
        }
        for done in self.stop_waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

impl StreamHandler<Result<Response, FrameError>> for Worker {
    fn handle(&mut self, item: Result<Response, FrameError>, ctx: &mut Self::Context) {
        match item {
            Ok(response) => self.on_response(response, ctx),
            Err(e) => self.on_transport_closed(Some(e), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.on_transport_closed(None, ctx);
    }
}

impl StreamHandler<LogLine> for Worker {
    fn handle(&mut self, LogLine(stream, line): LogLine, _ctx: &mut Self::Context) {
        match stream {
            LogStream::Stdout => log::info!(target: "dspex::worker", "[{}] {line}", self.state.id),
            LogStream::Stderr => log::info!(target: "dspex::worker", "[{}] {line}", self.state.id),
        }
        self.tail.push(line);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<Dispatch> for Worker {
    type Result = ();

    fn handle(&mut self, Dispatch(mut job): Dispatch, ctx: &mut Self::Context) {
        if self.phase != Phase::Running {
            // Raced with a crash or a stop: hand it back like a crash would.
            self.notify(WorkerEventKind::Exited {
                reason: "worker no longer running".to_owned(),
                expected: self.phase == Phase::Stopping,
                orphan: Some(job),
            });
            return;
        }
        self.state.checkout(job.session_id.as_deref());
        let mut args = std::mem::take(&mut job.args);
        if let (Some(session), Value::Object(map)) = (&job.session_id, &mut args) {
            map.entry("session_id")
                .or_insert_with(|| Value::String(session.clone()));
        }
        let id = self.send(&job.command, args);
        let timeout = job.timeout;
        let timer = ctx.run_later(timeout, move |act, ctx| {
            let Some(Call::User { job, .. }) = act.calls.remove(&id) else { return };
            log::warn!(
                "worker {}: `{}` timed out after {:?}; killing the worker (pool.request_timeout)",
                act.id(),
                job.command,
                timeout
            );
            job.answer(Err(ActorError::timeout(
                TimeoutStage::Request,
                timeout,
                "the worker was killed and will be replaced; raise pool.request_timeout for slow programs",
            )));
            act.state.stats.requests += 1;
            act.state.stats.errors += 1;
            act.state.mark_unhealthy();
            act.phase = Phase::Gone;
            act.notify(WorkerEventKind::Exited {
                reason: format!("killed after the request timeout ({timeout:?})"),
                expected: false,
                orphan: None,
            });
            act.kill_and_stop(ctx);
        });
        self.calls.insert(
            id,
            Call::User {
                job,
                timer,
                sent: Instant::now(),
            },
        );
    }
}

impl Handler<HealthCheck> for Worker {
    type Result = ();

    fn handle(&mut self, _: HealthCheck, ctx: &mut Self::Context) {
        if self.phase != Phase::Running
            || self.state.busy
            || self.calls.values().any(|c| matches!(c, Call::Health))
        {
            return;
        }
        let id = self.send("ping", json!({}));
        self.calls.insert(id, Call::Health);
        let timeout = self.settings.health_timeout;
        ctx.run_later(timeout, move |act, _| {
            if let Some(Call::Health) = act.calls.get(&id) {
                act.calls.remove(&id);
                act.mark_unhealthy(format!("no answer to a health ping within {timeout:?}"));
            }
        });
    }
}

impl Handler<ForgetSession> for Worker {
    type Result = ();

    fn handle(&mut self, msg: ForgetSession, _ctx: &mut Self::Context) {
        if self.state.forget_session(&msg.session_id) && self.phase == Phase::Running {
            let id = self.send("cleanup_session", json!({"session_id": msg.session_id}));
            self.calls.insert(id, Call::Internal("cleanup_session"));
        }
    }
}

impl Handler<Stop> for Worker {
    type Result = ();

    fn handle(&mut self, msg: Stop, ctx: &mut Self::Context) {
        if let Some(done) = msg.done {
            self.stop_waiters.push(done);
        }
        if matches!(self.phase, Phase::Stopping | Phase::Gone) {
            if self.phase == Phase::Gone {
                for done in self.stop_waiters.drain(..) {
                    let _ = done.send(());
                }
            }
            return;
        }
        log::debug!("worker {}: stopping", self.id());
        self.phase = Phase::Stopping;
        self.state.health = Health::Stopping;
        let id = self.send("shutdown", json!({}));
        self.calls.insert(id, Call::Internal("shutdown"));
        // Dropping the sender lets the writer task flush `shutdown`, then close the pipe.
        self.writer = None;
        match self.process.take() {
            Some(mut child) => {
                let (graceful, kill) = (msg.graceful, msg.kill);
                let fut =
                    async move { process::describe_exit(child.terminate(graceful, kill).await) };
                ctx.spawn(
                    fut.into_actor(self)
                        .map(|how, act, ctx| act.finish_stop(how, ctx)),
                );
            }
            None => {
                ctx.run_later(msg.graceful, |act, ctx| {
                    act.finish_stop("graceful timeout elapsed".to_owned(), ctx)
                });
            }
        }
    }
}

impl Handler<Adopt> for Worker {
    type Result = MessageResult<Adopt>;

    fn handle(&mut self, msg: Adopt, _ctx: &mut Self::Context) -> Self::Result {
        self.pool = msg.pool;
        MessageResult(self.snapshot())
    }
}

impl Handler<Snapshot> for Worker {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let mut snapshot = self.snapshot();
        snapshot.rss_bytes = self.pid.and_then(process::rss_bytes);
        MessageResult(snapshot)
    }
}
