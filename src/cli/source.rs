//! Where `run`, `eval` and `optimize` get the program they drive over a dataset, and how
//! one row becomes one request.
//!
//! The source is exactly one of: `--signature SIG [--module KIND]` (a `Predict` or
//! `ChainOfThought`), `--program pkg.mod:factory [--signature OUTPUTS | SIG]` (the user's
//! own `dspy.Module`), either with `--state FILE`, or `--command NAME` (any user
//! `@command`, each row being its args). Everything that can be checked without Python is
//! checked in [`SourceArgs::plan`] (exit 2, nothing started); the rest (the factory imports,
//! the state loads, the metric is callable) when [`SourcePlan::prepare`] builds the program
//! on a worker, still before any row runs.

use std::path::PathBuf;

use clap::Args;
use dspex::{Inputs, ModuleKind, Program, ProgramDef, ProgramSpec, Session, Signature, Usage};
use serde_json::{json, Map, Value};

use super::run::RowError;
use super::CliError;

/// The program every command creates in its session.
pub const PROGRAM: &str = "main";

/// The flags that name the program.
#[derive(Debug, Clone, Default, Args)]
pub struct SourceArgs {
    /// A DSPy signature, e.g. "question -> answer" or "context: list[str], question -> answer".
    /// With --program: the outputs it declares ("answer, confidence: float") or a whole
    /// signature.
    #[arg(long, short = 's', value_name = "SIG")]
    pub signature: Option<String>,
    /// The DSPy module for --signature: predict or chain_of_thought.
    #[arg(long, short = 'm', value_name = "KIND")]
    pub module: Option<String>,
    /// Your own DSPy module: "package.module:factory" (a callable returning a dspy.Module,
    /// or a dspy.Module subclass), found via python.path.
    #[arg(long, value_name = "PKG.MOD:FACTORY", conflicts_with = "command")]
    pub program: Option<String>,
    /// A state file saved by DSPy (`program.save("x.json")`, or by `dspex optimize`).
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    pub state: Option<PathBuf>,
    /// Allow a pickle (.pkl) state file, which runs code when it is loaded.
    #[arg(long, requires = "state")]
    pub allow_pickle: bool,
    /// A user command (from python.handlers) to run with each row as its args.
    #[arg(long, value_name = "NAME")]
    pub command: Option<String>,
}

/// A source whose flags checked out: a program's definition resolved once (its state
/// file read and digested), or a command's name.
#[derive(Debug, Clone)]
pub enum SourcePlan {
    Program(Box<ProgramDef>),
    Command(String),
}

impl SourceArgs {
    /// Checks the flags, the signature and the state file; starts nothing.
    ///
    /// # Errors
    ///
    /// A usage error naming the flag.
    pub fn plan(&self) -> Result<SourcePlan, CliError> {
        let usage = |m: String| CliError::Usage(m);
        if let Some(command) = &self.command {
            if self.signature.is_some() || self.module.is_some() {
                return Err(usage(
                    "--command runs a user command on each row; it takes no --signature or --module".into(),
                ));
            }
            if command.trim().is_empty() {
                return Err(usage(
                    "--command: the command name must not be empty".into(),
                ));
            }
            return Ok(SourcePlan::Command(command.clone()));
        }
        let mut spec = match (&self.program, &self.signature) {
            (Some(factory), signature) => {
                if self.module.is_some() {
                    return Err(usage(
                        "--module applies to --signature programs; --program builds your own module".into(),
                    ));
                }
                let mut spec = ProgramSpec::python(factory.clone());
                if let Some(text) = signature {
                    let parsed = if text.contains("->") {
                        Signature::parse(text)
                    } else {
                        Signature::parse_outputs(text)
                    };
                    spec = spec
                        .with_signature(parsed.map_err(|e| usage(format!("--signature: {e}")))?);
                }
                spec
            }
            (None, Some(text)) => {
                let signature: Signature = text
                    .parse()
                    .map_err(|e| usage(format!("--signature: {e}")))?;
                let module: ModuleKind = match &self.module {
                    Some(m) => m.parse().map_err(|e: dspex::Error| {
                        usage(format!("--module: {}", short_message(e)))
                    })?,
                    None => ModuleKind::Predict,
                };
                if module == ModuleKind::Python {
                    return Err(usage(
                        "--module python: give the module with --program pkg.mod:factory".into(),
                    ));
                }
                ProgramSpec::new(module, signature)
            }
            (None, None) => return Err(usage(
                "name the program: --signature SIG, --program PKG.MOD:FACTORY or --command NAME"
                    .into(),
            )),
        };
        if let Some(state) = &self.state {
            spec = spec.with_state(state).with_allow_pickle(self.allow_pickle);
        }
        // Resolving reads and checks the state file now, before Python starts.
        let def = spec.resolve(PROGRAM).map_err(|e| match e {
            dspex::Error::Validation(v) => usage(format!("--{}: {}", flag_of(&v.field), v.message)),
            other => CliError::Dspex(other),
        })?;
        Ok(SourcePlan::Program(Box::new(def)))
    }
}

fn flag_of(field: &str) -> &str {
    match field {
        "factory" => "program",
        "reasoning" | "signature" => "signature",
        other => other,
    }
}

fn short_message(e: dspex::Error) -> String {
    match e {
        dspex::Error::Validation(v) => v.message,
        other => other.to_string(),
    }
}

impl SourcePlan {
    /// What the output and messages call the program.
    pub fn describe(&self) -> String {
        match self {
            SourcePlan::Command(name) => format!("command `{name}`"),
            SourcePlan::Program(def) => match (&def.spec.factory, def.signature()) {
                (Some(factory), _) => format!("program `{factory}`"),
                (None, Some(signature)) => format!("{} program `{signature}`", def.module()),
                (None, None) => format!("{} program", def.module()),
            },
        }
    }

    /// Builds the program in `session` on a worker (checking `metric` too, when given) and
    /// returns what runs the rows.
    ///
    /// # Errors
    ///
    /// What the worker found wrong (a factory that does not import, a state file it cannot
    /// load, a metric that is not callable) as a usage error, or the library's error.
    pub async fn prepare(
        &self,
        session: &Session,
        metric: Option<&str>,
    ) -> Result<Runner, CliError> {
        match self {
            SourcePlan::Command(name) => Ok(Runner::Command {
                session: session.clone(),
                name: name.clone(),
            }),
            SourcePlan::Program(def) => {
                session
                    .create_checked(PROGRAM, def.spec.clone(), metric)
                    .await
                    .map_err(|e| match e.kind() {
                        "validation" | "signature" | "python" | "environment" => {
                            CliError::Usage(format!("cannot create the {}: {e}", self.describe()))
                        }
                        _ => CliError::Dspex(e),
                    })?;
                let program = session.program(PROGRAM).await?.for_batch();
                Ok(Runner::Program(program))
            }
        }
    }
}

/// A row ready to run: validated inputs, and what else the row carried.
#[derive(Debug, Clone)]
pub struct RowInput {
    pub inputs: RowArgs,
    /// The row's other fields (labels, for `eval` and `optimize`).
    pub labels: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub enum RowArgs {
    Program(Inputs),
    Command(Map<String, Value>),
}

/// What one row produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOutput {
    pub outputs: Value,
    pub usage: Usage,
}

/// Runs rows: one program of a session, or one user command.
#[derive(Debug, Clone)]
pub enum Runner {
    Program(Program),
    Command { session: Session, name: String },
}

impl Runner {
    /// Takes a row apart: the program's inputs (validated, once) and the rest. A command
    /// gets the whole row.
    ///
    /// # Errors
    ///
    /// A `validation` row error naming the field.
    pub fn row(&self, row: Map<String, Value>) -> Result<RowInput, RowError> {
        match self {
            Runner::Command { .. } => Ok(RowInput {
                inputs: RowArgs::Command(row),
                labels: Map::new(),
            }),
            Runner::Program(program) => {
                let (inputs, mut labels) = program
                    .split_row(row)
                    .map_err(|e| RowError::new("validation", e.to_string()))?;
                labels.remove("id");
                Ok(RowInput {
                    inputs: RowArgs::Program(inputs),
                    labels,
                })
            }
        }
    }

    /// Runs one row.
    ///
    /// # Errors
    ///
    /// The library's error for this row (its kind goes in the output line).
    pub async fn run(&self, row: RowInput) -> dspex::Result<RowOutput> {
        match (self, row.inputs) {
            (Runner::Program(program), RowArgs::Program(inputs)) => {
                let prediction = program.predict(inputs).await?;
                Ok(RowOutput {
                    outputs: Value::Object(prediction.outputs),
                    usage: prediction.usage,
                })
            }
            (Runner::Command { session, name }, RowArgs::Command(args)) => {
                let call = dspex::Call::new(name.clone(), Value::Object(args))
                    .session(session.id().to_owned())
                    .batch()
                    .limited();
                let result = session.system().execute(call).await?;
                Ok(RowOutput {
                    outputs: result,
                    usage: Usage::default(),
                })
            }
            _ => unreachable!("a row is always made by the runner that runs it"),
        }
    }

    /// The program being run, for `eval` and `optimize`.
    pub fn program(&self) -> Option<&Program> {
        match self {
            Runner::Program(program) => Some(program),
            Runner::Command { .. } => None,
        }
    }

    /// What the output of a run belongs to: the program definition's digest, or the
    /// command's name; a resumed run must match it.
    pub fn digest(&self) -> String {
        match self {
            Runner::Program(program) => program.definition().digest().to_owned(),
            Runner::Command { name, .. } => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(json!({"command": name}).to_string());
                digest.iter().map(|b| format!("{b:02x}")).collect()
            }
        }
    }
}
