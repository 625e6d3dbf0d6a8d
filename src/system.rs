//! The [`System`] handle: the one public entry point to a running dspex actor system.
//!
//! Each `System` runs its own actix system on a dedicated thread, so the handle works
//! from any async runtime (tokio, actix, or none at all), and any number of systems —
//! even with the same `system.name` — can live in one process without sharing anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dspex_actors::session::{self, SessionInfo, SessionMetrics};
use dspex_actors::{
    ActorError, AwaitReady, Call, CrashTarget, Execute, GetStatus, InjectCrash, ProcessLauncher,
    RunHealthCheck, ShutdownSystem, Supervisor, SystemHealth, SystemStatus, ToRegistry,
    WorkerLauncher,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::program::{ProgramDef, Usage};
use crate::python_env::{self, Progress, PythonEnv};

/// A handle to a running system. Cheap to clone, `Send + Sync`; the system shuts down
/// when [`System::shutdown`] is called or the last handle is dropped.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> dspex::Result<()> {
/// let system = dspex::System::start(dspex::Config::default()).await?;
/// let reply = system.call("echo", serde_json::json!({"hello": "world"})).await?;
/// assert_eq!(reply["echo"]["hello"], "world");
/// system.shutdown(std::time::Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct System {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: Config,
    supervisor: Addr<Supervisor>,
    stop: mpsc::UnboundedSender<()>,
    done: watch::Receiver<bool>,
    programs: ProgramCache,
    usage: Mutex<Usage>,
}

/// The program definitions this process has created or read, per session: so running a
/// program by name does not ask the registry each time. Every change to a session's
/// programs through this handle updates it; the registry stays the truth for other
/// processes and for workers.
#[derive(Default)]
pub(crate) struct ProgramCache {
    defs: Mutex<HashMap<(String, String), Arc<ProgramDef>>>,
}

impl ProgramCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<ProgramDef>>> {
        // Nothing can be left half-done under this lock: a panic elsewhere does not
        // poison what it holds.
        self.defs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, session: &str, program: &str) -> Option<Arc<ProgramDef>> {
        self.lock()
            .get(&(session.to_owned(), program.to_owned()))
            .cloned()
    }

    pub(crate) fn insert(&self, session: &str, program: &str, def: Arc<ProgramDef>) {
        self.lock()
            .insert((session.to_owned(), program.to_owned()), def);
    }

    pub(crate) fn remove(&self, session: &str, program: &str) {
        self.lock()
            .remove(&(session.to_owned(), program.to_owned()));
    }

    pub(crate) fn forget_session(&self, session: &str) {
        self.lock().retain(|(s, _), _| s != session);
    }
}

/// How a [`System`] gets its workers. Built by [`System::builder`].
pub struct Builder {
    config: Config,
    launcher: Option<Arc<dyn WorkerLauncher>>,
    python: Option<PythonEnv>,
    require_dspy: bool,
    wait_ready: usize,
}

impl Builder {
    /// Use this launcher instead of spawning Python (layer-2 tests: the in-memory fake).
    pub fn launcher(mut self, launcher: Arc<dyn WorkerLauncher>) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// Use an already prepared Python environment (e.g. after `dspex setup` showed progress).
    pub fn python_env(mut self, env: PythonEnv) -> Self {
        self.python = Some(env);
        self
    }

    /// Whether the interpreter must import `dspy` (default true). Workers that only run
    /// built-in and user commands can do without.
    pub fn require_dspy(mut self, require: bool) -> Self {
        self.require_dspy = require;
        self
    }

    /// Return from `start` only when this many workers are ready (default 1; capped at
    /// `pool.size`).
    pub fn wait_ready(mut self, workers: usize) -> Self {
        self.wait_ready = workers.max(1);
        self
    }

    /// Start the system: prepare Python (creating the managed venv on first use), spawn
    /// the actor system on its own thread and wait until workers are ready.
    ///
    /// # Errors
    ///
    /// `environment` when Python or the venv cannot be prepared or no worker can start
    /// (the message carries the worker's own error, e.g. a failing handler import).
    pub async fn start(self) -> Result<System> {
        let Builder {
            config,
            launcher,
            python,
            require_dspy,
            wait_ready,
        } = self;
        let name = unique_name(&config.system.name);
        let actors = config.actors_config();
        let (started_tx, started_rx) = oneshot::channel::<Result<Addr<Supervisor>>>();
        let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<()>();
        let (done_tx, done_rx) = watch::channel(false);
        let thread_config = config.clone();
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dspex-{name}"))
            .spawn(move || {
                let launcher = match launcher {
                    Some(launcher) => launcher,
                    None => match python_launcher(&thread_config, python, require_dspy) {
                        Ok(launcher) => launcher,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            let _ = done_tx.send(true);
                            return;
                        }
                    },
                };
                let kill_timeout = thread_config.shutdown.kill_timeout;
                let graceful = thread_config.shutdown.graceful_timeout;
                let runtime = actix_rt::System::new();
                runtime.block_on(async move {
                    let supervisor = Supervisor::new(
                        thread_name.clone(),
                        actors,
                        launcher,
                        crate::error::classify,
                    )
                    .start();
                    let _ = started_tx.send(Ok(supervisor.clone()));
                    if stop_rx.recv().await.is_none() {
                        // Every handle was dropped without a shutdown: stop the workers anyway,
                        // so no Python process outlives its system.
                        log::debug!("system {thread_name}: last handle dropped; shutting down");
                        let stop = supervisor.send(ShutdownSystem {
                            graceful: Duration::ZERO,
                        });
                        let _ = tokio::time::timeout(graceful + kill_timeout * 2, stop).await;
                    }
                });
                drop(runtime);
                let _ = done_tx.send(true);
            });
        if let Err(e) = spawned {
            return Err(Error::Environment(format!(
                "cannot spawn the actor system thread: {e}"
            )));
        }
        let supervisor = started_rx.await.map_err(|_| {
            Error::SystemFailed("the actor system thread ended during start-up".into())
        })??;
        let system = System {
            inner: Arc::new(Inner {
                name,
                config,
                supervisor,
                stop: stop_tx,
                done: done_rx,
                programs: ProgramCache::default(),
                usage: Mutex::new(Usage::default()),
            }),
        };
        let ready = system
            .inner
            .supervisor
            .send(AwaitReady {
                min_ready: wait_ready,
            })
            .await;
        match ready {
            Ok(Ok(())) => Ok(system),
            Ok(Err(e)) => {
                let _ = system.shutdown(Duration::from_secs(1)).await;
                Err(match e {
                    // The LM could not be set up (a missing key, an unknown model): the
                    // message says which setting to fix.
                    ActorError::Python {
                        error_type,
                        message,
                        ..
                    } if error_type == "LMError" || error_type == "InvalidRequest" => {
                        Error::Environment(format!("workers cannot start: {message}"))
                    }
                    ActorError::Python {
                        error_type,
                        message,
                        ..
                    } => {
                        let hint = if system.config().python.handlers.is_empty() {
                            "check the Python environment (`dspex doctor`; `dspex setup` repairs the managed venv)"
                        } else {
                            "check python.handlers and python.path"
                        };
                        Error::Environment(format!(
                            "workers cannot start: the bridge raised {error_type}: {message} ({hint})"
                        ))
                    }
                    other => Error::from(other),
                })
            }
            Err(_) => Err(Error::SystemFailed(
                "the supervisor stopped during start-up".into(),
            )),
        }
    }
}

fn unique_name(base: &str) -> String {
    format!("{base}-{}", random_suffix())
}

/// Eight random hex digits. `RandomState` is seeded afresh for every instance, so
/// distinct systems and sessions get distinct ids without any process-wide counter.
pub(crate) fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:08x}", h.finish() as u32)
}

fn python_launcher(
    config: &Config,
    env: Option<PythonEnv>,
    require_dspy: bool,
) -> Result<Arc<dyn WorkerLauncher>> {
    let env = match env {
        Some(env) => env,
        None => {
            let setup = crate::launch::python_setup(config, require_dspy);
            python_env::ensure(&setup, &mut |p| match p {
                Progress::Step(s) | Progress::Done(s) => log::info!("python env: {s}"),
                Progress::Line(l) => log::debug!("python env: {l}"),
            })?
        }
    };
    let spec = crate::launch::launch_spec(config, &env, require_dspy)?;
    Ok(Arc::new(ProcessLauncher::new(spec)))
}

impl System {
    /// Start a system from `config` with real Python workers. See [`Builder::start`].
    pub async fn start(config: Config) -> Result<System> {
        System::builder(config).start().await
    }

    /// Configure how the system starts before starting it.
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            launcher: None,
            python: None,
            require_dspy: true,
            wait_ready: 1,
        }
    }

    /// The unique name of this system (`system.name` plus a random suffix); worker ids
    /// and log lines carry it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration the system was started with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Run one command (built-in, DSPy or user) on some worker.
    ///
    /// # Errors
    ///
    /// `python` when the command raised, `timeout`, `pool_busy`, `worker_crashed`,
    /// `protocol`, `shutting_down`, `system_failed`.
    pub async fn call(&self, command: &str, args: Value) -> Result<Value> {
        self.execute(Call::new(command, args)).await
    }

    /// Run a request described by a [`Call`].
    pub async fn execute(&self, call: Call) -> Result<Value> {
        let (reply, answer) = oneshot::channel();
        self.inner.supervisor.do_send(Execute::new(call, reply));
        match answer.await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(self.gone().await),
        }
    }

    pub(crate) fn programs(&self) -> &ProgramCache {
        &self.inner.programs
    }

    pub(crate) fn record_usage(&self, usage: &Usage) {
        if !usage.is_empty() {
            self.inner
                .usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(usage);
        }
    }

    /// Token usage (and cost, when known) of every program run through this system so
    /// far, per model.
    pub fn usage(&self) -> Usage {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why a request got no answer: the system failed, or it is shutting down.
    async fn gone(&self) -> Error {
        match self.inner.supervisor.send(GetStatus).await {
            Ok(status) if status.health == SystemHealth::Failed => {
                Error::SystemFailed(status.failure.unwrap_or_default())
            }
            Ok(_) => Error::WorkerCrashed(
                "the request was lost while the pool restarted; retry it".into(),
            ),
            Err(_) => Error::ShuttingDown,
        }
    }

    async fn registry<M>(&self, msg: M) -> Result<M::Result>
    where
        M: Message + Clone + Send + 'static,
        M::Result: Send,
        session::SessionRegistry: actix::Handler<M>,
    {
        match self.inner.supervisor.send(ToRegistry(msg)).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::ShuttingDown),
        }
    }

    /// Track a session (idempotent: tracking it again returns the existing one).
    pub async fn track_session(&self, session_id: &str) -> Result<SessionInfo> {
        Ok(self
            .registry(session::Track {
                session_id: session_id.into(),
            })
            .await??)
    }

    /// Mark a session as active now.
    pub async fn touch_session(&self, session_id: &str) -> Result<()> {
        Ok(self
            .registry(session::Touch {
                session_id: session_id.into(),
                create: false,
            })
            .await??)
    }

    /// End a session; workers drop its cached programs.
    ///
    /// # Errors
    ///
    /// `session_not_found` for an unknown id.
    pub async fn end_session(&self, session_id: &str) -> Result<SessionInfo> {
        self.inner.programs.forget_session(session_id);
        Ok(self
            .registry(session::End {
                session_id: session_id.into(),
            })
            .await??)
    }

    /// One session.
    pub async fn session(&self, session_id: &str) -> Result<SessionInfo> {
        Ok(self
            .registry(session::Get {
                session_id: session_id.into(),
            })
            .await??)
    }

    /// All sessions, sorted by id.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>> {
        self.registry(session::List).await
    }

    /// Remove sessions idle longer than `session.ttl` now; returns their ids.
    pub async fn sweep_sessions(&self) -> Result<Vec<String>> {
        self.registry(session::Sweep).await
    }

    /// Session counters.
    pub async fn session_metrics(&self) -> Result<SessionMetrics> {
        self.registry(session::Metrics).await
    }

    /// A session's opaque JSON state.
    pub async fn session_state(&self, session_id: &str) -> Result<Value> {
        Ok(self
            .registry(session::GetState {
                session_id: session_id.into(),
            })
            .await??)
    }

    /// Change a session's state atomically (inside the registry); returns what `update`
    /// returned.
    pub async fn update_session_state<F>(&self, session_id: &str, update: F) -> Result<Value>
    where
        F: Fn(&mut Value) -> std::result::Result<Value, ActorError> + Send + Sync + 'static,
    {
        // The state holds the session's programs: what this process cached of them may
        // no longer be what the registry has.
        self.inner.programs.forget_session(session_id);
        Ok(self
            .registry(session::UpdateState {
                session_id: session_id.into(),
                update: Arc::new(update),
            })
            .await??)
    }

    /// Health, workers, sessions and metrics.
    pub async fn status(&self) -> Result<SystemStatus> {
        self.inner
            .supervisor
            .send(GetStatus)
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// System health alone.
    pub async fn health(&self) -> SystemHealth {
        match self.status().await {
            Ok(status) => status.health,
            Err(_) => SystemHealth::Stopped,
        }
    }

    /// Ping every idle worker now, then report status (unhealthy workers get replaced).
    pub async fn health_check(&self) -> Result<SystemStatus> {
        self.inner.supervisor.do_send(RunHealthCheck);
        self.status().await
    }

    /// Wait until at least `workers` workers are ready (capped at `pool.size`).
    pub async fn wait_ready(&self, workers: usize) -> Result<()> {
        match self
            .inner
            .supervisor
            .send(AwaitReady { min_ready: workers })
            .await
        {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::ShuttingDown),
        }
    }

    /// Graceful shutdown: new work is refused, running and queued requests get until
    /// `graceful` to finish, then every worker is stopped by the ladder. Returns once no
    /// worker process remains and the actor thread has ended. Idempotent.
    pub async fn shutdown(&self, graceful: Duration) -> Result<()> {
        if !*self.inner.done.borrow() {
            let _ = self
                .inner
                .supervisor
                .send(ShutdownSystem { graceful })
                .await;
            let _ = self.inner.stop.send(());
        }
        let mut done = self.inner.done.clone();
        let _ = done.wait_for(|d| *d).await;
        Ok(())
    }

    /// Whether the system has shut down.
    pub fn is_stopped(&self) -> bool {
        *self.inner.done.borrow()
    }

    /// Fault injection for supervision tests: make a child actor panic.
    #[doc(hidden)]
    pub fn inject_crash(&self, target: CrashTarget) {
        self.inner.supervisor.do_send(InjectCrash(target));
    }
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("name", &self.inner.name)
            .finish()
    }
}
