//! Test doubles, and one program API over the three test layers (DESIGN.md "Testing").
//!
//! This module is for test harnesses, dspex's own and its users': it is compiled only
//! with the `testing` feature, so applications do not carry ~2 300 lines of fakes. Turn it
//! on where the tests are:
//!
//! ```toml
//! [dev-dependencies]
//! dspex = { version = "0.1", features = ["testing"] }
//! ```
//!
//! (dspex's own tests do the same with a dev-dependency on itself, so `cargo test` builds
//! everything.)
//!
//! Tests (and tools that want to run the same scenario cheaply or for real) talk to an
//! [`Adapter`] instead of a [`System`](crate::System), so one suite of checks can run
//! against a pure-Rust [`Mock`] (layer 1), the real actors and wire protocol driving a
//! fake worker ([`BridgeMock`], layer 2), or real Python and DSPy ([`PythonAdapter`] as
//! `PythonPort` or `PythonPool`, layer 3). All of them share the semantics of
//! [`Session`](crate::Session): programs are scoped per session, a duplicate id is a
//! `validation` error, an unknown one is `program_not_found`, inputs are validated
//! before anything runs, and outputs come back typed as the signature declares.
//! [`AdapterFactory`] picks an adapter by explicit choice, `DSPEX_TEST_LAYER`, or the
//! configuration.
//!
//! The fakes copy the Python bridge's program semantics (which definitions it refuses,
//! what a chain of thought adds to the outputs, how errors are typed). So that the copies
//! cannot drift from the original, `tests/semantics_table.rs` runs one table of cases
//! (`tests/fixtures/semantics/cases.json`) against the [`Mock`], the [`FakeBridge`] and a
//! real worker. The fakes run `predict` and `chain_of_thought` programs (demos and
//! instructions included); `python` programs need real Python, and the fakes refuse them
//! with a `validation` error that says so.

mod bridge_mock;
mod factory;
mod fake_outputs;
mod mock;
mod python;
mod semantics;
mod system_backed;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::config::{ConfigError, LmConfig};
use crate::error::{Error, Result};
use crate::program::{ModuleKind, ProgramInfo, ProgramSpec};
use crate::signature::{Signature, ValidationError};

pub use bridge_mock::{BridgeMock, FakeBridge};
pub use factory::{AdapterFactory, TEST_LAYER_ENV};
pub use fake_outputs::fake_outputs;
pub use mock::Mock;
pub use python::PythonAdapter;

/// Which adapter implementation is behind a `dyn Adapter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// Pure Rust, no processes, no actors (layer 1).
    Mock,
    /// The real actors and protocol against an in-memory fake worker (layer 2).
    BridgeMock,
    /// Real Python and DSPy, one worker (layer 3).
    PythonPort,
    /// Real Python and DSPy, a pool of workers (layer 3).
    PythonPool,
}

impl AdapterKind {
    /// Every kind, cheapest first.
    pub const ALL: [AdapterKind; 4] = [
        AdapterKind::Mock,
        AdapterKind::BridgeMock,
        AdapterKind::PythonPort,
        AdapterKind::PythonPool,
    ];

    /// `mock`, `bridge_mock`, `python_port` or `python_pool`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Mock => "mock",
            AdapterKind::BridgeMock => "bridge_mock",
            AdapterKind::PythonPort => "python_port",
            AdapterKind::PythonPool => "python_pool",
        }
    }

    /// The test layer this kind implements.
    pub fn layer(self) -> TestLayer {
        match self {
            AdapterKind::Mock => TestLayer::Layer1,
            AdapterKind::BridgeMock => TestLayer::Layer2,
            AdapterKind::PythonPort | AdapterKind::PythonPool => TestLayer::Layer3,
        }
    }
}

impl fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AdapterKind {
    type Err = Error;

    /// The names [`as_str`](Self::as_str) writes; `-` may stand for `_` and case is
    /// ignored, so `Python-Pool` is `python_pool`.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        AdapterKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == wanted)
            .ok_or_else(|| {
                Error::Config(ConfigError {
                    key: None,
                    message: format!(
                        "unknown adapter `{s}`; use one of mock, bridge_mock, python_port, python_pool"
                    ),
                    path: None,
                })
            })
    }
}

/// The three test layers of DESIGN.md ("Testing").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum TestLayer {
    /// `layer_1`: the Mock adapter, pure Rust.
    #[serde(rename = "layer_1")]
    Layer1,
    /// `layer_2`: the real actors and protocol against a fake worker.
    #[serde(rename = "layer_2")]
    Layer2,
    /// `layer_3`: real Python and real DSPy with the `dummy` LM.
    #[serde(rename = "layer_3")]
    Layer3,
}

impl TestLayer {
    /// Every layer, in order.
    pub const ALL: [TestLayer; 3] = [TestLayer::Layer1, TestLayer::Layer2, TestLayer::Layer3];

    /// `layer_1`, `layer_2` or `layer_3`, as `DSPEX_TEST_LAYER` spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            TestLayer::Layer1 => "layer_1",
            TestLayer::Layer2 => "layer_2",
            TestLayer::Layer3 => "layer_3",
        }
    }
}

impl fmt::Display for TestLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an adapter really exercises, so a test can skip or adapt what does not apply
/// (a test about worker crashes needs `processes`, one about prompts needs `real_dspy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Programs are built and run by real DSPy.
    pub real_dspy: bool,
    /// Work runs in OS processes (Python workers) that can crash or be killed.
    pub processes: bool,
    /// Requests go through the actor system and the framed wire protocol.
    pub actors: bool,
    /// Programs are scoped per session (true for every adapter).
    pub sessions: bool,
    /// A model configured with [`Adapter::configure_lm`] is really called; otherwise
    /// the settings are recorded and outputs stay fake.
    pub lm_calls: bool,
    /// The adapter can be told to fail on purpose ([`Mock::fail_next`]).
    pub error_injection: bool,
    /// Outputs come from [`fake_outputs`]: the same program id and inputs give the same
    /// values on every adapter that has this capability.
    pub fake_outputs: bool,
}

/// The LM settings an adapter runs programs with: the `[lm]` section itself.
pub type LmSettings = LmConfig;

/// What [`Adapter::health_check`] reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdapterHealth {
    /// System health vocabulary: `starting`, `healthy`, `degraded`, `failed`, `stopped`.
    pub status: String,
    /// Adapter-specific detail (for system-backed adapters, the whole system status).
    pub details: Value,
}

impl AdapterHealth {
    /// What an adapter reports after [`Adapter::shutdown`].
    pub(crate) fn stopped(kind: AdapterKind) -> Self {
        AdapterHealth {
            status: "stopped".into(),
            details: json!({"adapter": kind}),
        }
    }

    /// Whether the adapter can take work now (`healthy` or `degraded`).
    pub fn is_serving(&self) -> bool {
        matches!(self.status.as_str(), "healthy" | "degraded")
    }
}

/// One program API over every test layer. See the [module docs](self).
///
/// `session: None` is the adapter's own anonymous session, opened once on first use.
/// A named session is opened on first use too, so a test only has to pick unique ids.
///
/// # Examples
///
/// ```
/// # async fn demo() -> dspex::Result<()> {
/// use dspex::testing::{Adapter, Mock};
/// use dspex::{ModuleKind, Signature};
///
/// let adapter = Mock::new();
/// let sig: Signature = "question -> answer, confidence: float".parse()?;
/// adapter.create_program(Some("s1"), "qa", &sig, ModuleKind::Predict).await?;
/// let inputs = serde_json::json!({"question": "What is DSPy?"});
/// let outputs = adapter
///     .execute_program(Some("s1"), "qa", inputs.as_object().unwrap().clone())
///     .await?;
/// assert!(outputs["answer"].is_string() && outputs["confidence"].is_f64());
/// # Ok(()) }
/// # futures::executor::block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait Adapter: Send + Sync {
    /// Which implementation this is.
    fn kind(&self) -> AdapterKind;

    /// The test layers this adapter implements.
    fn supported_layers(&self) -> &'static [TestLayer];

    /// What the adapter really exercises.
    fn capabilities(&self) -> Capabilities;

    /// Define a program of any kind in `session` and build it (see
    /// [`Session::create`](crate::Session::create)).
    ///
    /// # Errors
    ///
    /// `validation` for an empty or duplicate id or a spec the bridge refuses (demos with
    /// fields the signature does not declare, ...), and on the fakes for a `python`
    /// program; `python` when DSPy rejects it (layer 3); system errors (`shutting_down`,
    /// `timeout`, ...).
    async fn create(
        &self,
        session: Option<&str>,
        program_id: &str,
        spec: ProgramSpec,
    ) -> Result<ProgramInfo>;

    /// Define a `predict` or `chain_of_thought` program over `signature` and build it.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    async fn create_program(
        &self,
        session: Option<&str>,
        program_id: &str,
        signature: &Signature,
        module: ModuleKind,
    ) -> Result<ProgramInfo> {
        self.create(
            session,
            program_id,
            ProgramSpec::new(module, signature.clone()),
        )
        .await
    }

    /// Run a program; outputs are typed as its signature declares.
    ///
    /// # Errors
    ///
    /// `validation` for missing, undeclared or mistyped inputs (before anything runs),
    /// `program_not_found`, `lm`, `python`, system errors.
    async fn execute_program(
        &self,
        session: Option<&str>,
        program_id: &str,
        inputs: Map<String, Value>,
    ) -> Result<Map<String, Value>>;

    /// Program ids in `session`, sorted.
    async fn list_programs(&self, session: Option<&str>) -> Result<Vec<String>>;

    /// Delete a program.
    ///
    /// # Errors
    ///
    /// `program_not_found` when `session` has no such program.
    async fn delete_program(&self, session: Option<&str>, program_id: &str) -> Result<()>;

    /// A program's definition.
    ///
    /// # Errors
    ///
    /// `program_not_found` when `session` has no such program.
    async fn get_program_info(
        &self,
        session: Option<&str>,
        program_id: &str,
    ) -> Result<ProgramInfo>;

    /// Use this model for every later execution through this adapter.
    ///
    /// # Errors
    ///
    /// `validation` for settings that cannot be valid (empty model, negative
    /// temperature, zero tokens).
    async fn configure_lm(&self, lm: LmSettings) -> Result<()>;

    /// Whether the adapter can serve, with details.
    async fn health_check(&self) -> Result<AdapterHealth>;

    /// Counters, as JSON (their shape depends on the adapter).
    async fn stats(&self) -> Result<Value>;

    /// Stop what the adapter started itself (a system it was handed keeps running).
    /// Later calls fail with `shutting_down`, except `health_check`, which reports
    /// `stopped`. Idempotent.
    async fn shutdown(&self) -> Result<()>;
}

/// The `validation` error a fake gives for a `python` program: it has no Python to build
/// one with.
pub(crate) fn python_refused(fake: AdapterKind, spec: &ProgramSpec) -> Error {
    Error::Validation(ValidationError::new(
        "module",
        format!(
            "the {fake} adapter runs predict and chain_of_thought programs only; the python program `{}` needs real Python (layer 3, DSPEX_TEST_LAYER=layer_3)",
            spec.factory.as_deref().unwrap_or_default()
        ),
    ))
}

/// The `validation` error for an empty program id, shared so every adapter says the
/// same thing as [`Session::create_program`](crate::Session::create_program).
pub(crate) fn check_program_id(program_id: &str) -> Result<()> {
    if program_id.trim().is_empty() {
        return Err(Error::Validation(ValidationError::new(
            "program_id",
            "a program id must not be empty",
        )));
    }
    Ok(())
}
