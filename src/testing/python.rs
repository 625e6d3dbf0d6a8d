//! The layer-3 adapters: real Python workers running real DSPy.
//!
//! `PythonPort` (one worker) and `PythonPool` (a pool) are the same code over a
//! [`System`]; the kind only records which case a test is exercising. Neither needs a
//! globally named process: the adapter is bound to the system it is given or starts.

use super::system_backed::{system_backed_adapter, SystemBacked};
use super::{AdapterKind, Capabilities, TestLayer};
use crate::config::{Config, ConfigError};
use crate::error::{Error, Result};
use crate::system::System;

/// A `PythonPort` or `PythonPool` adapter over a system of real Python workers.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> dspex::Result<()> {
/// use dspex::testing::{Adapter, AdapterKind, PythonAdapter};
///
/// let adapter = PythonAdapter::start(AdapterKind::PythonPort, &dspex::Config::test()).await?;
/// assert_eq!(adapter.health_check().await?.status, "healthy");
/// adapter.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct PythonAdapter {
    core: SystemBacked,
}

impl PythonAdapter {
    /// Wraps a running system; `PythonPool` when its `pool.size` is above 1, else
    /// `PythonPort`. [`Adapter::shutdown`](crate::testing::Adapter::shutdown) leaves the system running: whoever started
    /// it stops it.
    pub fn new(system: System) -> Self {
        let kind = PythonAdapter::kind_for(system.config());
        PythonAdapter {
            core: SystemBacked::new(kind, system, false),
        }
    }

    /// The Python kind a configuration asks for: `PythonPool` when `pool.size > 1`.
    pub fn kind_for(config: &Config) -> AdapterKind {
        if config.pool.size > 1 {
            AdapterKind::PythonPool
        } else {
            AdapterKind::PythonPort
        }
    }

    /// Starts a system of real Python workers for `kind` and waits until all of them
    /// are ready. `PythonPort` runs one worker whatever `pool.size` says; `PythonPool`
    /// takes `pool.size` as it is. [`Adapter::shutdown`](crate::testing::Adapter::shutdown) stops the system.
    ///
    /// # Errors
    ///
    /// `config` when `kind` is not a Python kind or `PythonPool` is asked for with
    /// `pool.size` 1; `environment` when Python, the managed venv or a worker cannot be
    /// set up.
    pub async fn start(kind: AdapterKind, config: &Config) -> Result<Self> {
        let mut config = config.clone();
        match kind {
            AdapterKind::PythonPort => {
                config.pool.size = 1;
                config.pool.startup_concurrency = 1;
            }
            AdapterKind::PythonPool if config.pool.size > 1 => {}
            AdapterKind::PythonPool => {
                return Err(config_error(
                    Some("pool.size"),
                    format!(
                        "the python_pool adapter needs pool.size > 1, got {}; raise pool.size or use python_port",
                        config.pool.size
                    ),
                ));
            }
            other => {
                return Err(config_error(
                    None,
                    format!("`{other}` is not a Python adapter; use python_port or python_pool"),
                ));
            }
        }
        let size = config.pool.size;
        let system = System::builder(config).wait_ready(size).start().await?;
        Ok(PythonAdapter {
            core: SystemBacked::new(kind, system, true),
        })
    }

    /// The system underneath.
    pub fn system(&self) -> &System {
        self.core.system()
    }
}

pub(super) fn config_error(key: Option<&str>, message: String) -> Error {
    Error::Config(ConfigError {
        key: key.map(str::to_owned),
        message,
        path: None,
    })
}

system_backed_adapter!(
    PythonAdapter,
    layers: &[TestLayer::Layer3],
    capabilities: Capabilities {
            real_dspy: true,
            processes: true,
            actors: true,
            sessions: true,
            lm_calls: true,
            error_injection: false,
            fake_outputs: false,
        },
);
