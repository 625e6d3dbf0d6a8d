//! The Worker actor: owns one worker process (or in-memory stand-in), speaks the wire
//! protocol with it, runs up to `pool.worker_concurrency` requests on it at once, and
//! answers each caller directly on the caller's oneshot channel.
//!
//! The PoolManager decides *which* worker runs a request; the Worker does the talking:
//! handshake, id correlation of out-of-order answers, event frames, the request timeout,
//! logging of the child's output, crash detection and the stop ladder. A request past its
//! timeout is answered at once, but its slot stays taken until the process answers it or
//! is recycled (Python cannot be interrupted safely); when stuck slots fill half of the
//! worker, the pool drains and replaces it.
//!
//! A Worker whose process is gone stays alive (answering nothing, handing back any request
//! that still reaches it) until the pool sends [`Release`]: the pool's messages to it are
//! then never lost in a closed mailbox.

pub(crate) mod process;
mod state;
pub(crate) mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::error::{ActorError, Classifier, Disposition, TimeoutStage};
use crate::launcher::WorkerLauncher;
use crate::pool::rate::Ticket;
use crate::protocol::{encode_frame, FrameCodec, FrameError, OutgoingRequest, Request, Response};
use crate::supervisor::{EventSender, Reply};
use process::ChildProcess;
pub(crate) use state::RetireRule;
use state::{Checkin, CheckinOutcome, WorkerState};
pub use state::{Health, WorkerStats};
use transport::{LogStream, LogTail};

/// How long a worker whose process is gone waits for the pool's [`Release`] before it
/// stops by itself (the pool may be gone too).
const RELEASE_FALLBACK: Duration = Duration::from_secs(10);

/// One request on its way to a worker. It stays whole until answered: a retry after a
/// crash sends exactly the command and arguments the caller gave.
///
/// A job is never lost with a dead actor's mailbox: dropped without an answer (its
/// message was still queued when the PoolManager or a Worker stopped), it sends itself to
/// its `rescue` recipient, the Supervisor, which submits it again.
pub(crate) struct Job {
    pub command: String,
    pub args: Value,
    pub session_id: Option<String>,
    /// How long the worker may take to answer; `None`: no limit.
    pub timeout: Option<Duration>,
    /// Waits for capacity without a checkout deadline or a queue bound.
    pub batch: bool,
    /// Counts against the pool-wide rate control.
    pub limited: bool,
    /// Retries so far after a worker died with it.
    pub attempt: u32,
    /// Rate refusals so far, and those that counted against `rate.num_retries`.
    pub throttles: u32,
    pub counted_throttles: u32,
    /// The rate limiter's record of this request's current dispatch.
    pub ticket: Option<Ticket>,
    pub submitted: Instant,
    pub events: Option<EventSender>,
    /// `None` once answered.
    pub reply: Option<Reply>,
    pub rescue: Option<Recipient<Rescue>>,
    /// Times this job was rescued from a dead mailbox; bounded so that a job can never
    /// bounce between dead actors forever.
    pub rescues: u32,
}

/// A job that was dropped unanswered, for the Supervisor to submit again.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Rescue(pub Job);

const MAX_RESCUES: u32 = 3;

impl Job {
    /// Answer the caller (who may have gone away; that is fine).
    pub fn answer(mut self, result: Result<Value, ActorError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let rescue = self.rescue.take().filter(|_| self.rescues < MAX_RESCUES);
        let Some(rescue) = rescue else {
            let _ = reply.send(Err(ActorError::SystemFailed(
                "the request was lost while the actors restarted".into(),
            )));
            return;
        };
        let job = Job {
            command: std::mem::take(&mut self.command),
            args: std::mem::take(&mut self.args),
            session_id: self.session_id.take(),
            timeout: self.timeout,
            batch: self.batch,
            limited: self.limited,
            attempt: self.attempt,
            throttles: self.throttles,
            counted_throttles: self.counted_throttles,
            ticket: None,
            submitted: self.submitted,
            events: self.events.take(),
            reply: Some(reply),
            rescue: Some(rescue.clone()),
            rescues: self.rescues + 1,
        };
        log::debug!("rescuing `{}` from a stopped actor's mailbox", job.command);
        rescue.do_send(Rescue(job));
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("command", &self.command)
            .field("session_id", &self.session_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Everything a Worker needs to know besides its id; shared by all workers of a pool.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    pub capacity: usize,
    pub startup_timeout: Duration,
    pub health_timeout: Duration,
    pub ping_when_busy: bool,
    pub max_frame_bytes: usize,
    pub keep_log_lines: usize,
    pub degrade_after: u32,
    pub remove_after: u32,
    pub retire: RetireRule,
    pub kill_timeout: Duration,
}

/// A point-in-time view of a worker, for status output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerSnapshot {
    pub id: String,
    pub pid: Option<u32>,
    pub health: Health,
    /// Whether any request is in flight.
    pub busy: bool,
    /// Requests in flight, stuck ones included.
    pub in_flight: usize,
    /// Of those, the ones that count against the pool's rate control.
    pub limited_in_flight: usize,
    /// Requests it runs at once.
    pub capacity: usize,
    /// Requests whose caller got a timeout but which the process still holds.
    pub stuck: usize,
    /// Taking no new work; replaced once its requests are done.
    pub draining: bool,
    pub session: Option<String>,
    pub stats: WorkerStats,
    pub uptime_ms: u64,
    pub rss_bytes: Option<u64>,
}

/// What a Worker tells its pool.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerEvent {
    pub worker_id: String,
    pub kind: WorkerEventKind,
}

/// How a request slot was freed, for the pool's accounting and rate control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    /// A request that had already timed out was answered at last.
    Late,
}

#[derive(Debug)]
pub(crate) enum WorkerEventKind {
    /// Handshake answered: the worker serves.
    Ready { pid: Option<u32> },
    /// Spawn or handshake failed; the process is gone. The pool answers with [`Release`].
    StartFailed { error: ActorError },
    /// A request slot is free again. `retire` is set when the worker should be replaced.
    Freed {
        outcome: Outcome,
        limited: bool,
        latency: Duration,
        retire: Option<String>,
    },
    /// The far end refused `job` for rate; its slot is free. The pool decides whether and
    /// when it runs again; `error` is what its caller gets if not. `retire` as in `Freed`.
    Throttled {
        job: Job,
        error: ActorError,
        retry_after: Option<Duration>,
        retire: Option<String>,
    },
    /// A request ran past its timeout; `stuck` requests are now held past theirs. With
    /// `drain` (too many are stuck, or a reason as `retire` in `Freed`): send it nothing
    /// more and replace it.
    TimedOut { stuck: usize, drain: Option<String> },
    /// A health ping failed: replace the worker now.
    Unhealthy { reason: String },
    /// A request reached the worker after its process was gone; it was never sent.
    Returned { job: Job },
    /// The process is gone. The pool answers with [`Release`].
    Exited(Exit),
}

/// How a worker's process ended.
#[derive(Debug)]
pub(crate) struct Exit {
    pub reason: String,
    /// Stopped on request (not a crash).
    pub expected: bool,
    /// The requests it held that nobody has answered.
    pub orphans: Vec<Job>,
    pub last_output: String,
    pub out_of_memory: bool,
}

/// Run a request (the pool counted a slot for it).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Dispatch(pub Job);

/// Send a health ping; an unanswered or failed ping makes the worker unhealthy.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct HealthCheck;

/// A session ended: if this worker served it, tell Python to drop its cached programs.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ForgetSession {
    pub session_id: String,
}

/// Stop by the ladder: `shutdown` command, close the request pipe, wait `graceful`,
/// SIGTERM the process group, wait `kill`, SIGKILL, reap. `done` fires when reaped.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop {
    pub graceful: Duration,
    pub kill: Duration,
    pub done: Option<oneshot::Sender<()>>,
}

/// The pool has taken note of the worker's end: the actor may stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Release;

/// A new PoolManager takes this worker over after its predecessor stopped.
#[derive(Message)]
#[rtype(result = "WorkerSnapshot")]
pub(crate) struct Adopt {
    pub pool: Recipient<WorkerEvent>,
}

/// Current state with the process's memory use, for status output.
#[derive(Message)]
#[rtype(result = "WorkerSnapshot")]
pub(crate) struct Snapshot;

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

/// A request the process has not answered yet.
enum Pending {
    Init,
    Health,
    Internal(&'static str),
    Request(InFlight),
}

struct InFlight {
    /// `None` once the caller was answered with a timeout.
    job: Option<Job>,
    limited: bool,
    timer: Option<SpawnHandle>,
}

/// One worker process. See the module docs.
pub(crate) struct Worker {
    state: WorkerState,
    settings: Arc<WorkerSettings>,
    launcher: Arc<dyn WorkerLauncher>,
    classifier: Classifier,
    pool: Recipient<WorkerEvent>,
    writer: Option<mpsc::UnboundedSender<Bytes>>,
    process: Option<ChildProcess>,
    /// The OS process's id; `None` behind an in-memory transport.
    pid: Option<u32>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    tail: LogTail,
    spawned_at: Instant,
    phase: Phase,
    stop_waiters: Vec<oneshot::Sender<()>>,
}

impl Worker {
    pub fn new(
        id: String,
        settings: Arc<WorkerSettings>,
        launcher: Arc<dyn WorkerLauncher>,
        classifier: Classifier,
        pool: Recipient<WorkerEvent>,
    ) -> Self {
        let state = WorkerState::new(
            id,
            settings.capacity,
            settings.degrade_after,
            settings.remove_after,
        );
        let tail = LogTail::new(settings.keep_log_lines);
        Worker {
            state,
            settings,
            launcher,
            classifier,
            pool,
            writer: None,
            process: None,
            pid: None,
            next_id: 1,
            pending: HashMap::new(),
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

    fn snapshot(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            id: self.state.id.clone(),
            pid: self.pid,
            health: self.state.health,
            busy: self.state.busy(),
            in_flight: self.state.in_flight(),
            limited_in_flight: self
                .pending
                .values()
                .filter(|p| matches!(p, Pending::Request(InFlight { limited: true, .. })))
                .count(),
            capacity: self.state.capacity(),
            stuck: self.state.stuck(),
            draining: false,
            session: self.state.session.clone(),
            stats: self.state.stats.clone(),
            uptime_ms: u64::try_from(self.spawned_at.elapsed().as_millis()).unwrap_or(u64::MAX),
            rss_bytes: None,
        }
    }

    /// Encodes and sends a request frame; returns its id.
    fn send(
        &mut self,
        command: &str,
        args: &Value,
        session_id: Option<&str>,
    ) -> Result<u64, FrameError> {
        let id = self.next_id;
        let frame = encode_frame(
            &OutgoingRequest {
                id,
                command,
                args,
                session_id,
            },
            self.settings.max_frame_bytes,
        )?;
        self.next_id += 1;
        // A closed writer is noticed by the reader (EOF), which fails what is pending.
        if let Some(writer) = &self.writer {
            let _ = writer.send(frame);
        }
        Ok(id)
    }

    /// Sends one of the worker's own small requests (ping, shutdown, cleanup_session).
    fn send_control(&mut self, command: &'static str, args: Value, pending: Pending) {
        match self.send(command, &args, None) {
            Ok(id) => {
                self.pending.insert(id, pending);
            }
            Err(e) => log::error!("worker {}: cannot encode `{command}`: {e}", self.id()),
        }
    }

    fn last_output(&self) -> String {
        self.tail.joined()
    }

    fn connect(&mut self, ctx: &mut Context<Self>) -> Result<(), ActorError> {
        let conn = self.launcher.launch(&self.state.id)?;
        self.pid = conn.process.as_ref().map(ChildProcess::pid);
        self.process = conn.process;
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        actix::spawn(write_frames(self.state.id.clone(), conn.writer, rx));
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
        self.become_gone(ctx);
        self.notify(WorkerEventKind::StartFailed { error });
        self.kill_now();
    }

    /// The process is (about to be) gone: no more requests go out, and the actor waits
    /// for [`Release`].
    fn become_gone(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Gone;
        self.state.health = Health::Stopped;
        self.writer = None;
        ctx.run_later(RELEASE_FALLBACK, |_, ctx| ctx.stop());
    }

    /// Kill the process group at once and reap it in the background.
    fn kill_now(&mut self) {
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
    }

    /// Every request the process held whose caller is still waiting, timers cancelled.
    fn take_orphans(&mut self, ctx: &mut Context<Self>) -> Vec<Job> {
        let mut orphans = Vec::new();
        for (_, pending) in self.pending.drain() {
            if let Pending::Request(InFlight { job, timer, .. }) = pending {
                if let Some(timer) = timer {
                    ctx.cancel_future(timer);
                }
                orphans.extend(job);
            }
        }
        orphans
    }

    fn on_response(&mut self, response: Response, ctx: &mut Context<Self>) {
        if let Response::Event { id, event } = response {
            self.on_event(id, event);
            return;
        }
        let id = response.id();
        let Some(pending) = self.pending.remove(&id) else {
            log::warn!(
                "worker {}: ignoring an answer to unknown request {id}",
                self.id()
            );
            return;
        };
        let result = match response {
            Response::Success { result, .. } => Ok(result),
            Response::Failure { error, .. } => Err(error),
            Response::Event { .. } => unreachable!("handled above"),
        };
        match pending {
            Pending::Init => self.on_handshake(result, ctx),
            Pending::Health => {
                if let Err(e) = result {
                    self.mark_unhealthy(format!("health ping failed: {}", ActorError::python(e)));
                }
            }
            Pending::Internal(command) => {
                if let Err(e) = result {
                    log::warn!(
                        "worker {}: `{command}` failed: {}",
                        self.id(),
                        ActorError::python(e)
                    );
                }
            }
            Pending::Request(flight) => self.on_answer(flight, result, ctx),
        }
    }

    fn on_event(&mut self, id: u64, event: Value) {
        match self.pending.get(&id) {
            Some(Pending::Request(InFlight {
                job:
                    Some(Job {
                        events: Some(events),
                        ..
                    }),
                ..
            })) => {
                let _ = events.send(event);
            }
            _ => log::debug!("worker {}: event for request {id}: {event}", self.id()),
        }
    }

    fn on_handshake(
        &mut self,
        result: Result<Value, crate::protocol::WireError>,
        ctx: &mut Context<Self>,
    ) {
        // Stopped before the handshake finished: the answer no longer matters.
        if self.phase != Phase::Starting {
            return;
        }
        match result {
            Ok(v) if v.get("status").and_then(Value::as_str) == Some("ok") => {
                self.state.mark_ready();
                self.phase = Phase::Running;
                log::info!("worker {} ready (pid {:?})", self.id(), self.pid);
                self.notify(WorkerEventKind::Ready { pid: self.pid });
            }
            Ok(v) => self.fail_start(
                ActorError::Protocol(format!(
                    "worker {} answered its handshake without status \"ok\": {v}",
                    self.id()
                )),
                ctx,
            ),
            Err(e) => self.fail_start(ActorError::python(e), ctx),
        }
    }

    /// The process answered a user request.
    fn on_answer(
        &mut self,
        flight: InFlight,
        result: Result<Value, crate::protocol::WireError>,
        ctx: &mut Context<Self>,
    ) {
        let InFlight {
            job,
            limited,
            timer,
        } = flight;
        if let Some(timer) = timer {
            ctx.cancel_future(timer);
        }
        let Some(job) = job else {
            // Its caller already got a timeout; the slot is free at last.
            self.state.late_answer();
            self.notify(WorkerEventKind::Freed {
                outcome: Outcome::Late,
                limited,
                latency: Duration::ZERO,
                retire: None,
            });
            return;
        };
        let latency = job.submitted.elapsed();
        let (outcome, retire) = match result {
            Ok(value) => {
                self.state.checkin(Checkin::Ok);
                job.answer(Ok(value));
                (Outcome::Ok, None)
            }
            Err(wire) => match self.classifier.classify(&wire) {
                Disposition::RateLimited { retry_after } => {
                    self.state.checkin(Checkin::CallerError);
                    self.notify(WorkerEventKind::Throttled {
                        job,
                        error: ActorError::python(wire),
                        retry_after,
                        retire: self.retire_reason(),
                    });
                    return;
                }
                Disposition::CallerError => {
                    self.state.checkin(Checkin::CallerError);
                    job.answer(Err(ActorError::python(wire)));
                    (Outcome::Failed, None)
                }
                Disposition::WorkerFault => {
                    self.state.checkin(Checkin::Error);
                    job.answer(Err(ActorError::python(wire)));
                    (Outcome::Failed, None)
                }
                Disposition::Recycle => {
                    self.state.checkin(Checkin::Error);
                    let why = format!("it reported {}", wire.error_type);
                    job.answer(Err(ActorError::python(wire)));
                    (Outcome::Failed, Some(why))
                }
            },
        };
        let retire = retire
            .filter(|_| self.phase == Phase::Running)
            .or_else(|| self.retire_reason());
        self.notify(WorkerEventKind::Freed {
            outcome,
            limited,
            latency,
            retire,
        });
    }

    /// Why the serving worker should be replaced now that a request ended (unhealthy, or
    /// past `pool.max_requests` / `pool.max_lifetime`); never while it is not serving.
    fn retire_reason(&self) -> Option<String> {
        if self.phase != Phase::Running {
            return None;
        }
        self.state
            .retire_reason(self.settings.retire, self.spawned_at.elapsed())
    }

    fn on_request_timeout(&mut self, id: u64, timeout: Duration) {
        let Some(Pending::Request(flight)) = self.pending.get_mut(&id) else {
            return;
        };
        flight.timer = None;
        let Some(job) = flight.job.take() else { return };
        log::warn!(
            "worker {}: `{}` got no answer within {timeout:?} (pool.request_timeout); its slot stays taken until it answers",
            self.id(),
            job.command
        );
        job.answer(Err(ActorError::timeout(
            TimeoutStage::Request,
            timeout,
            "the worker did not answer in time; raise pool.request_timeout for slow programs",
        )));
        // A timeout ends the request like an answer does: it may also make the worker
        // unhealthy or reach its pool.max_requests.
        let drain = if self.state.time_out() {
            Some(format!(
                "{} of its {} slots are stuck past pool.request_timeout",
                self.state.stuck(),
                self.state.capacity()
            ))
        } else {
            self.retire_reason()
        };
        self.notify(WorkerEventKind::TimedOut {
            stuck: self.state.stuck(),
            drain,
        });
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
                if self.pid.is_none() && protocol_error.is_none() {
                    // In-memory worker: the stream closing is its exit. A real process is
                    // finished by the stop ladder's reap instead.
                    self.finish_stop("transport closed".to_owned(), ctx);
                }
                return;
            }
            Phase::Starting => {
                let error = match protocol_error {
                    Some(e) => ActorError::Protocol(format!(
                        "worker {} broke the protocol during its handshake: {e}",
                        self.id()
                    )),
                    None => ActorError::Spawn(format!(
                        "worker {} exited before answering its handshake; its last output:\n{}",
                        self.id(),
                        or_none(&self.last_output())
                    )),
                };
                self.fail_start(error, ctx);
                return;
            }
            Phase::Running => {}
        }
        self.become_gone(ctx);
        let orphans = self.take_orphans(ctx);
        let id = self.state.id.clone();
        if let Some(e) = protocol_error {
            // The worker broke the protocol: its requests fail with a protocol error (a
            // retry could corrupt again), and the process is killed and replaced.
            log::error!("worker {id}: protocol error: {e}; killing it");
            for job in orphans {
                job.answer(Err(ActorError::Protocol(format!(
                    "worker {id} broke the protocol: {e}"
                ))));
            }
            self.notify(WorkerEventKind::Exited(Exit {
                reason: format!("protocol error: {e}"),
                expected: false,
                orphans: Vec::new(),
                last_output: self.last_output(),
                out_of_memory: false,
            }));
            self.kill_now();
            return;
        }
        self.report_death(orphans, ctx);
    }

    /// The child closed its response stream: it died. Reap it (it normally is gone
    /// already) so the log says how it ended and whether memory killed it, then hand its
    /// requests back to the pool.
    fn report_death(&mut self, orphans: Vec<Job>, ctx: &mut Context<Self>) {
        let id = self.state.id.clone();
        let child = self.process.take();
        let fut = async move {
            match child {
                Some(mut child) => {
                    let status = child
                        .terminate(Duration::from_millis(300), Duration::from_millis(500))
                        .await;
                    (process::describe_exit(status), Some((child, status)))
                }
                None => ("its transport closed".to_owned(), None),
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |(how, reaped), act, _| {
            let last_output = act.last_output();
            let out_of_memory = reaped
                .is_some_and(|(child, status)| child.died_of_memory(status, &last_output));
            let reason = if out_of_memory {
                format!("{how}: it ran out of memory (pool.worker_memory_limit or the kernel's OOM killer)")
            } else {
                how
            };
            log::warn!(
                "worker {id} exited unexpectedly ({reason}) with {} request(s) in flight; its last output:\n{}",
                orphans.len(),
                or_none(&last_output)
            );
            act.notify(WorkerEventKind::Exited(Exit {
                reason,
                expected: false,
                orphans,
                last_output,
                out_of_memory,
            }));
        }));
    }

    fn finish_stop(&mut self, how: String, ctx: &mut Context<Self>) {
        if self.phase == Phase::Gone {
            return;
        }
        self.become_gone(ctx);
        log::info!("worker {} stopped: {how}", self.id());
        let orphans = self.take_orphans(ctx);
        self.notify(WorkerEventKind::Exited(Exit {
            reason: how,
            expected: true,
            orphans,
            last_output: String::new(),
            out_of_memory: false,
        }));
        for done in self.stop_waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

fn or_none(output: &str) -> &str {
    if output.is_empty() {
        "(none)"
    } else {
        output
    }
}

/// Writes encoded frames to the request pipe, flushing once the queue is empty: small frames
/// that queue up share a write, a large one goes to the pipe without being copied again.
/// Ends when the actor drops its sender (closing the pipe: the child sees EOF) or the pipe
/// breaks (the reader notices the child's end).
async fn write_frames(
    id: String,
    writer: transport::BoxWrite,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(first) = rx.recv().await {
        let written = async {
            let mut next = Some(first);
            while let Some(frame) = next {
                writer.write_all(&frame).await?;
                next = rx.try_recv().ok();
            }
            writer.flush().await
        };
        if let Err(e) = written.await {
            log::debug!("worker {id}: request pipe closed: {e}");
            return;
        }
    }
    let _ = writer.shutdown().await;
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Err(e) = self.connect(ctx) {
            self.fail_start(e, ctx);
            return;
        }
        let id = self.state.id.clone();
        self.send_control(
            "ping",
            json!({"initialization": true, "worker_id": id}),
            Pending::Init,
        );
        let timeout = self.settings.startup_timeout;
        ctx.run_later(timeout, move |act, ctx| {
            if act.phase == Phase::Starting {
                let error = ActorError::timeout(
                    TimeoutStage::Startup,
                    timeout,
                    format!(
                        "worker {} did not answer its handshake (raise pool.startup_timeout if imports are slow); its last output:\n{}",
                        act.id(),
                        or_none(&act.last_output())
                    ),
                );
                act.fail_start(error, ctx);
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        // Normally reaped already; this only runs with a live child if the actor system
        // itself is torn down. kill_on_drop is the backstop for the leader, this for the group.
        if let Some(child) = &self.process {
            let _ = child.signal_group(libc::SIGKILL);
        }
        for job in self.take_orphans(ctx) {
            job.answer(Err(ActorError::ShuttingDown));
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
        log::info!(target: "dspex::worker", "[{} {stream}] {line}", self.state.id);
        self.tail.push(line);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<Dispatch> for Worker {
    type Result = ();

    fn handle(&mut self, Dispatch(job): Dispatch, ctx: &mut Self::Context) {
        if self.phase != Phase::Running {
            // Raced with a crash or a stop: hand it back unsent.
            self.notify(WorkerEventKind::Returned { job });
            return;
        }
        let sent = self.send(&job.command, &job.args, job.session_id.as_deref());
        let id = match sent {
            Ok(id) => id,
            Err(e) => {
                let error = match e {
                    FrameError::TooLarge { len, max } => ActorError::RequestTooLarge {
                        bytes: len,
                        limit: max,
                    },
                    other => ActorError::Protocol(format!("cannot encode the request: {other}")),
                };
                let limited = job.limited;
                job.answer(Err(error));
                self.notify(WorkerEventKind::Freed {
                    outcome: Outcome::Failed,
                    limited,
                    latency: Duration::ZERO,
                    retire: None,
                });
                return;
            }
        };
        self.state.checkout(job.session_id.as_deref());
        let timer = job.timeout.map(|timeout| {
            ctx.run_later(timeout, move |act, _| act.on_request_timeout(id, timeout))
        });
        let limited = job.limited;
        self.pending.insert(
            id,
            Pending::Request(InFlight {
                job: Some(job),
                limited,
                timer,
            }),
        );
    }
}

impl Handler<HealthCheck> for Worker {
    type Result = ();

    fn handle(&mut self, _: HealthCheck, ctx: &mut Self::Context) {
        if self.phase != Phase::Running
            || (self.state.busy() && !self.settings.ping_when_busy)
            || self.pending.values().any(|c| matches!(c, Pending::Health))
        {
            return;
        }
        let Ok(id) = self.send("ping", &json!({}), None) else {
            return;
        };
        self.pending.insert(id, Pending::Health);
        let timeout = self.settings.health_timeout;
        ctx.run_later(timeout, move |act, _| {
            if let Some(Pending::Health) = act.pending.get(&id) {
                act.pending.remove(&id);
                act.mark_unhealthy(format!("no answer to a health ping within {timeout:?}"));
            }
        });
    }
}

impl Handler<ForgetSession> for Worker {
    type Result = ();

    fn handle(&mut self, msg: ForgetSession, _ctx: &mut Self::Context) {
        let outcome = self.state.checkin(Checkin::SessionCleanup(msg.session_id));
        if let (CheckinOutcome::CleanupSession(session), Phase::Running) = (outcome, self.phase) {
            self.send_control(
                "cleanup_session",
                json!({"session_id": session}),
                Pending::Internal("cleanup_session"),
            );
        }
    }
}

impl Handler<Stop> for Worker {
    type Result = ();

    fn handle(&mut self, msg: Stop, ctx: &mut Self::Context) {
        if let Some(done) = msg.done {
            self.stop_waiters.push(done);
        }
        match self.phase {
            Phase::Gone => {
                for done in self.stop_waiters.drain(..) {
                    let _ = done.send(());
                }
                ctx.stop();
                return;
            }
            Phase::Stopping => return,
            Phase::Starting | Phase::Running => {}
        }
        log::debug!("worker {}: stopping", self.id());
        self.phase = Phase::Stopping;
        self.state.checkin(Checkin::Close);
        self.send_control("shutdown", json!({}), Pending::Internal("shutdown"));
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

impl Handler<Release> for Worker {
    type Result = ();

    fn handle(&mut self, _: Release, ctx: &mut Self::Context) {
        if self.phase == Phase::Gone {
            ctx.stop();
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
