//! `dspex-actors`: a supervised actix actor system over a pool of worker processes
//! that speak a length-framed JSON protocol.
//!
//! This crate knows nothing of DSPy: a command is a name plus JSON arguments, and a
//! session's state is opaque JSON. The `dspex` crate builds the DSPy layer on top.
//!
//! The tree is `Supervisor → {SessionRegistry, PoolManager → Worker × N}`. Nothing here
//! is global: every actor is reached through addresses handed down from the
//! [`supervisor::Supervisor`] that started it, so any number of systems can share a
//! process.

pub mod config;
pub mod error;
pub mod launcher;
pub mod pool;
pub mod protocol;
pub mod session;
pub mod supervisor;
pub mod testing;
pub mod worker;

pub use config::{
    ActorsConfig, Affinity, PoolConfig, SessionConfig, ShutdownConfig, SupervisorConfig,
    WorkerConfig,
};
pub use error::{ActorError, TimeoutStage};
pub use launcher::WorkerLauncher;
