//! What every pool test needs: a small configuration, a started supervisor, one-line
//! requests and status, and polling with a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
pub use dspex_actors::protocol::Request;
pub use dspex_actors::testing::{default_action, FakeAction, InMemoryLauncher};
pub use dspex_actors::{
    ActorError, ActorsConfig, Affinity, AwaitReady, Call, Disposition, Execute, GetStatus,
    PoolStatus, Supervisor, SystemHealth, TimeoutStage, WorkerFaults,
};
pub use serde_json::{json, Value};
pub use tokio::sync::oneshot;

/// Anything a test waits on; only reached when the behaviour under test is broken.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// `size` workers of one slot each, no periodic health checks, short waits.
pub fn config(size: usize) -> ActorsConfig {
    let mut c = ActorsConfig::default();
    c.pool.size = size;
    c.pool.worker_concurrency = 1;
    c.pool.startup_concurrency = size;
    c.pool.checkout_timeout = Duration::from_secs(5);
    c.pool.request_timeout = Duration::from_secs(5);
    c.pool.health_check_interval = Duration::ZERO;
    c.shutdown.graceful_timeout = Duration::from_secs(2);
    c.shutdown.kill_timeout = Duration::from_millis(200);
    c
}

/// A supervisor over `launcher`'s fakes, started without waiting for its workers.
pub fn launch(config: ActorsConfig, launcher: &InMemoryLauncher) -> Addr<Supervisor> {
    launch_with(config, launcher, WorkerFaults)
}

/// [`launch`] with a classifier of the test's own.
pub fn launch_with(
    config: ActorsConfig,
    launcher: &InMemoryLauncher,
    classifier: impl dspex_actors::ErrorClassifier,
) -> Addr<Supervisor> {
    Supervisor::new("t".into(), config, Arc::new(launcher.clone()), classifier).start()
}

/// A supervisor over `launcher`'s fakes whose every worker is ready.
pub async fn start(config: ActorsConfig, launcher: &InMemoryLauncher) -> Addr<Supervisor> {
    start_with(config, launcher, WorkerFaults).await
}

/// [`start`] with a classifier of the test's own.
pub async fn start_with(
    config: ActorsConfig,
    launcher: &InMemoryLauncher,
    classifier: impl dspex_actors::ErrorClassifier,
) -> Addr<Supervisor> {
    let size = config.pool.size;
    let sup = launch_with(config, launcher, classifier);
    sup.send(AwaitReady { min_ready: size })
        .await
        .unwrap()
        .unwrap();
    sup
}

/// Sends `msg` built around a fresh reply channel; returns where the answer arrives.
pub fn send(
    sup: &Addr<Supervisor>,
    build: impl FnOnce(oneshot::Sender<Result<Value, ActorError>>) -> Execute,
) -> oneshot::Receiver<Result<Value, ActorError>> {
    let (reply, rx) = oneshot::channel();
    sup.do_send(build(reply));
    rx
}

/// One interactive request, awaited.
pub async fn exec(
    sup: &Addr<Supervisor>,
    command: &str,
    args: Value,
    session: Option<&str>,
) -> Result<Value, ActorError> {
    let rx = send(sup, |reply| {
        let call = Call::new(command, args);
        Execute::new(
            match session {
                Some(s) => call.session(s),
                None => call,
            },
            reply,
        )
    });
    tokio::time::timeout(PATIENCE, rx)
        .await
        .expect("answered in time")
        .expect("every request gets an answer")
}

pub async fn pool_status(sup: &Addr<Supervisor>) -> PoolStatus {
    sup.send(GetStatus).await.unwrap().pool.unwrap()
}

/// Polls `check` until it holds; panics naming `what` after [`PATIENCE`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `size` workers are ready again.
pub async fn wait_full(sup: &Addr<Supervisor>, size: usize) {
    tokio::time::timeout(PATIENCE, sup.send(AwaitReady { min_ready: size }))
        .await
        .expect("pool refilled in time")
        .unwrap()
        .unwrap();
}

/// Which worker answered: the fake echoes its id for `whoami`.
pub fn whoami_script(worker_id: &str, req: &Request) -> FakeAction {
    match req.command.as_str() {
        "whoami" => FakeAction::Reply(json!({"worker": worker_id})),
        _ => default_action(worker_id, req),
    }
}

pub async fn whoami(sup: &Addr<Supervisor>, session: Option<&str>) -> String {
    let v = exec(sup, "whoami", json!({}), session).await.unwrap();
    v["worker"].as_str().unwrap().to_owned()
}
