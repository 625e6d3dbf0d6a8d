//! Choosing and building an adapter: explicit choice, else the `DSPEX_TEST_LAYER`
//! variable, else the configuration.
//!
//! Resolving is a pure function of its three inputs, so the choice can be tested
//! without touching the process environment; only [`AdapterFactory::from_env`] reads
//! the variable.

use super::bridge_mock::BridgeMock;
use super::mock::Mock;
use super::python::{config_error, PythonAdapter};
use super::{Adapter, AdapterKind, TestLayer};
use crate::config::Config;
use crate::error::Result;
use crate::system::System;

/// The environment variable that picks a test layer: `layer_1`, `layer_2` or `layer_3`.
pub const TEST_LAYER_ENV: &str = "DSPEX_TEST_LAYER";

/// Picks and builds adapters. See the [module docs](crate::testing).
///
/// # Examples
///
/// ```
/// use dspex::testing::{AdapterFactory, AdapterKind};
///
/// let mut config = dspex::Config::test();
/// config.pool.size = 2;
/// let kind = AdapterFactory::resolve(None, Some("layer_3"), &config)?;
/// assert_eq!(kind, AdapterKind::PythonPool);
/// let kind = AdapterFactory::resolve(Some(AdapterKind::Mock), Some("layer_3"), &config)?;
/// assert_eq!(kind, AdapterKind::Mock);
/// assert_eq!(AdapterFactory::resolve(None, Some("layer_9"), &config).unwrap_err().kind(), "config");
/// # Ok::<(), dspex::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AdapterFactory;

impl AdapterFactory {
    /// Which adapter to use: `explicit` if given; else the layer named by `env` (the
    /// value of `DSPEX_TEST_LAYER`; empty counts as unset): `layer_1` → `Mock`,
    /// `layer_2` → `BridgeMock`, `layer_3` → `PythonPool` when `pool.size > 1`, else
    /// `PythonPort`; else real Python chosen the same way by `pool.size`.
    ///
    /// # Errors
    ///
    /// `config` when `env` names no layer; the message names `DSPEX_TEST_LAYER` and the
    /// allowed values.
    pub fn resolve(
        explicit: Option<AdapterKind>,
        env: Option<&str>,
        config: &Config,
    ) -> Result<AdapterKind> {
        if let Some(kind) = explicit {
            return Ok(kind);
        }
        let layer = match env.map(str::trim).filter(|value| !value.is_empty()) {
            None => return Ok(PythonAdapter::kind_for(config)),
            Some(value) => TestLayer::ALL
                .into_iter()
                .find(|layer| layer.as_str() == value)
                .ok_or_else(|| {
                    config_error(
                        None,
                        format!(
                            "{TEST_LAYER_ENV}={value:?} is not a test layer; use layer_1 (Mock, pure Rust), \
                             layer_2 (BridgeMock, real actors and a fake worker) or layer_3 (real Python \
                             and DSPy), or unset it to choose by configuration"
                        ),
                    )
                })?,
        };
        Ok(match layer {
            TestLayer::Layer1 => AdapterKind::Mock,
            TestLayer::Layer2 => AdapterKind::BridgeMock,
            TestLayer::Layer3 => PythonAdapter::kind_for(config),
        })
    }

    /// Builds an adapter of `kind`, starting the isolated system it needs (none for
    /// `Mock`, in-memory fakes for `BridgeMock`, real Python for the others, see
    /// [`PythonAdapter::start`]). The adapter's [`shutdown`](Adapter::shutdown) stops
    /// that system.
    ///
    /// # Errors
    ///
    /// `config` for `PythonPool` with `pool.size` 1; `environment` when Python cannot be
    /// set up; whatever starting the system reports.
    pub async fn create(kind: AdapterKind, config: &Config) -> Result<Box<dyn Adapter>> {
        log::debug!("creating a {kind} adapter");
        Ok(match kind {
            AdapterKind::Mock => Box::new(Mock::new()),
            AdapterKind::BridgeMock => Box::new(BridgeMock::start(config).await?),
            AdapterKind::PythonPort | AdapterKind::PythonPool => {
                Box::new(PythonAdapter::start(kind, config).await?)
            }
        })
    }

    /// Resolves with `DSPEX_TEST_LAYER` from the process environment and no explicit
    /// choice, then [`create`](Self::create)s.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve) and [`create`](Self::create).
    pub async fn from_env(config: &Config) -> Result<Box<dyn Adapter>> {
        let env = std::env::var_os(TEST_LAYER_ENV).map(|v| v.to_string_lossy().into_owned());
        let kind = AdapterFactory::resolve(None, env.as_deref(), config)?;
        AdapterFactory::create(kind, config).await
    }

    /// An adapter over a running system of real Python workers (`PythonPool` when its
    /// `pool.size > 1`, else `PythonPort`). The system is not stopped by the adapter's
    /// shutdown.
    pub fn for_system(system: System) -> Box<dyn Adapter> {
        Box::new(PythonAdapter::new(system))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(size: usize) -> Config {
        let mut config = Config::test();
        config.pool.size = size;
        config
    }

    #[test]
    fn empty_or_blank_layer_counts_as_unset() {
        for env in [None, Some(""), Some("  ")] {
            assert_eq!(
                AdapterFactory::resolve(None, env, &config(1)).unwrap(),
                AdapterKind::PythonPort,
                "{env:?}"
            );
        }
    }

    #[test]
    fn layer_names_are_exact_apart_from_surrounding_space() {
        assert_eq!(
            AdapterFactory::resolve(None, Some(" layer_2\n"), &config(1)).unwrap(),
            AdapterKind::BridgeMock
        );
        for bad in ["LAYER_1", "layer1", "1", "layer_4"] {
            let err = AdapterFactory::resolve(None, Some(bad), &config(1)).unwrap_err();
            assert_eq!(err.kind(), "config", "{bad}");
            let text = err.to_string();
            assert!(
                text.contains(TEST_LAYER_ENV) && text.contains(bad),
                "{text}"
            );
            for allowed in ["layer_1", "layer_2", "layer_3"] {
                assert!(text.contains(allowed), "{text}");
            }
        }
    }
}
