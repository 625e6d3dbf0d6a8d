//! An in-memory transport with a scripted fake worker: layer 2 of the test strategy in
//! DESIGN.md.
//!
//! [`InMemoryLauncher`] plugs into the real actors in place of the process launcher. Each
//! launch creates in-memory pipes and starts a task that speaks the real framed protocol
//! (the same [`FrameCodec`] the host uses), so everything above the OS process is
//! exercised: framing, correlation by id, timeouts, crashes, protocol errors. What the
//! fake does with each request is decided by a script, a closure returning a
//! [`FakeAction`]; the launcher counts launches and records every request that reached a
//! worker so that tests can assert on them.

use crate::error::ActorError;
use crate::launcher::WorkerLauncher;
use crate::launcher::{BoxRead, Connection, LogStream};
use crate::protocol::{FrameCodec, Request, Response, WireError, DEFAULT_MAX_FRAME};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Capacity of each in-memory pipe. Small enough that a large frame exercises
/// back-pressure and partial reads, large enough for ordinary requests in one go.
const PIPE_CAPACITY: usize = 64 * 1024;

/// What the fake worker does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum FakeAction {
    /// Answer with success and this result.
    Reply(Value),
    /// Answer with a failure of this type and message.
    Fail { error_type: String, message: String },
    /// Answer with this structured error (extra fields included).
    Error(WireError),
    /// Never answer this request, like a call stuck in Python; other requests are still
    /// answered. The fake still ends when its request stream is closed or it dies.
    Hang,
    /// Never answer anything again, this request or any other, like a process that was
    /// stopped (SIGSTOP). The fake still ends when its request stream is closed.
    Freeze,
    /// Drop every pipe end at once without answering, like a crashed process.
    Die,
    /// Write these bytes to the response stream as they are (no framing added).
    Raw(Vec<u8>),
    /// Wait, then do the inner action. Requests run concurrently, as in the Python worker,
    /// so a delay holds up only this request.
    Delay(Duration, Box<FakeAction>),
    /// Send an event frame for this request, then do the inner action.
    Emit(Value, Box<FakeAction>),
    /// Answer with success, then end as a worker does after `shutdown`.
    ReplyAndExit(Value),
    /// Write `line` to the fake's stdout or stderr log stream, then do `then`.
    Print {
        stream: LogStream,
        line: String,
        then: Box<FakeAction>,
    },
}

impl FakeAction {
    /// A failure with the given Python-style error type and message.
    pub fn fail(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        FakeAction::Fail {
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// `then`, after waiting `delay`.
    pub fn delay(delay: Duration, then: FakeAction) -> Self {
        FakeAction::Delay(delay, Box::new(then))
    }

    /// `then`, after sending `event` as an event frame of the request.
    pub fn emit(event: Value, then: FakeAction) -> Self {
        FakeAction::Emit(event, Box::new(then))
    }

    /// `then`, after printing `line` to the given log stream.
    pub fn print(stream: LogStream, line: impl Into<String>, then: FakeAction) -> Self {
        FakeAction::Print {
            stream,
            line: line.into(),
            then: Box::new(then),
        }
    }
}

/// What the default script does, usable as the fallback of a custom script:
/// `ping` → `{"status": "ok", "worker_id"}`, `echo` → `{"echo": args}`, `shutdown` → a reply
/// and the end of the worker, `cleanup_session` → `{"status": "ok", "session_id"}`, and an
/// `UnknownCommand` failure for anything else.
///
/// # Examples
///
/// ```
/// use dspex_actors::testing::{default_action, FakeAction, InMemoryLauncher};
///
/// // Crash on `boom`, behave normally otherwise.
/// let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
///     "boom" => FakeAction::Die,
///     _ => default_action(worker_id, req),
/// });
/// assert_eq!(launcher.launches(), 0);
/// ```
pub fn default_action(worker_id: &str, req: &Request) -> FakeAction {
    match req.command.as_str() {
        "ping" => FakeAction::Reply(json!({"status": "ok", "worker_id": worker_id})),
        "echo" => FakeAction::Reply(json!({"echo": req.args})),
        "shutdown" => {
            FakeAction::ReplyAndExit(json!({"status": "shutting_down", "worker_id": worker_id}))
        }
        "cleanup_session" => FakeAction::Reply(json!({
            "status": "ok",
            "session_id": req.args.get("session_id").cloned().unwrap_or(Value::Null),
        })),
        other => FakeAction::fail("UnknownCommand", format!("unknown command `{other}`")),
    }
}

type Script = dyn Fn(&str, &Request) -> FakeAction + Send + Sync;
type LaunchFilter = dyn Fn(usize) -> bool + Send + Sync;

/// Counters and the request log, shared by the launcher's clones and its fake workers.
#[derive(Default)]
struct Shared {
    launches: AtomicUsize,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    log: Mutex<Vec<(String, Request)>>,
}

impl Shared {
    fn record(&self, worker_id: &str, req: &Request) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        // A poisoned lock only means a test thread panicked while pushing; the log itself
        // is still usable.
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.push((worker_id.to_owned(), req.clone()));
    }
}

/// A [`WorkerLauncher`] whose workers are in-memory fakes driven by a script.
///
/// Clones share counters and the request log, so a test can keep one clone and hand
/// another to the system.
///
/// `launch` must run inside a tokio runtime (the actix system's is fine): it spawns the
/// fake worker's task there, and the fake lives until its request stream is closed, it
/// dies by script, or the runtime shuts down.
#[derive(Clone)]
pub struct InMemoryLauncher {
    script: Arc<Script>,
    refuse: Option<Arc<LaunchFilter>>,
    max_frame: usize,
    shared: Arc<Shared>,
}

impl fmt::Debug for InMemoryLauncher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryLauncher")
            .field("launches", &self.launches())
            .field("requests_received", &self.requests_received())
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryLauncher {
    fn default() -> Self {
        InMemoryLauncher::new()
    }
}

impl InMemoryLauncher {
    /// Fake workers following [`default_action`].
    pub fn new() -> Self {
        InMemoryLauncher::with_script(default_action)
    }

    /// Fake workers following `script`, called with the worker id and each request.
    pub fn with_script(
        script: impl Fn(&str, &Request) -> FakeAction + Send + Sync + 'static,
    ) -> Self {
        InMemoryLauncher {
            script: Arc::new(script),
            refuse: None,
            max_frame: DEFAULT_MAX_FRAME,
            shared: Arc::default(),
        }
    }

    /// Makes launch number `n` (counting from 0, over all clones) fail with
    /// [`ActorError::Spawn`] when `refuse(n)` is true, as if the program could not start.
    pub fn refuse_launch_when(
        mut self,
        refuse: impl Fn(usize) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.refuse = Some(Arc::new(refuse));
        self
    }

    /// The largest frame the fake workers accept and send (default 64 MiB).
    pub fn max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// How many launches were attempted, refused ones included.
    pub fn launches(&self) -> usize {
        self.shared.launches.load(Ordering::SeqCst)
    }

    /// The most requests any fake workers were handling at the same moment, together.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// How many requests reached any fake worker.
    pub fn requests_received(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request that reached a fake worker, with that worker's id, in arrival order.
    pub fn requests(&self) -> Vec<(String, Request)> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The commands that reached the worker `worker_id`, in arrival order.
    pub fn commands_for(&self, worker_id: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|(id, _)| id == worker_id)
            .map(|(_, req)| req.command)
            .collect()
    }
}

impl WorkerLauncher for InMemoryLauncher {
    fn launch(&self, worker_id: &str) -> Result<Connection, ActorError> {
        let n = self.shared.launches.fetch_add(1, Ordering::SeqCst);
        if self.refuse.as_ref().is_some_and(|refuse| refuse(n)) {
            return Err(ActorError::Spawn(format!(
                "worker {worker_id}: in-memory launch #{n} refused by the test"
            )));
        }
        let (host_writer, fake_reader) = tokio::io::duplex(PIPE_CAPACITY);
        let (fake_writer, host_reader) = tokio::io::duplex(PIPE_CAPACITY);
        let (stdout, host_stdout) = tokio::io::duplex(PIPE_CAPACITY);
        let (stderr, host_stderr) = tokio::io::duplex(PIPE_CAPACITY);
        let fake = FakeWorker {
            worker_id: worker_id.to_owned(),
            script: Arc::clone(&self.script),
            shared: Arc::clone(&self.shared),
            stdout,
            stderr,
        };
        let codec = FrameCodec::<Request, Response>::new(self.max_frame);
        tokio::spawn(fake.run(
            FramedRead::new(fake_reader, codec.clone()),
            FramedWrite::new(fake_writer, codec),
        ));
        let logs: Vec<(LogStream, BoxRead)> = vec![
            (LogStream::Stdout, Box::pin(host_stdout)),
            (LogStream::Stderr, Box::pin(host_stderr)),
        ];
        Ok(Connection {
            writer: Box::pin(host_writer),
            reader: Box::pin(host_reader),
            logs,
            process: None,
        })
    }
}

/// What the fake's writer task sends.
enum Out {
    Frame(Response),
    Raw(Vec<u8>),
    /// End the worker as a worker does after `shutdown`.
    Exit,
}

/// State the fake's request tasks share.
struct Running {
    worker_id: String,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Out>,
    stdout: Arc<tokio::sync::Mutex<DuplexStream>>,
    stderr: Arc<tokio::sync::Mutex<DuplexStream>>,
    /// Set by `Die`: every task and pipe of this worker ends at once.
    dead: watch::Sender<bool>,
    /// Set by `Freeze`: nothing more is answered, as with a stopped process.
    frozen: AtomicBool,
    /// Requests still expected to answer (hung ones are not).
    active: watch::Sender<usize>,
}

struct FakeWorker {
    worker_id: String,
    script: Arc<Script>,
    shared: Arc<Shared>,
    stdout: DuplexStream,
    stderr: DuplexStream,
}

type Requests = FramedRead<DuplexStream, FrameCodec<Request, Response>>;
type Responses = FramedWrite<DuplexStream, FrameCodec<Request, Response>>;

impl FakeWorker {
    /// Reads requests and runs each in its own task, as the concurrent Python worker does;
    /// one writer task sends the answers whole, in the order they are ready.
    async fn run(self, mut requests: Requests, responses: Responses) {
        let id = self.worker_id.clone();
        let (out, out_rx) = mpsc::unbounded_channel();
        let (dead, mut dead_rx) = watch::channel(false);
        let running = Arc::new(Running {
            worker_id: id.clone(),
            shared: Arc::clone(&self.shared),
            out,
            stdout: Arc::new(tokio::sync::Mutex::new(self.stdout)),
            stderr: Arc::new(tokio::sync::Mutex::new(self.stderr)),
            dead,
            frozen: AtomicBool::new(false),
            active: watch::channel(0).0,
        });
        let writer = tokio::spawn(write_answers(Arc::clone(&running), responses, out_rx));
        loop {
            let frame = tokio::select! {
                frame = requests.next() => frame,
                _ = dead_rx.wait_for(|d| *d) => break,
            };
            let Some(frame) = frame else { break };
            let req = match frame {
                Ok(req) => req,
                Err(e) => {
                    // A real worker cannot resynchronise a broken stream either.
                    log::debug!("fake worker {id}: bad request frame, exiting: {e}");
                    break;
                }
            };
            self.shared.record(&id, &req);
            if running.frozen.load(Ordering::SeqCst) {
                continue;
            }
            let action = (self.script)(&id, &req);
            // Counted before the task runs, so an end of stream right after waits for it.
            running.active.send_modify(|n| *n += 1);
            tokio::spawn(Arc::clone(&running).perform(action, req));
        }
        // End of the request stream (or death): like the Python worker, answer what is in
        // flight, then exit; a death ends everything at once.
        drop(requests);
        let mut active = running.active.subscribe();
        tokio::select! {
            _ = active.wait_for(|n| *n == 0) => {}
            _ = dead_rx.wait_for(|d| *d) => {}
        }
        let _ = running.out.send(Out::Exit);
        let _ = writer.await;
        let _ = running.dead.send(true);
        log::debug!("fake worker {id}: exiting");
    }
}

async fn write_answers(
    running: Arc<Running>,
    mut responses: Responses,
    mut out: mpsc::UnboundedReceiver<Out>,
) {
    let mut dead = running.dead.subscribe();
    loop {
        let next = tokio::select! {
            next = out.recv() => next,
            _ = dead.wait_for(|d| *d) => return,
        };
        let sent = match next {
            None | Some(Out::Exit) => {
                let _ = running.dead.send(true);
                return;
            }
            Some(_) if running.frozen.load(Ordering::SeqCst) => continue,
            Some(Out::Frame(response)) => responses.send(response).await.is_ok(),
            Some(Out::Raw(bytes)) => {
                let sink = responses.get_mut();
                sink.write_all(&bytes).await.is_ok() && sink.flush().await.is_ok()
            }
        };
        if !sent {
            log::debug!("fake worker {}: cannot answer, exiting", running.worker_id);
            let _ = running.dead.send(true);
            return;
        }
    }
}

impl Running {
    async fn perform(self: Arc<Self>, action: FakeAction, req: Request) {
        let mut dead = self.dead.subscribe();
        let in_flight = self.shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.peak.fetch_max(in_flight, Ordering::SeqCst);
        tokio::select! {
            _ = self.act(action, &req) => self.active.send_modify(|n| *n -= 1),
            _ = dead.wait_for(|d| *d) => {}
        }
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    async fn act(&self, mut action: FakeAction, req: &Request) {
        loop {
            let out = match action {
                FakeAction::Delay(delay, next) => {
                    tokio::time::sleep(delay).await;
                    action = *next;
                    continue;
                }
                FakeAction::Print { stream, line, then } => {
                    let pipe = match stream {
                        LogStream::Stdout => &self.stdout,
                        LogStream::Stderr => &self.stderr,
                    };
                    // Nobody reading the logs is not the fake's problem.
                    let _ = pipe
                        .lock()
                        .await
                        .write_all(format!("{line}\n").as_bytes())
                        .await;
                    action = *then;
                    continue;
                }
                FakeAction::Emit(event, then) => {
                    let _ = self
                        .out
                        .send(Out::Frame(Response::Event { id: req.id, event }));
                    action = *then;
                    continue;
                }
                FakeAction::Hang => {
                    self.active.send_modify(|n| *n -= 1);
                    return std::future::pending().await;
                }
                FakeAction::Freeze => {
                    self.frozen.store(true, Ordering::SeqCst);
                    self.active.send_modify(|n| *n -= 1);
                    return std::future::pending().await;
                }
                FakeAction::Die => {
                    let _ = self.dead.send(true);
                    return;
                }
                FakeAction::Raw(bytes) => Out::Raw(bytes),
                FakeAction::Reply(result) => Out::Frame(success(req.id, result)),
                FakeAction::ReplyAndExit(result) => {
                    let _ = self.out.send(Out::Frame(success(req.id, result)));
                    Out::Exit
                }
                FakeAction::Fail {
                    error_type,
                    message,
                } => Out::Frame(Response::Failure {
                    id: req.id,
                    error: WireError::new(error_type, message),
                }),
                FakeAction::Error(error) => Out::Frame(Response::Failure { id: req.id, error }),
            };
            let _ = self.out.send(out);
            return;
        }
    }
}

fn success(id: u64, result: Value) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .ok();
    Response::Success {
        id,
        result,
        timestamp: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameError;
    use tokio::io::AsyncReadExt;

    type HostRead = FramedRead<BoxRead, FrameCodec<Response, Request>>;
    type HostWrite = FramedWrite<crate::launcher::BoxWrite, FrameCodec<Response, Request>>;

    fn connect(launcher: &InMemoryLauncher, worker_id: &str) -> (HostWrite, HostRead, Connection) {
        let mut conn = launcher.launch(worker_id).unwrap();
        let writer = std::mem::replace(&mut conn.writer, Box::pin(tokio::io::sink()));
        let reader = std::mem::replace(&mut conn.reader, Box::pin(tokio::io::empty()));
        (
            FramedWrite::new(writer, FrameCodec::default()),
            FramedRead::new(reader, FrameCodec::default()),
            conn,
        )
    }

    async fn call(
        tx: &mut HostWrite,
        rx: &mut HostRead,
        req: Request,
    ) -> Option<Result<Response, FrameError>> {
        tx.send(req).await.unwrap();
        rx.next().await
    }

    #[tokio::test]
    async fn default_script_answers_ping_with_the_worker_id() {
        let launcher = InMemoryLauncher::new();
        let (mut tx, mut rx, _conn) = connect(&launcher, "w1");
        let resp = call(
            &mut tx,
            &mut rx,
            Request::new(1, "ping", json!({"initialization": true})),
        )
        .await
        .unwrap()
        .unwrap();
        let Response::Success {
            id,
            result,
            timestamp,
        } = resp
        else {
            panic!("expected success, got {resp:?}")
        };
        assert_eq!(id, 1);
        assert_eq!(result, json!({"status": "ok", "worker_id": "w1"}));
        assert!(timestamp.is_some());
    }

    #[tokio::test]
    async fn default_script_echoes_args_and_rejects_unknown_commands() {
        let launcher = InMemoryLauncher::new();
        let (mut tx, mut rx, _conn) = connect(&launcher, "w1");
        let echo = call(
            &mut tx,
            &mut rx,
            Request::new(2, "echo", json!({"x": [1, 2]})),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            matches!(echo, Response::Success { result, .. } if result == json!({"echo": {"x": [1, 2]}}))
        );
        let unknown = call(&mut tx, &mut rx, Request::new(3, "nope", json!({})))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&unknown, Response::Failure { id: 3, error } if error.error_type == "UnknownCommand"),
            "{unknown:?}"
        );
    }

    #[tokio::test]
    async fn shutdown_replies_then_closes_the_response_stream() {
        let launcher = InMemoryLauncher::new();
        let (mut tx, mut rx, _conn) = connect(&launcher, "w1");
        let resp = call(&mut tx, &mut rx, Request::new(1, "shutdown", json!({}))).await;
        assert!(
            matches!(resp, Some(Ok(Response::Success { id: 1, .. }))),
            "{resp:?}"
        );
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn die_closes_every_stream_without_an_answer() {
        let launcher = InMemoryLauncher::with_script(|_, _| FakeAction::Die);
        let (mut tx, mut rx, mut conn) = connect(&launcher, "w1");
        assert!(call(&mut tx, &mut rx, Request::new(1, "ping", json!({})))
            .await
            .is_none());
        for (_, log) in &mut conn.logs {
            let mut rest = Vec::new();
            assert_eq!(log.read_to_end(&mut rest).await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn raw_bytes_reach_the_host_unframed() {
        let launcher =
            InMemoryLauncher::with_script(|_, _| FakeAction::Raw(b"\0\0\0\x03{x}".to_vec()));
        let (mut tx, mut rx, _conn) = connect(&launcher, "w1");
        let resp = call(&mut tx, &mut rx, Request::new(1, "ping", json!({}))).await;
        assert!(matches!(resp, Some(Err(FrameError::Json(_)))), "{resp:?}");
    }

    #[tokio::test]
    async fn hung_request_is_never_answered_but_others_are_and_the_fake_ends_on_close() {
        let launcher = InMemoryLauncher::with_script(|_, req| match req.command.as_str() {
            "hang" => FakeAction::Hang,
            _ => FakeAction::Reply(json!(null)),
        });
        let (mut tx, mut rx, _conn) = connect(&launcher, "w1");
        tx.send(Request::new(1, "hang", json!({}))).await.unwrap();
        tx.send(Request::new(2, "ping", json!({}))).await.unwrap();
        drop(tx);
        // The ping is answered (requests run concurrently), the hung request never; the
        // response stream then ends (the fake exits on close).
        assert!(matches!(
            rx.next().await,
            Some(Ok(Response::Success { id: 2, .. }))
        ));
        assert!(rx.next().await.is_none());
        let ids: Vec<u64> = launcher.requests().iter().map(|(_, r)| r.id).collect();
        assert_eq!(ids, [1, 2]);
    }

    #[tokio::test]
    async fn print_and_delay_run_before_the_inner_action() {
        let launcher = InMemoryLauncher::with_script(|_, _| {
            FakeAction::print(
                LogStream::Stderr,
                "warming up",
                FakeAction::delay(Duration::from_millis(1), FakeAction::Reply(json!(7))),
            )
        });
        let (mut tx, mut rx, mut conn) = connect(&launcher, "w1");
        let resp = call(&mut tx, &mut rx, Request::new(1, "x", json!({}))).await;
        assert!(matches!(resp, Some(Ok(Response::Success { result, .. })) if result == json!(7)));
        let (stream, log) = &mut conn.logs[1];
        assert_eq!(*stream, LogStream::Stderr);
        let mut line = [0u8; 11];
        log.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"warming up\n");
    }

    #[tokio::test]
    async fn requests_are_logged_per_worker_and_launches_counted_across_clones() {
        let launcher = InMemoryLauncher::new();
        let clone = launcher.clone();
        let (mut tx1, mut rx1, _c1) = connect(&clone, "a");
        let (mut tx2, mut rx2, _c2) = connect(&clone, "b");
        call(&mut tx1, &mut rx1, Request::new(1, "ping", json!({}))).await;
        call(&mut tx2, &mut rx2, Request::new(2, "echo", json!({}))).await;
        assert_eq!(launcher.launches(), 2);
        assert_eq!(launcher.requests_received(), 2);
        assert_eq!(launcher.commands_for("a"), ["ping"]);
        assert_eq!(launcher.commands_for("b"), ["echo"]);
    }

    #[tokio::test]
    async fn refused_launch_is_a_spawn_error_and_still_counted() {
        let launcher = InMemoryLauncher::new().refuse_launch_when(|n| n == 0);
        let err = launcher.launch("w1").unwrap_err();
        assert!(
            matches!(err, ActorError::Spawn(ref m) if m.contains("w1")),
            "{err:?}"
        );
        assert!(launcher.launch("w2").is_ok());
        assert_eq!(launcher.launches(), 2);
    }
}
