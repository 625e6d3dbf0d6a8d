//! Spawning and stopping real worker processes. STUB: owned by the protocol/transport helper.

/// A spawned worker process (own process group).
pub struct ChildProcess {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: u32,
}
