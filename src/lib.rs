//! dspex: run DSPy programs from Rust over a supervised pool of Python workers.
//!
//! Start a [`System`] from a [`Config`], open a [`Session`], create programs from
//! [`Signature`]s and execute them; the actor layer (`dspex-actors`) keeps the Python
//! workers alive underneath. See the README for the CLI and configuration reference.

pub mod adapter;
pub mod config;
pub mod error;
pub mod launch;
pub mod program;
pub mod python_env;
pub mod signature;
pub mod system;

pub use config::Config;
pub use dspex_actors::{Health, SystemHealth, SystemStatus};
pub use error::{Error, Result};
pub use program::{
    Inputs, ModuleKind, Prediction, Program, ProgramDef, ProgramInfo, ProgramSpec, Scored, Session,
    StateFile, TokenUsage, Usage,
};
pub use signature::Signature;
pub use system::{Call, System};
