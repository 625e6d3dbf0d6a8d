//! `dspex-actors`: a supervised actix actor system over a pool of worker processes
//! that speak a length-framed JSON protocol.
//!
//! This crate knows nothing of DSPy: a command is a name plus JSON arguments, a session's
//! state is opaque JSON, and what a worker's error means is decided by an
//! [`ErrorClassifier`] the layer above passes in. The `dspex` crate builds the DSPy layer on
//! top.
//!
//! The tree is `Supervisor → {SessionRegistry, PoolManager → Worker × N}`. Nothing here
//! is global: every actor is reached through addresses handed down from the [`Supervisor`]
//! that started it, so any number of systems can share a process. Only this facade is
//! public: the [`Supervisor`] and its messages, the session registry's messages, the wire
//! [`protocol`], the launcher interface with the process launcher, the status types, and,
//! with the `testing` feature, the in-memory fakes of `testing`.

mod config;
mod error;
mod launcher;
mod pool;
pub mod protocol;
pub mod session;
mod supervisor;
#[cfg(feature = "testing")]
pub mod testing;
mod worker;

pub use config::{
    ActorsConfig, Affinity, PoolConfig, RateConfig, SessionConfig, ShutdownConfig,
    SupervisorConfig, WorkerConfig,
};
pub use error::{ActorError, Disposition, ErrorClassifier, TimeoutStage, WorkerFaults};
pub use launcher::{
    describe_exit, log_lines, spawn_process, BoxRead, BoxWrite, ChildProcess, Connection,
    LaunchSpec, LogStream, ProcessLauncher, StopStep, Stopped, TransportKind, WorkerLauncher,
    LIFELINE_FD, MAX_LOG_LINE, TRUNCATED_MARK,
};
pub use pool::{LatencySummary, PoolStatus, PoolTotals, RateStatus};
pub use supervisor::{
    AwaitReady, Call, CrashTarget, EventSender, Execute, GetStatus, InjectCrash, Reply,
    RequestTimeout, RestartCounts, RunHealthCheck, ShutdownSystem, Supervisor, SystemHealth,
    SystemStatus, ToRegistry,
};
pub use worker::{Health, WorkerSnapshot, WorkerStats};
