//! DSPy programs scoped to sessions.
//!
//! A program is a [`ProgramSpec`]: a `Predict` or `ChainOfThought` over a signature (with
//! optional few-shot demos and optimized instructions), or a user's own `dspy.Module`
//! (`"package.module:factory"`), either with an optional saved state file. Its definition
//! lives in the SessionRegistry (the source of truth, which survives worker deaths and
//! registry restarts); workers only cache built programs. Every request carries the
//! definition with its digest, so any worker can (re)build the program and a worker that
//! has it already skips even reading the definition: affinity is a cache preference,
//! never a correctness need.
//!
//! The per-row path does each thing once: a row's inputs are validated into [`Inputs`]
//! (a type that only validation makes), a program handle carries its definition already
//! serialised with its digest, and [`Session::execute`] finds the definition in the
//! system's own cache instead of asking the registry each time.

mod evaluate;
mod optimize;
mod usage;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use dspex_actors::ActorError;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::signature::{Signature, ValidationError};
use crate::system::System;
use dspex_actors::Call;
pub use evaluate::{evaluate_score, EvalReport, EvalSummary, RowOutcome};
pub use optimize::{Example, OptimizeReport, OptimizeRequest, Optimizer};
pub use usage::{TokenUsage, Usage};

/// Which kind of DSPy module a program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// `dspy.Predict` over a signature.
    Predict,
    /// `dspy.ChainOfThought` over a signature (adds a `reasoning` step before the outputs).
    ChainOfThought,
    /// A user's own `dspy.Module`, built by a factory (`"package.module:factory"`).
    Python,
}

impl ModuleKind {
    /// The modules built from a signature.
    pub const ALL: [ModuleKind; 2] = [ModuleKind::Predict, ModuleKind::ChainOfThought];

    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Predict => "predict",
            ModuleKind::ChainOfThought => "chain_of_thought",
            ModuleKind::Python => "python",
        }
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModuleKind {
    type Err = Error;

    /// `predict`, `chain_of_thought` (`cot` and `chain-of-thought` are accepted too) or
    /// `python`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "predict" => Ok(ModuleKind::Predict),
            "chain_of_thought" | "cot" | "chainofthought" => Ok(ModuleKind::ChainOfThought),
            "python" => Ok(ModuleKind::Python),
            _ => Err(Error::Validation(ValidationError {
                field: "module".into(),
                message: format!("unknown module kind `{s}`; use `predict` or `chain_of_thought`"),
            })),
        }
    }
}

/// Everything a program is made of; what [`Session::create`] takes.
///
/// # Examples
///
/// ```
/// use dspex::{ModuleKind, ProgramSpec, Signature};
/// let optimized = ProgramSpec::new(ModuleKind::Predict, "question -> answer".parse()?)
///     .with_instructions("Answer in one word.");
/// let mine = ProgramSpec::python("my_programs.qa:build")
///     .with_signature(Signature::parse_outputs("answer, confidence: float")?)
///     .with_state("qa_optimized.json");
/// assert_eq!(mine.module, ModuleKind::Python);
/// # let _ = optimized;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramSpec {
    pub module: ModuleKind,
    /// Required for `predict`/`chain_of_thought`. For `python`, optional: a whole
    /// signature (inputs validated in Rust) or outputs alone ([`Signature::parse_outputs`]);
    /// declared outputs come back typed, without any every field of the prediction does.
    pub signature: Option<Signature>,
    /// `python` only: `"package.module:factory"`, a callable returning a `dspy.Module` or a
    /// `dspy.Module` subclass, found via `python.path`.
    pub factory: Option<String>,
    /// Few-shot examples (objects of input and output fields), `predict`/`chain_of_thought`.
    pub demos: Vec<Map<String, Value>>,
    /// Instructions replacing the signature's, `predict`/`chain_of_thought`.
    pub instructions: Option<String>,
    /// A state file saved by DSPy (`program.save("x.json")`), loaded after building.
    pub state: Option<PathBuf>,
    /// Allow a pickle (`.pkl`) state file, which runs code when loaded.
    pub allow_pickle: bool,
}

impl ProgramSpec {
    /// A `predict` or `chain_of_thought` program over `signature`.
    pub fn new(module: ModuleKind, signature: Signature) -> Self {
        ProgramSpec {
            module,
            signature: Some(signature),
            factory: None,
            demos: Vec::new(),
            instructions: None,
            state: None,
            allow_pickle: false,
        }
    }

    /// A user module built by `factory` (`"package.module:factory"`).
    pub fn python(factory: impl Into<String>) -> Self {
        ProgramSpec {
            module: ModuleKind::Python,
            signature: None,
            factory: Some(factory.into()),
            demos: Vec::new(),
            instructions: None,
            state: None,
            allow_pickle: false,
        }
    }

    pub fn with_signature(mut self, signature: Signature) -> Self {
        self.signature = Some(signature);
        self
    }

    pub fn with_demos(mut self, demos: Vec<Map<String, Value>>) -> Self {
        self.demos = demos;
        self
    }

    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = Some(instructions.into());
        self
    }

    pub fn with_state(mut self, path: impl Into<PathBuf>) -> Self {
        self.state = Some(path.into());
        self
    }

    pub fn with_allow_pickle(mut self, allow: bool) -> Self {
        self.allow_pickle = allow;
        self
    }

    /// Checks what can be checked without Python and reads the state file's digest.
    ///
    /// # Errors
    ///
    /// `validation` for a spec that cannot be right (no signature for a signature module,
    /// a factory not of the form `package.module:attribute`, a `reasoning` field in a
    /// chain of thought, demos or instructions on a python program, a state file that is
    /// missing, not JSON, or a pickle without `allow_pickle`).
    pub fn resolve(&self, id: &str) -> Result<ProgramDef> {
        let invalid = |field: &str, message: String| {
            Err(Error::Validation(ValidationError {
                field: field.into(),
                message,
            }))
        };
        if id.trim().is_empty() {
            return invalid("program_id", "a program id must not be empty".into());
        }
        match (self.module, &self.signature, &self.factory) {
            (ModuleKind::Python, _, Some(factory)) if !is_import_path(factory) => {
                return invalid(
                    "factory",
                    format!("`{factory}` is not of the form `package.module:factory`"),
                )
            }
            (ModuleKind::Python, _, Some(_)) => {
                if !self.demos.is_empty() || self.instructions.is_some() {
                    return invalid(
                        "demos",
                        "demos and instructions apply to predict/chain_of_thought programs; a python program takes them from its code or its state file".into(),
                    );
                }
            }
            (ModuleKind::Python, _, None) => {
                return invalid("factory", "a python program needs a factory".into())
            }
            (_, _, Some(_)) => {
                return invalid(
                    "factory",
                    "a factory makes a python program; leave out the module kind".into(),
                )
            }
            (_, None, _) => {
                return invalid(
                    "signature",
                    format!("a {} program needs a signature", self.module),
                )
            }
            (module, Some(signature), None) => {
                if module == ModuleKind::ChainOfThought
                    && signature
                        .inputs
                        .iter()
                        .chain(&signature.outputs)
                        .any(|f| f.name == "reasoning")
                {
                    return invalid(
                        "reasoning",
                        "chain_of_thought adds its own `reasoning` output; rename that field or use `predict`".into(),
                    );
                }
                if signature.inputs.is_empty() {
                    return invalid("signature", "a signature program needs input fields".into());
                }
            }
        }
        let state = match &self.state {
            Some(path) => Some(StateFile::read(path, self.allow_pickle)?),
            None => None,
        };
        Ok(ProgramDef::new(id, self.clone(), state, None))
    }
}

/// Whether `text` has the form `package.module:attribute` that a worker imports a user
/// factory or metric from.
pub fn is_import_path(text: &str) -> bool {
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
    };
    match text.split_once(':') {
        Some((module, attr)) => module.split('.').all(ident) && attr.split('.').all(ident),
        None => false,
    }
}

/// A saved state file and the SHA-256 of its content: a worker rebuilds a program when
/// the digest changes, so editing the file takes effect everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateFile {
    pub path: PathBuf,
    pub digest: String,
}

impl StateFile {
    /// Reads `path` (made absolute) to check it and digest it.
    ///
    /// # Errors
    ///
    /// `validation` naming the file when it is missing, unreadable, not JSON, or a
    /// pickle without `allow_pickle`.
    pub fn read(path: &Path, allow_pickle: bool) -> Result<StateFile> {
        let invalid = |message: String| {
            Error::Validation(ValidationError {
                field: "state".into(),
                message,
            })
        };
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let bytes = std::fs::read(&path)
            .map_err(|e| invalid(format!("cannot read state file `{}`: {e}", path.display())))?;
        let pickle = path.extension().is_some_and(|e| e == "pkl");
        if pickle && !allow_pickle {
            return Err(invalid(format!(
                "state file `{}` is a pickle, which runs code when loaded; save the program as JSON (`program.save(\"x.json\")`) or set allow_pickle",
                path.display()
            )));
        }
        if !pickle {
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                return Err(invalid(format!(
                    "state file `{}` is not JSON ({e}); DSPy writes JSON with `program.save(\"x.json\")`",
                    path.display()
                )));
            }
        }
        Ok(StateFile {
            path,
            digest: hex_sha256(&bytes),
        })
    }
}

pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A program's definition: what the registry stores and every worker builds from.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramDef {
    pub id: String,
    pub spec: ProgramSpec,
    pub state: Option<StateFile>,
    /// The row fields a prediction takes as inputs: the signature's inputs, or for a python
    /// program without declared inputs the parameters of its `forward`, as the worker that
    /// built it reported.
    pub input_fields: Vec<String>,
    /// The definition as the bridge takes it, serialised once.
    wire: Value,
    /// Hex SHA-256 of `wire`'s JSON: the version workers cache by.
    digest: String,
}

impl ProgramDef {
    fn new(
        id: &str,
        spec: ProgramSpec,
        state: Option<StateFile>,
        input_fields: Option<Vec<String>>,
    ) -> Self {
        let mut wire = json!({
            "program_id": id,
            "module": spec.module.as_str(),
            "signature": spec.signature.as_ref().map(Signature::to_wire),
        });
        if !spec.demos.is_empty() {
            wire["demos"] = Value::Array(spec.demos.iter().cloned().map(Value::Object).collect());
        }
        if let Some(instructions) = &spec.instructions {
            wire["instructions"] = json!(instructions);
        }
        if let Some(factory) = &spec.factory {
            wire["factory"] = json!(factory);
        }
        if let Some(state) = &state {
            wire["state"] = json!({"path": state.path, "digest": state.digest});
        }
        if spec.allow_pickle {
            wire["allow_pickle"] = json!(true);
        }
        let digest = hex_sha256(&serde_json::to_vec(&wire).unwrap_or_default());
        let input_fields = input_fields.unwrap_or_else(|| {
            spec.signature
                .iter()
                .flat_map(|s| s.inputs.iter().map(|f| f.name.clone()))
                .collect()
        });
        ProgramDef {
            id: id.to_owned(),
            spec,
            state,
            input_fields,
            wire,
            digest,
        }
    }

    pub fn module(&self) -> ModuleKind {
        self.spec.module
    }

    pub fn signature(&self) -> Option<&Signature> {
        self.spec.signature.as_ref()
    }

    /// The JSON the bridge's `create_program`/`execute_program` take as `definition`.
    pub fn to_wire(&self) -> &Value {
        &self.wire
    }

    /// Hex SHA-256 of the definition: equal digests, equal programs.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the registry keeps: the definition and the input fields.
    fn to_record(&self) -> Value {
        json!({"definition": self.wire, "input_fields": self.input_fields})
    }

    fn from_record(record: &Value) -> Result<Self> {
        let wire = record.get("definition").ok_or_else(|| {
            Error::Protocol(format!("stored program has no definition: {record}"))
        })?;
        let input_fields = record
            .get("input_fields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            });
        Self::from_wire_with(wire, input_fields)
    }

    /// Reads back what [`to_wire`](Self::to_wire) wrote (its input fields are the
    /// signature's).
    ///
    /// # Errors
    ///
    /// `protocol` for JSON that is not a definition, `signature` for a bad signature.
    pub fn from_wire(wire: &Value) -> Result<Self> {
        Self::from_wire_with(wire, None)
    }

    fn from_wire_with(wire: &Value, input_fields: Option<Vec<String>>) -> Result<Self> {
        let bad = |what: &str| {
            Error::Protocol(format!(
                "stored program definition has no valid {what}: {wire}"
            ))
        };
        let id = wire
            .get("program_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("program_id"))?;
        let module: ModuleKind = wire
            .get("module")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("module"))?
            .parse()?;
        let signature = match wire.get("signature") {
            Some(Value::Null) | None => None,
            // An outputs-only signature (python programs): the JSON form requires inputs,
            // so it is read with a stand-in input that is dropped again.
            Some(sig) if sig["inputs"].as_array().is_some_and(Vec::is_empty) => {
                let mut with_input = sig.clone();
                with_input["inputs"] = json!([{"name": "dspex_outputs_only"}]);
                Some(Signature {
                    inputs: Vec::new(),
                    ..Signature::from_json(&with_input)?
                })
            }
            Some(sig) => Some(Signature::from_json(sig)?),
        };
        let str_of = |key: &str| wire.get(key).and_then(Value::as_str).map(str::to_owned);
        let spec = ProgramSpec {
            module,
            signature,
            factory: str_of("factory"),
            demos: wire
                .get("demos")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(|v| v.as_object().cloned()).collect())
                .unwrap_or_default(),
            instructions: str_of("instructions"),
            state: wire
                .pointer("/state/path")
                .and_then(Value::as_str)
                .map(PathBuf::from),
            allow_pickle: wire
                .get("allow_pickle")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let state = match (
            &spec.state,
            wire.pointer("/state/digest").and_then(Value::as_str),
        ) {
            (Some(path), Some(digest)) => Some(StateFile {
                path: path.clone(),
                digest: digest.to_owned(),
            }),
            _ => None,
        };
        Ok(ProgramDef::new(id, spec, state, input_fields))
    }
}

/// What [`Session::program_info`] reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProgramInfo {
    pub program_id: String,
    pub session_id: String,
    pub module: ModuleKind,
    /// The canonical string form of the signature (empty when a python program declares
    /// none).
    pub signature: String,
    pub instructions: Option<String>,
    pub factory: Option<String>,
    pub state: Option<StateFile>,
    pub demos: usize,
    pub input_fields: Vec<String>,
    pub input_schema: Value,
    pub output_schema: Value,
    pub digest: String,
}

impl ProgramInfo {
    /// What a program with definition `def` in `session_id` reports.
    pub fn of(def: &ProgramDef, session_id: &str) -> Self {
        let signature = def.signature();
        ProgramInfo {
            program_id: def.id.clone(),
            session_id: session_id.to_owned(),
            module: def.module(),
            signature: signature
                .map(|s| {
                    if s.inputs.is_empty() {
                        s.outputs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    } else {
                        s.to_string()
                    }
                })
                .unwrap_or_default(),
            instructions: def
                .spec
                .instructions
                .clone()
                .or_else(|| signature.and_then(|s| s.instructions.clone())),
            factory: def.spec.factory.clone(),
            state: def.state.clone(),
            demos: def.spec.demos.len(),
            input_fields: def.input_fields.clone(),
            input_schema: signature
                .map(Signature::input_schema)
                .unwrap_or(Value::Null),
            output_schema: signature
                .map(Signature::output_schema)
                .unwrap_or(Value::Null),
            digest: def.digest.clone(),
        }
    }
}

const PROGRAMS: &str = "programs";

/// A session: a scope for programs, with worker affinity. Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(system: dspex::System) -> dspex::Result<()> {
/// use dspex::{ModuleKind, Signature};
/// let session = system.open_session(None).await?;
/// let sig: Signature = "question -> answer, confidence: float".parse()?;
/// session.create_program("qa", &sig, ModuleKind::Predict).await?;
/// let inputs = serde_json::json!({"question": "What is DSPy?"});
/// let outputs = session.execute("qa", inputs.as_object().unwrap().clone()).await?;
/// assert!(outputs["confidence"].is_number());
/// session.end().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Session {
    system: System,
    id: String,
}

impl System {
    /// Open (track) a session; `None` makes up a unique id.
    ///
    /// # Errors
    ///
    /// `pool_busy` at `session.max_sessions`, `shutting_down`, `system_failed`.
    pub async fn open_session(&self, id: Option<&str>) -> Result<Session> {
        let id = match id {
            Some(id) => id.to_owned(),
            None => format!("s-{}", crate::system::random_suffix()),
        };
        self.track_session(&id).await?;
        Ok(Session {
            system: self.clone(),
            id,
        })
    }

    /// A handle to an existing session, without tracking it.
    pub fn session_handle(&self, id: &str) -> Session {
        Session {
            system: self.clone(),
            id: id.to_owned(),
        }
    }
}

fn program_error(error_type: &str, message: String) -> ActorError {
    ActorError::Python {
        error_type: error_type.into(),
        message,
        traceback: None,
    }
}

/// A program the bridge (or the registry) did not find gets this program's and session's
/// ids; a duplicate is already a `validation` error on `program_id`.
fn map_program_error(e: Error, program_id: &str, session: &str) -> Error {
    match e {
        Error::Refused { error_type, .. } if error_type == "ProgramNotFound" => {
            Error::ProgramNotFound {
                program_id: program_id.into(),
                session: session.into(),
            }
        }
        other => other,
    }
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn system(&self) -> &System {
        &self.system
    }

    /// Define a `predict` or `chain_of_thought` program over `signature` and build it on
    /// a worker. See [`create`](Self::create).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub async fn create_program(
        &self,
        program_id: &str,
        signature: &Signature,
        module: ModuleKind,
    ) -> Result<ProgramInfo> {
        self.create(program_id, ProgramSpec::new(module, signature.clone()))
            .await
    }

    /// Define a program in this session and build it on a worker, which checks that DSPy
    /// accepts it (and for a python program imports the factory, loads the state and
    /// finds its input fields).
    ///
    /// # Errors
    ///
    /// `validation` for a duplicate id or a bad spec (see [`ProgramSpec::resolve`]; the
    /// worker's findings, such as a factory that does not import, too),
    /// `session_not_found`, `python` if DSPy rejects the definition (the program is then
    /// not kept).
    pub async fn create(&self, program_id: &str, spec: ProgramSpec) -> Result<ProgramInfo> {
        self.create_checked(program_id, spec, None).await
    }

    /// [`create`](Self::create), also checking in the worker that `metric`
    /// (`"package.module:function"`) imports and is callable, so an evaluation or an
    /// optimization fails before its first row rather than on it.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create); `validation` for a metric that is not callable.
    pub async fn create_checked(
        &self,
        program_id: &str,
        spec: ProgramSpec,
        metric: Option<&str>,
    ) -> Result<ProgramInfo> {
        let def = spec.resolve(program_id)?;
        let record = def.to_record();
        let (pid, sid) = (program_id.to_owned(), self.id.clone());
        self.system
            .update_session_state(&self.id, move |state| {
                let programs = programs_mut(state);
                if programs.contains_key(&pid) {
                    return Err(program_error(
                        "ProgramExists",
                        format!("program `{pid}` already exists in session `{sid}`; delete it first or choose another id"),
                    ));
                }
                programs.insert(pid.clone(), record.clone());
                Ok(Value::Null)
            })
            .await
            .map_err(|e| map_program_error(e, program_id, &self.id))?;
        let mut args = json!({
            "program_id": program_id,
            "definition": def.to_wire(),
            "digest": def.digest(),
        });
        if let Some(metric) = metric {
            args["metric"] = json!(metric);
        }
        let created = self
            .system
            .execute(Call::new("create_program", args).session(self.id.clone()))
            .await;
        let created = match created {
            Ok(result) => result,
            Err(e) => {
                // DSPy rejected it (or no worker could answer): do not keep a definition
                // that cannot run.
                let _ = self.forget(program_id).await;
                return Err(map_program_error(e, program_id, &self.id));
            }
        };
        let def = match created.get("input_fields").and_then(Value::as_array) {
            // A python program without declared inputs takes what its forward() takes.
            Some(fields) if def.input_fields.is_empty() => {
                let fields = fields
                    .iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect();
                let def = ProgramDef::new(program_id, def.spec, def.state, Some(fields));
                let record = def.to_record();
                let pid = program_id.to_owned();
                self.system
                    .update_session_state(&self.id, move |state| {
                        programs_mut(state).insert(pid.clone(), record.clone());
                        Ok(Value::Null)
                    })
                    .await?;
                def
            }
            _ => def,
        };
        let info = ProgramInfo::of(&def, &self.id);
        self.system
            .programs()
            .insert(&self.id, program_id, Arc::new(def));
        Ok(info)
    }

    async fn definition(&self, program_id: &str) -> Result<Arc<ProgramDef>> {
        if let Some(def) = self.system.programs().get(&self.id, program_id) {
            return Ok(def);
        }
        let state = self.system.session_state(&self.id).await?;
        let record = state
            .get(PROGRAMS)
            .and_then(|p| p.get(program_id))
            .ok_or_else(|| Error::ProgramNotFound {
                program_id: program_id.into(),
                session: self.id.clone(),
            })?;
        let def = Arc::new(ProgramDef::from_record(record)?);
        self.system
            .programs()
            .insert(&self.id, program_id, Arc::clone(&def));
        Ok(def)
    }

    /// Run a program on `inputs`; returns its outputs, typed as the signature declares.
    ///
    /// # Errors
    ///
    /// `validation` (before anything is sent) for missing or mistyped inputs,
    /// `program_not_found`, `lm`, `rate_limited`, `python`, `timeout`, `worker_crashed`, ...
    pub async fn execute(
        &self,
        program_id: &str,
        inputs: Map<String, Value>,
    ) -> Result<Map<String, Value>> {
        self.execute_with(program_id, inputs, None).await
    }

    /// [`execute`](Self::execute) with an LM configuration for this call only
    /// (`{"model": ..., "temperature": ..., ...}`).
    pub async fn execute_with(
        &self,
        program_id: &str,
        inputs: Map<String, Value>,
        lm: Option<Value>,
    ) -> Result<Map<String, Value>> {
        self.program(program_id)
            .await?
            .execute_with(inputs, lm)
            .await
    }

    /// A handle to a program as it is defined now, for running it many times. Like a
    /// prepared statement, the handle keeps the definition it was made with: it still runs
    /// if the program is deleted or replaced afterwards.
    ///
    /// # Errors
    ///
    /// `program_not_found`, `session_not_found`.
    pub async fn program(&self, program_id: &str) -> Result<Program> {
        Ok(Program {
            session: self.clone(),
            def: self.definition(program_id).await?,
            batch: false,
        })
    }

    /// Program ids in this session, sorted.
    pub async fn list_programs(&self) -> Result<Vec<String>> {
        let state = self.system.session_state(&self.id).await?;
        let mut ids: Vec<String> = state
            .get(PROGRAMS)
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        Ok(ids)
    }

    /// A program's definition.
    pub async fn program_info(&self, program_id: &str) -> Result<ProgramInfo> {
        Ok(ProgramInfo::of(
            &*self.definition(program_id).await?,
            &self.id,
        ))
    }

    async fn forget(&self, program_id: &str) -> Result<()> {
        self.system.programs().remove(&self.id, program_id);
        let (pid, sid) = (program_id.to_owned(), self.id.clone());
        self.system
            .update_session_state(&self.id, move |state| {
                match programs_mut(state).remove(&pid) {
                    Some(_) => Ok(Value::Null),
                    None => Err(program_error(
                        "ProgramNotFound",
                        format!("program `{pid}` not found in session `{sid}`"),
                    )),
                }
            })
            .await
            .map_err(|e| map_program_error(e, program_id, &self.id))?;
        Ok(())
    }

    /// Delete a program; workers that cached it drop it when they next see the session
    /// end, and can no longer run it (definitions come from the registry).
    pub async fn delete_program(&self, program_id: &str) -> Result<()> {
        self.forget(program_id).await?;
        // Best effort: the worker with the warm cache drops it now.
        let _ = self
            .system
            .execute(
                Call::new("delete_program", json!({"program_id": program_id}))
                    .session(self.id.clone()),
            )
            .await;
        Ok(())
    }

    /// End the session: its programs are gone and workers drop their caches.
    pub async fn end(&self) -> Result<()> {
        self.system.programs().forget_session(&self.id);
        self.system.end_session(&self.id).await.map(|_| ())
    }
}

fn programs_mut(state: &mut Value) -> &mut Map<String, Value> {
    if !state.is_object() {
        *state = json!({});
    }
    let map = state.as_object_mut().expect("made an object above");
    let programs = map.entry(PROGRAMS).or_insert_with(|| json!({}));
    if !programs.is_object() {
        *programs = json!({});
    }
    programs.as_object_mut().expect("made an object above")
}

/// A program's inputs after validation: only [`Program::validate`] makes one, so a row is
/// validated exactly once however many layers it passes.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs(Map<String, Value>);

impl Inputs {
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// What one run of a program produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub outputs: Map<String, Value>,
    /// The LM calls it made, per model (empty when it made none, e.g. on a cache hit).
    pub usage: Usage,
}

/// A prediction scored by a metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub prediction: Prediction,
    pub score: f64,
}

/// A program of a session, ready to run: see [`Session::program`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Program {
    session: Session,
    def: Arc<ProgramDef>,
    batch: bool,
}

impl Program {
    pub fn definition(&self) -> &ProgramDef {
        &self.def
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// This handle for batch work: its requests wait for capacity without
    /// `pool.checkout_timeout` or `pool.max_queue` (the caller bounds how many it has in
    /// flight), as `dspex run` does.
    pub fn for_batch(mut self) -> Self {
        self.batch = true;
        self
    }

    /// Checks `inputs` against the program: the signature's types when it declares
    /// inputs, else the presence of the input fields the worker found.
    ///
    /// # Errors
    ///
    /// `validation` naming the field.
    pub fn validate(&self, inputs: Map<String, Value>) -> Result<Inputs, ValidationError> {
        match self.def.signature().filter(|s| !s.inputs.is_empty()) {
            Some(signature) => signature.validate_inputs(&inputs)?,
            None => {
                if let Some(missing) = self
                    .def
                    .input_fields
                    .iter()
                    .find(|f| !inputs.contains_key(f.as_str()))
                {
                    return Err(ValidationError {
                        field: missing.clone(),
                        message: format!(
                            "missing input `{missing}` (the program takes {})",
                            self.def.input_fields.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(Inputs(inputs))
    }

    /// Splits a row into the program's inputs (validated) and the rest (labels, ids).
    ///
    /// # Errors
    ///
    /// `validation` as [`validate`](Self::validate).
    pub fn split_row(
        &self,
        mut row: Map<String, Value>,
    ) -> Result<(Inputs, Map<String, Value>), ValidationError> {
        let mut inputs = Map::new();
        for field in &self.def.input_fields {
            if let Some(value) = row.remove(field) {
                inputs.insert(field.clone(), value);
            }
        }
        Ok((self.validate(inputs)?, row))
    }

    fn call(&self, command: &str, args: Value) -> Call {
        let call = Call::new(command, args)
            .session(self.session.id.clone())
            .limited();
        if self.batch {
            call.batch()
        } else {
            call
        }
    }

    /// The per-row request. Built field by field: `json!` would copy the row's inputs
    /// (and the definition) through the serialiser instead of moving them in.
    fn request_args(&self, inputs: Inputs) -> Value {
        let mut args = Map::with_capacity(4);
        args.insert("program_id".into(), Value::String(self.def.id.clone()));
        args.insert("definition".into(), self.def.wire.clone());
        args.insert("digest".into(), Value::String(self.def.digest.clone()));
        args.insert("inputs".into(), Value::Object(inputs.0));
        Value::Object(args)
    }

    /// Run the program on validated inputs.
    ///
    /// # Errors
    ///
    /// `program_not_found`, `lm`, `rate_limited`, `python`, `timeout`,
    /// `worker_crashed`, `validation` for outputs that do not fit the signature.
    pub async fn predict(&self, inputs: Inputs) -> Result<Prediction> {
        self.predict_with(inputs, None).await
    }

    async fn predict_with(&self, inputs: Inputs, lm: Option<Value>) -> Result<Prediction> {
        let mut args = self.request_args(inputs);
        if let Some(lm) = lm {
            args["lm"] = lm;
        }
        let result = self.run("execute_program", args).await?;
        self.prediction(result)
    }

    async fn run(&self, command: &str, args: Value) -> Result<Value> {
        let (session, def) = (&self.session, &self.def);
        let result = session
            .system
            .execute(self.call(command, args))
            .await
            .map_err(|e| map_program_error(e, &def.id, &session.id))?;
        Ok(result)
    }

    fn prediction(&self, mut result: Value) -> Result<Prediction> {
        let outputs = result.get_mut("outputs").map_or(Value::Null, Value::take);
        let usage = Usage::from_wire(result.get("usage"));
        self.session.system.record_usage(&usage);
        let decoded = match self.def.signature().filter(|s| !s.outputs.is_empty()) {
            Some(signature) => {
                let mut decoded = signature.decode_outputs(&outputs)?;
                // ChainOfThought's own `reasoning` step is part of what users want to see.
                if self.def.module() == ModuleKind::ChainOfThought
                    && !decoded.contains_key("reasoning")
                {
                    if let Some(reasoning) = outputs.get("reasoning").filter(|r| r.is_string()) {
                        decoded.insert("reasoning".into(), reasoning.clone());
                    }
                }
                decoded
            }
            None => match outputs {
                Value::Object(map) => map,
                other => {
                    return Err(Error::Protocol(format!(
                        "the worker's outputs are not an object: {other}"
                    )))
                }
            },
        };
        Ok(Prediction {
            outputs: decoded,
            usage,
        })
    }

    /// Run the program on `inputs`; see [`Session::execute`].
    pub async fn execute(&self, inputs: Map<String, Value>) -> Result<Map<String, Value>> {
        self.execute_with(inputs, None).await
    }

    /// Run it with an LM configuration for this call only.
    pub async fn execute_with(
        &self,
        inputs: Map<String, Value>,
        lm: Option<Value>,
    ) -> Result<Map<String, Value>> {
        let inputs = self.validate(inputs)?;
        Ok(self.predict_with(inputs, lm).await?.outputs)
    }

    /// Run the program on `inputs` and score the prediction in the worker with `metric`
    /// (`"package.module:function"`, DSPy's `metric(example, prediction)`), where the
    /// example is the inputs and `labels`.
    ///
    /// # Errors
    ///
    /// As [`predict`](Self::predict); `validation` for a metric that is not callable or
    /// returns something that is not a number or a bool; `python` when it raises.
    pub async fn score(
        &self,
        inputs: Inputs,
        labels: Map<String, Value>,
        metric: &str,
    ) -> Result<Scored> {
        let mut args = self.request_args(inputs);
        args["labels"] = Value::Object(labels);
        args["metric"] = json!(metric);
        let result = self.run("evaluate", args).await?;
        let score = result.get("score").and_then(Value::as_f64).ok_or_else(|| {
            Error::Protocol(format!("`evaluate` answered without a score: {result}"))
        })?;
        Ok(Scored {
            prediction: self.prediction(result)?,
            score,
        })
    }
}
