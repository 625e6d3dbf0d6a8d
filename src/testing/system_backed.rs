//! The adapter core shared by every layer that runs a real [`System`]: BridgeMock
//! (layer 2) and the Python adapters (layer 3).
//!
//! Everything goes through [`Session`], the same API an application uses, so these
//! adapters exercise the real request path (registry, pool, worker, wire protocol) and
//! differ only in what is at the far end of the pipe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;

use super::{check_program_id, AdapterHealth, AdapterKind, LmSettings};
use crate::error::{Error, Result};
use crate::program::{ProgramInfo, ProgramSpec, Session};
use crate::system::System;

/// A [`System`] seen through sessions.
pub(crate) struct SystemBacked {
    kind: AdapterKind,
    system: System,
    /// Whether the adapter started the system, and so stops it on shutdown.
    owned: bool,
    /// The session `None` stands for, opened on first use.
    anonymous: OnceCell<Session>,
    /// Set by `configure_lm`, sent with every execution.
    lm: Mutex<Option<LmSettings>>,
    /// Set by `shutdown`: the adapter refuses work even when the system lives on.
    stopped: AtomicBool,
}

impl SystemBacked {
    pub(crate) fn new(kind: AdapterKind, system: System, owned: bool) -> Self {
        SystemBacked {
            kind,
            system,
            owned,
            anonymous: OnceCell::new(),
            lm: Mutex::new(None),
            stopped: AtomicBool::new(false),
        }
    }

    pub(crate) fn system(&self) -> &System {
        &self.system
    }

    pub(crate) fn kind(&self) -> AdapterKind {
        self.kind
    }

    /// The session a call is about. Named sessions are tracked on every use (tracking is
    /// idempotent and cheap), so a caller never has to open them first and a session
    /// that expired comes back empty rather than failing.
    async fn session(&self, session: Option<&str>) -> Result<Session> {
        self.check_running()?;
        match session {
            Some(id) => self.system.open_session(Some(id)).await,
            None => {
                let anonymous = self
                    .anonymous
                    .get_or_try_init(|| async {
                        let id = format!("{}-anon-{}", self.kind, crate::system::random_suffix());
                        self.system.open_session(Some(&id)).await
                    })
                    .await?;
                Ok(anonymous.clone())
            }
        }
    }

    fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    pub(crate) async fn create(
        &self,
        session: Option<&str>,
        program_id: &str,
        spec: ProgramSpec,
    ) -> Result<ProgramInfo> {
        check_program_id(program_id)?;
        self.session(session).await?.create(program_id, spec).await
    }

    pub(crate) async fn execute_program(
        &self,
        session: Option<&str>,
        program_id: &str,
        inputs: Map<String, Value>,
    ) -> Result<Map<String, Value>> {
        let lm = self
            .lm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(LmSettings::to_wire);
        self.session(session)
            .await?
            .execute_with(program_id, inputs, lm)
            .await
    }

    pub(crate) async fn list_programs(&self, session: Option<&str>) -> Result<Vec<String>> {
        self.session(session).await?.list_programs().await
    }

    pub(crate) async fn delete_program(
        &self,
        session: Option<&str>,
        program_id: &str,
    ) -> Result<()> {
        self.session(session)
            .await?
            .delete_program(program_id)
            .await
    }

    pub(crate) async fn get_program_info(
        &self,
        session: Option<&str>,
        program_id: &str,
    ) -> Result<ProgramInfo> {
        self.session(session).await?.program_info(program_id).await
    }

    pub(crate) fn configure_lm(&self, lm: LmSettings) -> Result<()> {
        self.check_running()?;
        lm.check()?;
        *self.lm.lock().unwrap_or_else(|e| e.into_inner()) = Some(lm);
        Ok(())
    }

    pub(crate) async fn health_check(&self) -> Result<AdapterHealth> {
        if self.stopped.load(Ordering::SeqCst) {
            return Ok(AdapterHealth::stopped(self.kind));
        }
        let status = self.system.status().await?;
        Ok(AdapterHealth {
            status: status.health.as_str().to_owned(),
            details: serde_json::to_value(&status).unwrap_or(Value::Null),
        })
    }

    pub(crate) async fn stats(&self) -> Result<Value> {
        self.check_running()?;
        let status = self.system.status().await?;
        let lm = self.lm.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(json!({
            "adapter": self.kind,
            "system": self.system.name(),
            "health": status.health.as_str(),
            "restarts": status.restarts,
            "pool": status.pool,
            "sessions": status.sessions,
            "lm": lm.as_ref().map(LmSettings::to_wire),
        }))
    }

    /// Stops the system if this adapter started it; otherwise only ends the anonymous
    /// session, so a shared system is left as it was found.
    pub(crate) async fn shutdown(&self) -> Result<()> {
        self.stopped.store(true, Ordering::SeqCst);
        if self.owned {
            let graceful = self.system.config().shutdown.graceful_timeout;
            return self.system.shutdown(graceful).await;
        }
        if let Some(anonymous) = self.anonymous.get() {
            // Already ended (a second shutdown) or expired: nothing left to clean up.
            let _ = anonymous.end().await;
        }
        Ok(())
    }
}

/// Implements [`Adapter`](super::Adapter) for a type whose `core: SystemBacked` field does
/// all the work: the system-backed adapters differ only in their layers and capabilities.
macro_rules! system_backed_adapter {
    ($ty:ty, layers: $layers:expr, capabilities: $caps:expr $(,)?) => {
        #[async_trait::async_trait]
        impl $crate::testing::Adapter for $ty {
            fn kind(&self) -> $crate::testing::AdapterKind {
                self.core.kind()
            }

            fn supported_layers(&self) -> &'static [$crate::testing::TestLayer] {
                $layers
            }

            fn capabilities(&self) -> $crate::testing::Capabilities {
                $caps
            }

            async fn create(
                &self,
                session: Option<&str>,
                program_id: &str,
                spec: $crate::program::ProgramSpec,
            ) -> $crate::error::Result<$crate::program::ProgramInfo> {
                self.core.create(session, program_id, spec).await
            }

            async fn execute_program(
                &self,
                session: Option<&str>,
                program_id: &str,
                inputs: serde_json::Map<String, serde_json::Value>,
            ) -> $crate::error::Result<serde_json::Map<String, serde_json::Value>> {
                self.core.execute_program(session, program_id, inputs).await
            }

            async fn list_programs(
                &self,
                session: Option<&str>,
            ) -> $crate::error::Result<Vec<String>> {
                self.core.list_programs(session).await
            }

            async fn delete_program(
                &self,
                session: Option<&str>,
                program_id: &str,
            ) -> $crate::error::Result<()> {
                self.core.delete_program(session, program_id).await
            }

            async fn get_program_info(
                &self,
                session: Option<&str>,
                program_id: &str,
            ) -> $crate::error::Result<$crate::program::ProgramInfo> {
                self.core.get_program_info(session, program_id).await
            }

            async fn configure_lm(
                &self,
                lm: $crate::testing::LmSettings,
            ) -> $crate::error::Result<()> {
                self.core.configure_lm(lm)
            }

            async fn health_check(&self) -> $crate::error::Result<$crate::testing::AdapterHealth> {
                self.core.health_check().await
            }

            async fn stats(&self) -> $crate::error::Result<serde_json::Value> {
                self.core.stats().await
            }

            async fn shutdown(&self) -> $crate::error::Result<()> {
                self.core.shutdown().await
            }
        }
    };
}
pub(crate) use system_backed_adapter;
