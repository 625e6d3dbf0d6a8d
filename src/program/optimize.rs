//! Running a DSPy optimizer on a program, in one worker.
//!
//! An optimizer (`BootstrapFewShot`, `MIPROv2`, ...) is one long request: it calls the
//! program and the metric many times, keeps what worked as few-shot demos (and, for
//! MIPROv2, rewritten instructions) and saves the result with DSPy's `program.save`. It
//! runs inside a single worker, whose concurrency it uses as DSPy's `num_threads`; spreading
//! it over the pool would split the optimizer's own state. What comes back is a state file
//! that any program of the same shape loads ([`ProgramSpec::with_state`]), so the
//! optimized program then runs across the whole pool like any other.
//!
//! Training rows are split like evaluation rows: the program's inputs, and the rest of the
//! row as labels (the example's other fields, which the metric compares against).
//!
//! [`ProgramSpec::with_state`]: super::ProgramSpec::with_state

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::{Inputs, Program, StateFile, Usage};
use crate::error::{Error, Result};
use crate::signature::ValidationError;

/// The DSPy optimizers dspex can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Optimizer {
    /// `dspy.BootstrapFewShot`: keeps the program's own successful traces on the
    /// trainset as demos. No valset.
    #[serde(rename = "bootstrap_fewshot")]
    BootstrapFewShot,
    /// `dspy.BootstrapFewShotWithRandomSearch`: several bootstrapped candidates, the best
    /// on the valset (the trainset when there is none) wins.
    #[serde(rename = "bootstrap_random")]
    BootstrapRandom,
    /// `dspy.MIPROv2` (`auto = "light"` unless params say otherwise): demos and
    /// instructions, searched with optuna.
    #[serde(rename = "mipro_v2")]
    MiproV2,
}

impl Optimizer {
    /// Every optimizer.
    pub const ALL: [Optimizer; 3] = [
        Optimizer::BootstrapFewShot,
        Optimizer::BootstrapRandom,
        Optimizer::MiproV2,
    ];

    /// The wire name: `bootstrap_fewshot`, `bootstrap_random` or `mipro_v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Optimizer::BootstrapFewShot => "bootstrap_fewshot",
            Optimizer::BootstrapRandom => "bootstrap_random",
            Optimizer::MiproV2 => "mipro_v2",
        }
    }
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Optimizer {
    type Err = Error;

    /// A wire name; `-` for `_` and any case are accepted (`Bootstrap-FewShot`), as are
    /// DSPy's class names (`BootstrapFewShot`, `BootstrapFewShotWithRandomSearch`,
    /// `MIPROv2`).
    ///
    /// # Examples
    ///
    /// ```
    /// use dspex::program::Optimizer;
    /// assert_eq!("mipro_v2".parse::<Optimizer>()?, Optimizer::MiproV2);
    /// assert_eq!("BootstrapFewShot".parse::<Optimizer>()?, Optimizer::BootstrapFewShot);
    /// let err = "gepa".parse::<Optimizer>().unwrap_err();
    /// assert!(err.to_string().contains("bootstrap_fewshot, bootstrap_random, mipro_v2"));
    /// # Ok::<(), dspex::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        let found = match wanted.as_str() {
            "bootstrapfewshot" => Some(Optimizer::BootstrapFewShot),
            "bootstrapfewshotwithrandomsearch" => Some(Optimizer::BootstrapRandom),
            "miprov2" => Some(Optimizer::MiproV2),
            other => Optimizer::ALL.into_iter().find(|o| o.as_str() == other),
        };
        found.ok_or_else(|| {
            Error::Validation(ValidationError::new(
                "optimizer",
                format!(
                    "unknown optimizer `{s}`; use one of {}",
                    Optimizer::ALL.map(Optimizer::as_str).join(", ")
                ),
            ))
        })
    }
}

/// One training (or validation) example: a program's validated inputs and the labels the
/// metric compares its prediction with. [`Program::example`] makes one from a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub inputs: Inputs,
    pub labels: Map<String, Value>,
}

impl Example {
    fn to_wire(&self) -> Value {
        json!({"inputs": self.inputs.as_map(), "labels": self.labels})
    }
}

/// What [`Program::optimize`] runs.
#[derive(Debug, Clone)]
pub struct OptimizeRequest {
    pub optimizer: Optimizer,
    /// Training examples ([`Program::examples`] makes them from rows).
    pub trainset: Vec<Example>,
    /// Validation examples, for the optimizers that take them (not `bootstrap_fewshot`).
    pub valset: Option<Vec<Example>>,
    /// `"package.module:function"`, called as `metric(example, prediction, trace)`.
    pub metric: String,
    /// Keyword arguments for the optimizer's constructor or its `compile` (e.g.
    /// `max_bootstrapped_demos`); the bridge says which keys it takes when one is wrong.
    pub params: Map<String, Value>,
    /// Where the optimized program's state is written (`.json`; its directory must
    /// exist). Relative paths are taken from the current directory.
    pub out: PathBuf,
    /// A time limit for the whole run; none by default (optimizers take minutes).
    pub timeout: Option<Duration>,
    /// Receives the worker's progress events while the optimizer runs:
    /// `{"kind": "progress", "stage", "message", ...}`.
    pub progress: Option<UnboundedSender<Value>>,
}

impl OptimizeRequest {
    /// A request with no valset, no params, no timeout and no progress.
    pub fn new(
        optimizer: Optimizer,
        trainset: Vec<Example>,
        metric: impl Into<String>,
        out: impl Into<PathBuf>,
    ) -> Self {
        OptimizeRequest {
            optimizer,
            trainset,
            valset: None,
            metric: metric.into(),
            params: Map::new(),
            out: out.into(),
            timeout: None,
            progress: None,
        }
    }
}

/// What an optimizer run produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OptimizeReport {
    /// The state file written (absolute).
    pub state_path: PathBuf,
    /// SHA-256 of its content.
    pub digest: String,
    pub optimizer: Optimizer,
    /// Few-shot demos across the program's predictors.
    pub demos: usize,
    /// The optimizer's own score of the program it returned, when it reports one.
    pub score: Option<f64>,
    /// The LM calls the whole run made.
    pub usage: Usage,
}

impl OptimizeReport {
    /// The state file as a program definition refers to it.
    pub fn state_file(&self) -> StateFile {
        StateFile {
            path: self.state_path.clone(),
            digest: self.digest.clone(),
        }
    }
}

impl Program {
    /// Runs `request.optimizer` on this program in one worker and writes the optimized
    /// state to `request.out`. Progress events are forwarded to `request.progress` as the
    /// worker sends them. Load the result with
    /// [`ProgramSpec::with_state`](super::ProgramSpec::with_state).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(program: dspex::Program, rows: Vec<serde_json::Map<String, serde_json::Value>>) -> dspex::Result<()> {
    /// use dspex::program::{OptimizeRequest, Optimizer};
    /// let trainset = program.examples(rows, "trainset")?;
    /// let request = OptimizeRequest::new(Optimizer::BootstrapFewShot, trainset, "my_metrics:exact", "qa.json");
    /// let report = program.optimize(request).await?;
    /// println!("{} demos in {}", report.demos, report.state_path.display());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `validation` for an empty trainset (before anything is sent), and from the worker
    /// for a metric that is not callable, params the optimizer does not take, a valset
    /// given to `bootstrap_fewshot`, or an `out` it cannot write; `lm`, `python` when the
    /// optimizer fails; `timeout` past `request.timeout`.
    pub async fn optimize(&self, request: OptimizeRequest) -> Result<OptimizeReport> {
        let OptimizeRequest {
            optimizer,
            trainset,
            valset,
            metric,
            params,
            out,
            timeout,
            progress,
        } = request;
        let mut args = json!({
            "program_id": self.def.id,
            "definition": self.def.to_wire(),
            "digest": self.def.digest(),
            "optimizer": optimizer.as_str(),
            "trainset": wire_examples(&trainset, "trainset")?,
            "metric": metric,
            "params": params,
            "out": std::path::absolute(&out).unwrap_or(out),
        });
        if let Some(valset) = valset {
            args["valset"] = wire_examples(&valset, "valset")?;
        }
        let mut call = self.call("optimize", args);
        call = match timeout {
            Some(limit) => call.timeout(limit),
            None => call.no_timeout(),
        };
        if let Some(progress) = progress {
            call = call.events(progress);
        }
        let result = self
            .session
            .system
            .execute(call)
            .await
            .map_err(|e| super::map_program_error(e, &self.def.id, &self.session.id))?;
        let report = report_of(&result)?;
        self.session.system.record_usage(&report.usage);
        Ok(report)
    }

    /// A row as an example: the program's inputs (validated) and every other field but
    /// `id` as labels.
    ///
    /// # Errors
    ///
    /// `validation` naming the field, as [`split_row`](Self::split_row).
    pub fn example(&self, row: Map<String, Value>) -> Result<Example, ValidationError> {
        let (inputs, mut labels) = self.split_row(row)?;
        labels.remove("id");
        Ok(Example { inputs, labels })
    }

    /// Rows as examples; `what` (`"trainset"`) names the set in errors.
    ///
    /// # Errors
    ///
    /// `validation` naming the row and field, e.g. `trainset[3].question`.
    pub fn examples(&self, rows: Vec<Map<String, Value>>, what: &str) -> Result<Vec<Example>> {
        rows.into_iter()
            .enumerate()
            .map(|(index, row)| {
                self.example(row).map_err(|e| {
                    let field = match e.field.as_str() {
                        "" => format!("{what}[{index}]"),
                        field => format!("{what}[{index}].{field}"),
                    };
                    Error::Validation(ValidationError::new(field, e.message))
                })
            })
            .collect()
    }
}

/// Examples as the bridge's `[{"inputs", "labels"}]`.
fn wire_examples(examples: &[Example], what: &str) -> Result<Value> {
    if examples.is_empty() {
        return Err(Error::Validation(ValidationError::new(
            what,
            format!("the {what} is empty; give at least one example"),
        )));
    }
    Ok(examples.iter().map(Example::to_wire).collect())
}

fn report_of(result: &Value) -> Result<OptimizeReport> {
    let bad = || Error::Protocol(format!("`optimize` answered without its report: {result}"));
    let text = |key: &str| result.get(key).and_then(Value::as_str).ok_or_else(bad);
    Ok(OptimizeReport {
        state_path: PathBuf::from(text("state_path")?),
        digest: text("digest")?.to_owned(),
        optimizer: text("optimizer")?.parse().map_err(|_| bad())?,
        demos: result
            .get("demos")
            .and_then(Value::as_u64)
            .ok_or_else(bad)? as usize,
        score: result.get("score").and_then(Value::as_f64),
        usage: Usage::from_wire(result.get("usage")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizers_parse_from_wire_and_dspy_names_and_refuse_others_clearly() {
        for optimizer in Optimizer::ALL {
            assert_eq!(optimizer.as_str().parse::<Optimizer>().unwrap(), optimizer);
            assert_eq!(
                serde_json::to_value(optimizer).unwrap(),
                json!(optimizer.as_str())
            );
        }
        assert_eq!(
            "Bootstrap-FewShot".parse::<Optimizer>().unwrap(),
            Optimizer::BootstrapFewShot
        );
        assert_eq!(
            "BootstrapFewShotWithRandomSearch"
                .parse::<Optimizer>()
                .unwrap(),
            Optimizer::BootstrapRandom
        );
        assert_eq!("MIPROv2".parse::<Optimizer>().unwrap(), Optimizer::MiproV2);
        let err = "copro".parse::<Optimizer>().unwrap_err();
        assert_eq!(err.kind(), "validation");
        assert_eq!(
            err.to_string(),
            "`optimizer`: unknown optimizer `copro`; use one of bootstrap_fewshot, bootstrap_random, mipro_v2"
        );
    }

    #[test]
    fn the_report_is_read_from_the_bridge_answer() {
        let answer = json!({
            "state_path": "/tmp/x.json", "digest": "ab", "optimizer": "bootstrap_fewshot",
            "demos": 4, "score": null,
            "usage": {"dummy": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "calls": 9}}
        });
        let report = report_of(&answer).unwrap();
        assert_eq!(report.state_path, PathBuf::from("/tmp/x.json"));
        assert_eq!(report.optimizer, Optimizer::BootstrapFewShot);
        assert_eq!((report.demos, report.score), (4, None));
        assert_eq!(report.usage.total().calls, 9);
        assert_eq!(report.state_file().digest, "ab");
        let err = report_of(&json!({"digest": "ab"})).unwrap_err();
        assert_eq!(err.kind(), "protocol");
    }
}
