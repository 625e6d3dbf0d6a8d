//! The layer-1 adapter: the program API in pure Rust, with no process and no actor.
//!
//! It keeps the semantics of the real thing (per-session scopes, the same error kinds
//! for the same mistakes, input validation, typed outputs) so that a test written
//! against it means the same on the other layers, and adds what only a fake can offer:
//! fixed outputs per program, injected failures and call counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use dspex_actors::TimeoutStage;
use serde_json::{json, Map, Value};

use super::fake_outputs::{fake_outputs, fake_text};
use super::{
    check_program_id, python_refused, semantics, Adapter, AdapterHealth, AdapterKind, Capabilities,
    LmSettings, TestLayer,
};
use crate::config::ConfigError;
use crate::error::{Error, ErrorKind, Result, WorkerCrash};
use crate::program::{ModuleKind, ProgramDef, ProgramInfo, ProgramSpec};
use crate::signature::{SignatureError, ValidationError};

/// The pure-Rust adapter (layer 1). See the [module docs](crate::testing).
///
/// # Examples
///
/// ```
/// # async fn demo() -> dspex::Result<()> {
/// use dspex::testing::{Adapter, Mock};
/// use dspex::{ModuleKind, Signature};
///
/// let mock = Mock::new();
/// let sig: Signature = "question -> answer".parse()?;
/// mock.create_program(None, "qa", &sig, ModuleKind::Predict).await?;
/// let fixed = serde_json::json!({"answer": "42"});
/// mock.set_outputs("qa", fixed.as_object().unwrap().clone());
/// mock.fail_when("qa", dspex::error::ErrorKind::Lm);
/// let inputs = serde_json::json!({"question": "?"}).as_object().unwrap().clone();
/// let err = mock.execute_program(None, "qa", inputs.clone()).await.unwrap_err();
/// assert_eq!(err.kind(), "lm");
/// mock.clear_failures();
/// assert_eq!(mock.execute_program(None, "qa", inputs).await?["answer"], "42");
/// assert_eq!(mock.calls("execute_program"), 2);
/// # Ok(()) }
/// # futures::executor::block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
pub struct Mock {
    anonymous: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Session id → program id → definition. Sessions appear on first use.
    sessions: HashMap<String, BTreeMap<String, ProgramDef>>,
    /// Program id → the outputs every execution of it returns.
    outputs: HashMap<String, Map<String, Value>>,
    /// Errors for the next calls, oldest first.
    fail_next: VecDeque<Error>,
    /// Program id → the error kind every call about it fails with.
    fail_when: HashMap<String, ErrorKind>,
    /// Method name → how often it was called (failed calls included).
    calls: BTreeMap<&'static str, u64>,
    lm: Option<LmSettings>,
    stopped: bool,
}

impl Default for Mock {
    fn default() -> Self {
        Mock::new()
    }
}

impl Mock {
    /// An empty mock with its own anonymous session.
    pub fn new() -> Self {
        Mock {
            anonymous: format!("mock-anon-{}", crate::system::random_suffix()),
            state: Mutex::default(),
        }
    }

    /// The id of the session `None` stands for.
    pub fn anonymous_session(&self) -> &str {
        &self.anonymous
    }

    /// Every later execution of `program_id` (in any session) returns `outputs`,
    /// checked and typed against the program's signature like real outputs, so outputs
    /// that do not fit the signature make the execution fail with `validation`.
    pub fn set_outputs(&self, program_id: &str, outputs: Map<String, Value>) {
        self.lock().outputs.insert(program_id.to_owned(), outputs);
    }

    /// Back to generated outputs for `program_id`.
    pub fn clear_outputs(&self, program_id: &str) {
        self.lock().outputs.remove(program_id);
    }

    /// The next call of any async method fails with `error` (calls queue up when this
    /// is used more than once).
    pub fn fail_next(&self, error: Error) {
        self.lock().fail_next.push_back(error);
    }

    /// Every create, execute, delete or info call about `program_id` (in any session)
    /// fails with an error of `kind` (any of [`ErrorKind::ALL`]) until
    /// [`clear_failures`](Self::clear_failures).
    pub fn fail_when(&self, program_id: &str, kind: ErrorKind) {
        self.lock().fail_when.insert(program_id.to_owned(), kind);
    }

    /// Forget every injected failure, pending or standing.
    pub fn clear_failures(&self) {
        let mut state = self.lock();
        state.fail_next.clear();
        state.fail_when.clear();
    }

    /// How often the trait method `method` (e.g. `"execute_program"`) was called,
    /// failed calls included.
    pub fn calls(&self, method: &str) -> u64 {
        self.lock().calls.get(method).copied().unwrap_or(0)
    }

    /// Every method's call count.
    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        self.lock()
            .calls
            .iter()
            .map(|(method, n)| ((*method).to_owned(), *n))
            .collect()
    }

    /// The settings of the last successful [`Adapter::configure_lm`], if any.
    pub fn lm(&self) -> Option<LmSettings> {
        self.lock().lm.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent data behind:
        // every update below is a single insert or remove.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session_id(&self, session: Option<&str>) -> String {
        session.unwrap_or(&self.anonymous).to_owned()
    }

    /// Counts the call, then applies the failures that concern it.
    fn enter(
        &self,
        method: &'static str,
        program_id: Option<&str>,
        session: &str,
    ) -> Result<MutexGuard<'_, State>> {
        let mut state = self.lock();
        *state.calls.entry(method).or_default() += 1;
        if let Some(error) = state.fail_next.pop_front() {
            return Err(error);
        }
        if state.stopped {
            return Err(Error::ShuttingDown);
        }
        if let Some(kind) = program_id.and_then(|id| state.fail_when.get(id)) {
            return Err(injected(*kind, program_id.unwrap_or_default(), session));
        }
        Ok(state)
    }
}

/// An error of `kind` about `program_id`, worded like the real one would be.
fn injected(kind: ErrorKind, program_id: &str, session: &str) -> Error {
    let message = format!("injected by Mock::fail_when for program `{program_id}`");
    match kind {
        ErrorKind::Config => Error::Config(ConfigError {
            key: None,
            message,
            path: None,
        }),
        ErrorKind::Environment => Error::Environment(message),
        ErrorKind::Input => Error::Input(message),
        ErrorKind::Signature => Error::Signature(SignatureError::new(message)),
        ErrorKind::Validation => Error::Validation(ValidationError::new("program_id", message)),
        ErrorKind::Timeout => Error::Timeout {
            stage: TimeoutStage::Request,
            message,
        },
        ErrorKind::PoolBusy => Error::PoolBusy(message),
        ErrorKind::WorkerCrashed => Error::WorkerCrashed(WorkerCrash::from(message)),
        ErrorKind::Protocol => Error::Protocol(message),
        ErrorKind::Python => Error::Python {
            error_type: "RuntimeError".into(),
            message,
            traceback: None,
        },
        ErrorKind::Lm => Error::Lm(message),
        ErrorKind::RateLimited => Error::RateLimited(message),
        ErrorKind::SessionNotFound => Error::SessionNotFound(session.to_owned()),
        ErrorKind::ProgramNotFound => Error::ProgramNotFound {
            program_id: program_id.to_owned(),
            session: session.to_owned(),
        },
        ErrorKind::ShuttingDown => Error::ShuttingDown,
        ErrorKind::SystemFailed => Error::SystemFailed(message),
    }
}

/// What [`Session::program_info`](crate::Session::program_info) reports for `def`.
pub(super) fn program_info(def: &ProgramDef, session: &str) -> ProgramInfo {
    ProgramInfo::of(def, session)
}

fn not_found(program_id: &str, session: &str) -> Error {
    Error::ProgramNotFound {
        program_id: program_id.to_owned(),
        session: session.to_owned(),
    }
}

#[async_trait]
impl Adapter for Mock {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Mock
    }

    fn supported_layers(&self) -> &'static [TestLayer] {
        &[TestLayer::Layer1]
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            real_dspy: false,
            processes: false,
            actors: false,
            sessions: true,
            lm_calls: false,
            error_injection: true,
            fake_outputs: true,
        }
    }

    async fn create(
        &self,
        session: Option<&str>,
        program_id: &str,
        spec: ProgramSpec,
    ) -> Result<ProgramInfo> {
        let sid = self.session_id(session);
        let mut state = self.enter("create_program", Some(program_id), &sid)?;
        check_program_id(program_id)?;
        let programs = state.sessions.entry(sid.clone()).or_default();
        if programs.contains_key(program_id) {
            return Err(Error::Validation(ValidationError::new(
                "program_id",
                format!(
                    "program `{program_id}` already exists in session `{sid}`; delete it first or choose another id"
                ),
            )));
        }
        if spec.module == ModuleKind::Python {
            return Err(python_refused(AdapterKind::Mock, &spec));
        }
        let def = spec.resolve(program_id)?;
        semantics::check_spec(&def.spec)
            .map_err(|message| Error::Validation(ValidationError::new("demos", message)))?;
        let info = program_info(&def, &sid);
        programs.insert(program_id.to_owned(), def);
        Ok(info)
    }

    async fn execute_program(
        &self,
        session: Option<&str>,
        program_id: &str,
        inputs: Map<String, Value>,
    ) -> Result<Map<String, Value>> {
        let sid = self.session_id(session);
        let state = self.enter("execute_program", Some(program_id), &sid)?;
        let def = state
            .sessions
            .get(&sid)
            .and_then(|programs| programs.get(program_id))
            .ok_or_else(|| not_found(program_id, &sid))?;
        def.signature()
            .expect("a signature program")
            .validate_inputs(&inputs)?;
        let adds_reasoning = def.module() == ModuleKind::ChainOfThought
            && def
                .signature()
                .expect("a signature program")
                .output("reasoning")
                .is_none();
        let raw = match state.outputs.get(program_id) {
            Some(fixed) => fixed.clone(),
            None => {
                let mut raw = fake_outputs(
                    program_id,
                    def.signature().expect("a signature program"),
                    &inputs,
                );
                if adds_reasoning {
                    raw.insert(
                        "reasoning".into(),
                        fake_text(program_id, &inputs, "reasoning"),
                    );
                }
                raw
            }
        };
        let mut outputs = def
            .signature()
            .expect("a signature program")
            .decode_outputs(&Value::Object(raw.clone()))?;
        // As `Session::execute`: chain-of-thought's own rationale is kept when it is text.
        if adds_reasoning {
            if let Some(reasoning) = raw.get("reasoning").filter(|r| r.is_string()) {
                outputs.insert("reasoning".into(), reasoning.clone());
            }
        }
        Ok(outputs)
    }

    async fn list_programs(&self, session: Option<&str>) -> Result<Vec<String>> {
        let sid = self.session_id(session);
        let state = self.enter("list_programs", None, &sid)?;
        // BTreeMap keys: already sorted.
        Ok(state
            .sessions
            .get(&sid)
            .map(|programs| programs.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn delete_program(&self, session: Option<&str>, program_id: &str) -> Result<()> {
        let sid = self.session_id(session);
        let mut state = self.enter("delete_program", Some(program_id), &sid)?;
        state
            .sessions
            .get_mut(&sid)
            .and_then(|programs| programs.remove(program_id))
            .map(|_| ())
            .ok_or_else(|| not_found(program_id, &sid))
    }

    async fn get_program_info(
        &self,
        session: Option<&str>,
        program_id: &str,
    ) -> Result<ProgramInfo> {
        let sid = self.session_id(session);
        let state = self.enter("get_program_info", Some(program_id), &sid)?;
        state
            .sessions
            .get(&sid)
            .and_then(|programs| programs.get(program_id))
            .map(|def| program_info(def, &sid))
            .ok_or_else(|| not_found(program_id, &sid))
    }

    async fn configure_lm(&self, lm: LmSettings) -> Result<()> {
        let mut state = self.enter("configure_lm", None, &self.anonymous)?;
        lm.check()?;
        state.lm = Some(lm);
        Ok(())
    }

    async fn health_check(&self) -> Result<AdapterHealth> {
        if self.lock().stopped {
            *self.lock().calls.entry("health_check").or_default() += 1;
            return Ok(AdapterHealth::stopped(AdapterKind::Mock));
        }
        let state = self.enter("health_check", None, &self.anonymous)?;
        Ok(AdapterHealth {
            status: "healthy".into(),
            details: json!({
                "adapter": AdapterKind::Mock,
                "sessions": state.sessions.len(),
                "programs": state.sessions.values().map(BTreeMap::len).sum::<usize>(),
            }),
        })
    }

    async fn stats(&self) -> Result<Value> {
        let state = self.enter("stats", None, &self.anonymous)?;
        Ok(json!({
            "adapter": AdapterKind::Mock,
            "calls": state.calls,
            "sessions": state.sessions.len(),
            "programs": state.sessions.values().map(BTreeMap::len).sum::<usize>(),
            "lm": state.lm.as_ref().map(LmSettings::to_wire),
        }))
    }

    async fn shutdown(&self) -> Result<()> {
        let mut state = self.lock();
        *state.calls.entry("shutdown").or_default() += 1;
        state.stopped = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Signature;

    fn obj(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    fn qa() -> Signature {
        "question -> answer, confidence: float".parse().unwrap()
    }

    async fn with_qa(mock: &Mock, session: Option<&str>) {
        mock.create_program(session, "qa", &qa(), ModuleKind::Predict)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn fixed_outputs_replace_generated_ones_and_are_typed() {
        let mock = Mock::new();
        with_qa(&mock, None).await;
        mock.set_outputs("qa", obj(json!({"answer": 7, "confidence": "0.5"})));
        let out = mock
            .execute_program(None, "qa", obj(json!({"question": "?"})))
            .await
            .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"answer": "7", "confidence": 0.5})
        );
        mock.clear_outputs("qa");
        let out = mock
            .execute_program(None, "qa", obj(json!({"question": "?"})))
            .await
            .unwrap();
        assert_eq!(
            out,
            fake_outputs("qa", &qa(), &obj(json!({"question": "?"})))
        );
    }

    #[tokio::test]
    async fn fixed_outputs_that_miss_a_field_fail_validation_like_bad_worker_outputs() {
        let mock = Mock::new();
        with_qa(&mock, None).await;
        mock.set_outputs("qa", obj(json!({"answer": "x"})));
        let err = mock
            .execute_program(None, "qa", obj(json!({"question": "?"})))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "validation", "{err}");
        assert!(err.to_string().contains("confidence"), "{err}");
    }

    #[tokio::test]
    async fn chain_of_thought_adds_a_reasoning_text_and_refuses_a_declared_one() {
        let mock = Mock::new();
        let inputs = obj(json!({"question": "?"}));
        mock.create_program(None, "cot", &qa(), ModuleKind::ChainOfThought)
            .await
            .unwrap();
        let out = mock
            .execute_program(None, "cot", inputs.clone())
            .await
            .unwrap();
        assert!(out["reasoning"]
            .as_str()
            .unwrap()
            .starts_with("mock reasoning "));
        assert_eq!(out.len(), 3);
        // As in the real bridge, a chain of thought owns its `reasoning` field.
        let declared: Signature = "question -> reasoning: list[str]".parse().unwrap();
        let err = mock
            .create_program(None, "cot2", &declared, ModuleKind::ChainOfThought)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "validation", "{err}");
    }

    #[tokio::test]
    async fn demos_and_instructions_are_kept_and_python_programs_are_refused_clearly() {
        let mock = Mock::new();
        let demo = obj(json!({"question": "2+2?", "answer": "4"}));
        let spec = ProgramSpec::new(ModuleKind::Predict, qa())
            .with_demos(vec![demo])
            .with_instructions("Be brief.");
        let info = mock.create(None, "few", spec).await.unwrap();
        assert_eq!(
            (info.demos, info.instructions.as_deref()),
            (1, Some("Be brief."))
        );
        let bad = ProgramSpec::new(ModuleKind::Predict, qa())
            .with_demos(vec![obj(json!({"question": "q", "bogus": 1}))]);
        let err = mock.create(None, "bad", bad).await.unwrap_err();
        assert_eq!(err.kind(), "validation");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = mock
            .create(None, "mine", ProgramSpec::python("pkg.mod:build"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "validation");
        assert!(
            err.to_string()
                .contains("`pkg.mod:build` needs real Python (layer 3"),
            "{err}"
        );
        assert_eq!(mock.list_programs(None).await.unwrap(), ["few"]);
    }

    #[tokio::test]
    async fn fail_next_fails_exactly_the_next_calls_in_order() {
        let mock = Mock::new();
        mock.fail_next(Error::PoolBusy("first".into()));
        mock.fail_next(Error::Lm("second".into()));
        assert_eq!(
            mock.list_programs(None).await.unwrap_err().kind(),
            "pool_busy"
        );
        assert_eq!(mock.health_check().await.unwrap_err().kind(), "lm");
        assert!(mock.list_programs(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn fail_when_hits_only_calls_about_that_program_until_cleared() {
        let mock = Mock::new();
        with_qa(&mock, Some("s")).await;
        mock.fail_when("qa", ErrorKind::ProgramNotFound);
        mock.fail_when("other", ErrorKind::Timeout);
        let err = mock.get_program_info(Some("s"), "qa").await.unwrap_err();
        assert!(
            matches!(&err, Error::ProgramNotFound { program_id, session } if program_id == "qa" && session == "s"),
            "{err:?}"
        );
        assert_eq!(
            mock.delete_program(Some("s"), "qa")
                .await
                .unwrap_err()
                .kind(),
            "program_not_found"
        );
        let err = mock
            .create_program(Some("s"), "other", &qa(), ModuleKind::Predict)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    stage: TimeoutStage::Request,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(mock.list_programs(Some("s")).await.unwrap(), ["qa"]);
        mock.clear_failures();
        mock.delete_program(Some("s"), "qa").await.unwrap();
    }

    #[test]
    fn every_kind_can_be_injected_and_builds_an_error_of_that_kind() {
        for kind in ErrorKind::ALL {
            assert_eq!(injected(kind, "p", "s").error_kind(), kind);
        }
    }

    #[tokio::test]
    async fn counters_count_every_call_failed_ones_included() {
        let mock = Mock::new();
        with_qa(&mock, None).await;
        let _ = mock
            .create_program(None, "qa", &qa(), ModuleKind::Predict)
            .await;
        let _ = mock.execute_program(None, "nope", Map::new()).await;
        assert_eq!(mock.calls("create_program"), 2);
        assert_eq!(mock.calls("execute_program"), 1);
        assert_eq!(mock.calls("list_programs"), 0);
        assert_eq!(
            mock.call_counts(),
            BTreeMap::from([("create_program".into(), 2), ("execute_program".into(), 1)])
        );
    }

    #[tokio::test]
    async fn configure_lm_keeps_valid_settings_and_rejects_bad_ones() {
        let mock = Mock::new();
        let mut lm = crate::config::Config::default().lm;
        lm.temperature = -1.0;
        let err = mock.configure_lm(lm).await.unwrap_err();
        assert!(
            matches!(&err, Error::Validation(v) if v.field == "lm.temperature"),
            "{err:?}"
        );
        assert_eq!(mock.lm(), None);
        mock.configure_lm(crate::config::Config::default().lm)
            .await
            .unwrap();
        assert_eq!(mock.lm(), Some(crate::config::Config::default().lm));
    }

    #[tokio::test]
    async fn anonymous_session_is_its_own_scope() {
        let mock = Mock::new();
        with_qa(&mock, None).await;
        assert!(mock.list_programs(Some("s")).await.unwrap().is_empty());
        let info = mock.get_program_info(None, "qa").await.unwrap();
        assert_eq!(info.session_id, mock.anonymous_session());
        assert!(mock.anonymous_session().starts_with("mock-anon-"));
    }

    #[tokio::test]
    async fn after_shutdown_every_call_is_shutting_down() {
        let mock = Mock::new();
        mock.shutdown().await.unwrap();
        mock.shutdown().await.unwrap();
        assert_eq!(
            mock.list_programs(None).await.unwrap_err().kind(),
            "shutting_down"
        );
        assert_eq!(mock.health_check().await.unwrap().status, "stopped");
    }
}
