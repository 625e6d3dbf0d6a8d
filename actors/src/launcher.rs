//! How a Worker gets its process (or in-memory stand-in). Spawning goes through the
//! [`WorkerLauncher`] trait so that a pre-forking launcher can be added later without
//! touching the actors.

use crate::error::ActorError;
use crate::worker::transport::Connection;

/// Starts one worker and returns the host's ends of its transport.
///
/// Called on the actor system's thread from inside a running actix context, so
/// implementations may spawn local tasks.
pub trait WorkerLauncher: Send + Sync + 'static {
    fn launch(&self, worker_id: &str) -> Result<Connection, ActorError>;
}
