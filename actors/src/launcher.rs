//! How a Worker gets its process (or in-memory stand-in). Spawning goes through the
//! [`WorkerLauncher`] trait so that a pre-forking launcher can be added later without
//! touching the actors.
//!
//! Two launchers exist: [`ProcessLauncher`] starts real processes, and
//! `testing::InMemoryLauncher` (feature `testing`) runs a scripted fake worker on
//! in-memory pipes for tests. A launcher of one's own builds on [`spawn_process`] and hands
//! back a [`Connection`].

use crate::error::ActorError;
use std::sync::Arc;

pub use crate::worker::process::{
    describe_exit, spawn as spawn_process, ChildProcess, LaunchSpec, ProcessLauncher, StopStep,
    Stopped, TransportKind, LIFELINE_FD,
};
pub use crate::worker::transport::{
    log_lines, BoxRead, BoxWrite, Connection, LogStream, MAX_LOG_LINE, TRUNCATED_MARK,
};

/// Starts one worker and returns the host's ends of its transport.
///
/// Called on the actor system's thread from inside a running actix context, so
/// implementations may spawn local tasks.
pub trait WorkerLauncher: Send + Sync + 'static {
    /// Starts the worker named `worker_id`.
    ///
    /// # Errors
    ///
    /// [`ActorError::Spawn`] when the worker cannot be started.
    fn launch(&self, worker_id: &str) -> Result<Connection, ActorError>;
}

/// Lets a test keep a handle on its launcher (to read counters) while the system owns
/// another.
impl<L: WorkerLauncher + ?Sized> WorkerLauncher for Arc<L> {
    fn launch(&self, worker_id: &str) -> Result<Connection, ActorError> {
        (**self).launch(worker_id)
    }
}

impl<L: WorkerLauncher + ?Sized> WorkerLauncher for Box<L> {
    fn launch(&self, worker_id: &str) -> Result<Connection, ActorError> {
        (**self).launch(worker_id)
    }
}
