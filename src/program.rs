//! DSPy programs scoped to sessions.
//!
//! A program is a signature plus a module kind. Its definition lives in the
//! SessionRegistry (the source of truth, which survives worker deaths and registry
//! restarts); workers only cache built programs. Every `execute_program` request carries
//! the definition, so any worker can (re)build the program: affinity is a cache
//! preference, never a correctness need.

use std::fmt;
use std::str::FromStr;

use dspex_actors::ActorError;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::signature::{Signature, ValidationError};
use crate::system::{Call, System};

/// Which DSPy module runs the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// `dspy.Predict`.
    Predict,
    /// `dspy.ChainOfThought` (adds a `reasoning` step before the outputs).
    ChainOfThought,
}

impl ModuleKind {
    pub const ALL: [ModuleKind; 2] = [ModuleKind::Predict, ModuleKind::ChainOfThought];

    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Predict => "predict",
            ModuleKind::ChainOfThought => "chain_of_thought",
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

    /// `predict` or `chain_of_thought` (`cot` and `chain-of-thought` are accepted too).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "predict" => Ok(ModuleKind::Predict),
            "chain_of_thought" | "cot" | "chainofthought" => Ok(ModuleKind::ChainOfThought),
            _ => Err(Error::Validation(ValidationError {
                field: "module".into(),
                message: format!("unknown module kind `{s}`; use `predict` or `chain_of_thought`"),
            })),
        }
    }
}

/// A program's definition: what the registry stores and every worker can build from.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramDef {
    pub id: String,
    pub module: ModuleKind,
    pub signature: Signature,
}

impl ProgramDef {
    pub fn new(id: impl Into<String>, module: ModuleKind, signature: Signature) -> Self {
        ProgramDef {
            id: id.into(),
            module,
            signature,
        }
    }

    /// The JSON the Python bridge's `create_program`/`execute_program` take as `definition`.
    pub fn to_wire(&self) -> Value {
        json!({
            "program_id": self.id,
            "module": self.module.as_str(),
            "signature": self.signature.to_wire(),
        })
    }

    /// Reads back what [`to_wire`](Self::to_wire) wrote.
    pub fn from_wire(value: &Value) -> Result<Self> {
        let bad = |what: &str| {
            Error::Protocol(format!(
                "stored program definition has no valid {what}: {value}"
            ))
        };
        let id = value
            .get("program_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("program_id"))?;
        let module = value
            .get("module")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("module"))?
            .parse()?;
        let signature =
            Signature::from_json(value.get("signature").ok_or_else(|| bad("signature"))?)?;
        Ok(ProgramDef {
            id: id.to_owned(),
            module,
            signature,
        })
    }
}

/// What [`Session::program_info`] reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProgramInfo {
    pub program_id: String,
    pub session_id: String,
    pub module: ModuleKind,
    /// The canonical string form of the signature.
    pub signature: String,
    pub instructions: Option<String>,
    pub input_schema: Value,
    pub output_schema: Value,
}

impl ProgramInfo {
    pub(crate) fn of(def: &ProgramDef, session_id: &str) -> Self {
        ProgramInfo {
            program_id: def.id.clone(),
            session_id: session_id.to_owned(),
            module: def.module,
            signature: def.signature.to_string(),
            instructions: def.signature.instructions.clone(),
            input_schema: def.signature.input_schema(),
            output_schema: def.signature.output_schema(),
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

fn not_found(program_id: &str, session: &str) -> ActorError {
    ActorError::Python {
        error_type: "ProgramNotFound".into(),
        message: format!("program `{program_id}` not found in session `{session}`"),
        traceback: None,
    }
}

fn map_program_error(e: Error, program_id: &str, session: &str) -> Error {
    match e {
        Error::Python { error_type, .. } if error_type == "ProgramNotFound" => {
            Error::ProgramNotFound {
                program_id: program_id.into(),
                session: session.into(),
            }
        }
        Error::Python {
            error_type,
            message,
            ..
        } if error_type == "ProgramExists" => Error::Validation(ValidationError {
            field: "program_id".into(),
            message,
        }),
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

    /// Define a program in this session and build it on a worker (which checks that
    /// DSPy accepts the signature).
    ///
    /// # Errors
    ///
    /// `validation` for a duplicate id, `session_not_found`, `python` if DSPy rejects
    /// the definition (the program is then not kept).
    pub async fn create_program(
        &self,
        program_id: &str,
        signature: &Signature,
        module: ModuleKind,
    ) -> Result<ProgramInfo> {
        if program_id.trim().is_empty() {
            return Err(Error::Validation(ValidationError {
                field: "program_id".into(),
                message: "a program id must not be empty".into(),
            }));
        }
        if module == ModuleKind::ChainOfThought
            && signature
                .inputs
                .iter()
                .chain(&signature.outputs)
                .any(|f| f.name == "reasoning")
        {
            return Err(Error::Validation(ValidationError {
                field: "reasoning".into(),
                message: "chain_of_thought adds its own `reasoning` output; rename that field or use `predict`".into(),
            }));
        }
        let def = ProgramDef::new(program_id, module, signature.clone());
        let wire = def.to_wire();
        let stored = wire.clone();
        let (pid, sid) = (program_id.to_owned(), self.id.clone());
        self.system
            .update_session_state(&self.id, move |state| {
                let programs = programs_mut(state);
                if programs.contains_key(&pid) {
                    return Err(ActorError::Python {
                        error_type: "ProgramExists".into(),
                        message: format!(
                            "program `{pid}` already exists in session `{sid}`; delete it first or choose another id"
                        ),
                        traceback: None,
                    });
                }
                programs.insert(pid.clone(), stored.clone());
                Ok(Value::Null)
            })
            .await
            .map_err(|e| map_program_error(e, program_id, &self.id))?;
        let created = self
            .system
            .execute(
                Call::new(
                    "create_program",
                    json!({"program_id": program_id, "definition": wire}),
                )
                .session(self.id.clone()),
            )
            .await;
        match created {
            Ok(_) => Ok(ProgramInfo::of(&def, &self.id)),
            Err(e) => {
                // DSPy rejected it (or no worker could answer): do not keep a definition
                // that cannot run.
                let _ = self.forget(program_id).await;
                Err(map_program_error(e, program_id, &self.id))
            }
        }
    }

    async fn definition(&self, program_id: &str) -> Result<ProgramDef> {
        let state = self.system.session_state(&self.id).await?;
        let wire = state
            .get(PROGRAMS)
            .and_then(|p| p.get(program_id))
            .ok_or_else(|| Error::ProgramNotFound {
                program_id: program_id.into(),
                session: self.id.clone(),
            })?;
        ProgramDef::from_wire(wire)
    }

    /// Run a program on `inputs`; returns its outputs, typed as the signature declares.
    ///
    /// # Errors
    ///
    /// `validation` (before anything is sent) for missing or mistyped inputs,
    /// `program_not_found`, `lm`, `python`, `timeout`, `worker_crashed`, ...
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

    /// A handle to a program as it is defined now, for running it many times without
    /// reading its definition from the registry on every call (what `dspex run` does per
    /// row). Like a prepared statement, the handle keeps the definition it was made with:
    /// it still runs if the program is deleted or replaced afterwards.
    ///
    /// # Errors
    ///
    /// `program_not_found`, `session_not_found`.
    pub async fn program(&self, program_id: &str) -> Result<Program> {
        let def = self.definition(program_id).await?;
        let wire = def.to_wire();
        Ok(Program {
            session: self.clone(),
            def,
            wire,
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
            &self.definition(program_id).await?,
            &self.id,
        ))
    }

    async fn forget(&self, program_id: &str) -> Result<()> {
        let (pid, sid) = (program_id.to_owned(), self.id.clone());
        self.system
            .update_session_state(&self.id, move |state| {
                match programs_mut(state).remove(&pid) {
                    Some(_) => Ok(Value::Null),
                    None => Err(not_found(&pid, &sid)),
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

/// A program of a session, ready to run: see [`Session::program`].
#[derive(Clone, Debug)]
pub struct Program {
    session: Session,
    def: ProgramDef,
    wire: Value,
}

impl Program {
    pub fn definition(&self) -> &ProgramDef {
        &self.def
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
        let (def, session) = (&self.def, &self.session);
        def.signature.validate_inputs(&inputs)?;
        let mut args = json!({
            "program_id": def.id,
            "definition": self.wire,
            "inputs": Value::Object(inputs),
        });
        if let Some(lm) = lm {
            args["lm"] = lm;
        }
        let result = session
            .system
            .execute(Call::new("execute_program", args).session(session.id.clone()))
            .await
            .map_err(|e| map_program_error(e, &def.id, &session.id))?;
        let outputs = result.get("outputs").cloned().unwrap_or(Value::Null);
        let mut decoded = def.signature.decode_outputs(&outputs)?;
        // ChainOfThought's own `reasoning` step is part of what users want to see.
        if def.module == ModuleKind::ChainOfThought && !decoded.contains_key("reasoning") {
            if let Some(reasoning) = outputs.get("reasoning").filter(|r| r.is_string()) {
                decoded.insert("reasoning".into(), reasoning.clone());
            }
        }
        Ok(decoded)
    }
}
