//! dspex: run DSPy programs from Rust over a supervised pool of Python workers.
//!
//! Start a [`System`] from a [`Config`], open a [`Session`], create programs from
//! [`Signature`]s and execute them; the actor layer (`dspex-actors`) keeps the Python
//! workers alive underneath. See the README for the CLI and configuration reference.

pub mod config;
pub mod error;
pub mod launch;
pub mod program;
pub mod python_env;
pub mod signature;
pub mod system;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::Config;
pub use dspex_actors::Call;
pub use dspex_actors::{Health, SystemHealth, SystemStatus};
pub use error::{Error, Result};
pub use program::{
    EvalReport, Example, Inputs, ModuleKind, OptimizeReport, OptimizeRequest, Optimizer,
    Prediction, Program, ProgramDef, ProgramInfo, ProgramSpec, RowOutcome, Scored, Session,
    StateFile, TokenUsage, Usage,
};
pub use signature::Signature;
pub use system::System;
