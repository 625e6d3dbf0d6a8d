//! `dspex eval`: a program scored on a devset across the pool, as `dspy.Evaluate` scores it.
//!
//! Each row runs and is scored in a worker (the bridge's `evaluate` command: the program,
//! then the metric on the row's example), so the metric's own LM calls, if any, spread over
//! the pool too. Lines come out in devset order as soon as their predecessors are done.
//! The score at the end is `dspy.Evaluate`'s (see [`dspex::program::evaluate_score`]): a
//! row that failed counts 0 and still counts. Everything that can be wrong before the
//! first row (flags, the devset file, a factory that does not import, a state file DSPy
//! cannot load, a metric that is not callable) is found first and exits 2 with nothing
//! written.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use dspex::program::evaluate_score;
use dspex::{Program, Usage};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::Value;

use super::dataset::{self, Line};
use super::run::input::Identity;
use super::run::output::Target;
use super::run::streak::{FailureStreak, EVAL_ADVICE};
use super::run::{RowError, Window};
use super::source::{RowArgs, Runner, SourceArgs, SourcePlan};
use super::{note, CliError, ConfigArgs, Outcome, WorkerArgs};

pub const HELP: &str = "\
Examples:
  dspex eval --signature \"question -> answer\" --devset dev.jsonl --metric my_metrics:exact_match
  dspex eval --program qa.program:build --state qa.json --devset dev.jsonl \\
      --metric qa.metrics:answer_match --output scores.jsonl --workers 4

Devset: one JSON object per line. The program's input fields are its inputs; every other
field but \"id\" is a label the metric sees on the example (example.answer, ...).
The metric (\"package.module:function\", found via python.path) is called in the worker as
dspy.Evaluate calls it, metric(example, prediction), and returns a bool or a number.
Output: one line per row, in devset order:
  {\"index\": 0, \"id\": ..., \"outputs\": {...}, \"score\": 1.0, \"usage\": {...}}
  {\"index\": 1, \"id\": ..., \"error\": {\"kind\": \"python\", \"message\": \"...\"}}
At the end, on stderr: the score as dspy.Evaluate reports it, round(100 * sum / rows, 2)
with failed rows counting 0, the mean, the failed rows and rows/s.

Exit status: 0 every row scored, 1 some rows failed, 2 bad flags, devset, program or metric
(found before any row runs; nothing is written then).";

/// Flags of `dspex eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// JSONL devset: the program's inputs and the labels the metric compares against.
    #[arg(long, value_name = "FILE")]
    devset: PathBuf,
    /// The metric, "package.module:function" (found via python.path).
    #[arg(long, value_name = "PKG.MOD:FN")]
    metric: String,
    /// JSONL output file (created or truncated), or - for standard output.
    #[arg(long, short = 'o', value_name = "FILE|-", default_value = "-")]
    output: PathBuf,
    #[command(flatten)]
    workers: WorkerArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Checks a `--metric` (or other user function) flag has the form Python can import.
pub(super) fn check_function(flag: &str, target: &str) -> Result<(), CliError> {
    let valid = dspex::program::is_import_path(target);
    if valid {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--{flag} `{target}` is not of the form package.module:function"
        )))
    }
}

/// The program a source names, or a usage error for `--command` (`what` is the
/// subcommand, for the message).
pub(super) fn program_source(source: &SourceArgs, what: &str) -> Result<SourcePlan, CliError> {
    match source.plan()? {
        SourcePlan::Command(_) => Err(CliError::Usage(format!(
            "dspex {what} works on a DSPy program (--signature or --program); a --command has no prediction to score"
        ))),
        plan => Ok(plan),
    }
}

pub async fn eval(args: EvalArgs) -> Result<Outcome, CliError> {
    let source = program_source(&args.source, "eval")?;
    check_function("metric", &args.metric)?;
    let config = args.config.load(&args.workers.overrides())?;
    let devset = dataset::read(&args.devset, "devset", config.run.max_line_bytes).await?;
    // As `run` checks its output: never the devset itself, writable before Python starts.
    let devset_file = std::fs::metadata(&args.devset).map_err(|source| CliError::Io {
        action: "read",
        path: args.devset.clone(),
        source,
    })?;
    let target = Target::check(&args.output, Identity::of(&devset_file), false)?;

    let system = super::start_system(&config, true, 1).await?;
    let result = async {
        let session = system.open_session(None).await?;
        let runner = source.prepare(&session, Some(&args.metric)).await?;
        let window = Window::for_pool(&config).in_flight;
        score(&runner, devset, &args.metric, target, window).await
    }
    .await;
    let _ = system.shutdown(config.shutdown.graceful_timeout).await;
    let summary = result?;
    summary.report();
    Ok(if summary.failed == 0 {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// One output line.
#[derive(Serialize)]
struct OutputLine<'a> {
    index: usize,
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<dspex::TokenUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RowError>,
}

/// What one row came to.
struct Scored {
    score: Option<f64>,
    line: String,
    usage: Usage,
    /// Why it failed when it ran: kind and message.
    failure: Option<(String, String)>,
}

struct Summary {
    scores: Vec<Option<f64>>,
    failed: usize,
    usage: Usage,
    rows_per_second: f64,
}

impl Summary {
    /// The last lines, on stderr (ignoring a closed stderr: the results are written).
    fn report(&self) {
        let rows = self.scores.len();
        let sum: f64 = self.scores.iter().map(|s| s.unwrap_or(0.0)).sum();
        let score = evaluate_score(&self.scores).unwrap_or(0.0);
        let usage = self.usage.total();
        note(format_args!(
            "dspex eval: score {score} over {rows} rows (dspy.Evaluate: round(100 * sum / rows, 2), failed rows count 0); mean {:.4}; {} failed; {:.1} rows/s; {} LM calls, {} tokens",
            sum / rows.max(1) as f64,
            self.failed,
            self.rows_per_second,
            usage.calls,
            usage.total_tokens,
        ));
    }
}

async fn score(
    runner: &Runner,
    devset: Vec<Line>,
    metric: &str,
    output: Target,
    window: usize,
) -> Result<Summary, CliError> {
    let program = runner
        .program()
        .expect("eval prepares a program source")
        .clone();
    let mut out = output.open(false)?;
    let rows = devset.len();
    let started = Instant::now();
    let mut scored = stream::iter(devset.into_iter().enumerate())
        .map(|(index, line)| score_row(runner, &program, metric, index, line))
        .buffered(window.max(1));
    let mut summary = Summary {
        scores: Vec::with_capacity(rows),
        failed: 0,
        usage: Usage::default(),
        rows_per_second: 0.0,
    };
    let mut streak = FailureStreak::new(EVAL_ADVICE);
    while let Some(row) = scored.next().await {
        out.line(&row.line);
        out.flush().map_err(|e| out.error(e))?;
        match (&row.failure, row.score) {
            (Some((kind, message)), _) => {
                if let Some(told) = streak.failed(kind, message) {
                    note(told);
                }
            }
            (None, Some(_)) => streak.ok(),
            (None, None) => {}
        }
        summary.failed += usize::from(row.score.is_none());
        summary.scores.push(row.score);
        summary.usage.add(&row.usage);
    }
    summary.rows_per_second = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
    out.finish()?;
    Ok(summary)
}

async fn score_row(
    runner: &Runner,
    program: &Program,
    metric: &str,
    index: usize,
    line: Line,
) -> Scored {
    // Why the row failed when it ran (kind, message); a row rejected before it could run
    // says nothing about the runs of the others.
    let mut failure = None;
    let result = match line.row {
        Err(error) => Err(error),
        Ok(row) => match runner.row(row) {
            Err(error) => Err(RowError::new(
                error.kind,
                format!("line {}: {}", line.number, error.message),
            )),
            Ok(input) => match input.inputs {
                RowArgs::Program(inputs) => program
                    .score(inputs, input.labels, metric)
                    .await
                    .map_err(|e| {
                        let error = RowError::from(&e);
                        failure = Some((error.kind.clone(), error.message.clone()));
                        error
                    }),
                RowArgs::Command(_) => unreachable!("eval runs programs only"),
            },
        },
    };
    let (line, score, usage) = match result {
        Ok(scored) => {
            let usage = scored.prediction.usage;
            let text = render(OutputLine {
                index,
                id: &line.id,
                outputs: Some(Value::Object(scored.prediction.outputs)),
                score: Some(scored.score),
                usage: (!usage.is_empty()).then(|| usage.total()),
                error: None,
            });
            (text, Some(scored.score), usage)
        }
        Err(error) => {
            let text = render(OutputLine {
                index,
                id: &line.id,
                outputs: None,
                score: None,
                usage: None,
                error: Some(error),
            });
            (text, None, Usage::default())
        }
    };
    Scored {
        score,
        line,
        usage,
        failure,
    }
}

fn render(line: OutputLine<'_>) -> String {
    serde_json::to_string(&line).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<EvalArgs, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            eval: EvalArgs,
        }
        let mut argv = vec!["dspex", "--devset", "dev.jsonl"];
        argv.extend_from_slice(extra);
        Wrapper::try_parse_from(argv).map(|w| w.eval)
    }

    #[test]
    fn the_metric_must_look_like_package_module_function() {
        assert!(check_function("metric", "my_metrics:exact").is_ok());
        assert!(check_function("metric", "pkg.sub.mod:Class.method").is_ok());
        for bad in ["exact", "a:", ":b", "a-b:c", "a:b:c", "1a:b"] {
            let e = check_function("metric", bad).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("--metric `{bad}`")),
                "{e}"
            );
        }
    }

    #[test]
    fn eval_needs_a_metric_and_refuses_a_command_source() {
        assert!(parse(&["--signature", "q -> a"]).is_err(), "no --metric");
        let args = parse(&["--command", "echo", "--metric", "m:f"]).unwrap();
        let e = program_source(&args.source, "eval").unwrap_err();
        assert!(e.to_string().contains("--command has no prediction"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let args = parse(&["-s", "q -> a", "--metric", "m:f", "-w", "3"]).unwrap();
        let keys: Vec<String> = args
            .workers
            .overrides()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["pool.size", "pool.startup_concurrency"]);
    }

    #[test]
    fn the_output_may_not_be_the_devset() {
        let dir = tempfile::tempdir().unwrap();
        let devset = dir.path().join("dev.jsonl");
        std::fs::write(&devset, "{}\n").unwrap();
        let identity = Identity::of(&std::fs::metadata(&devset).unwrap());
        let link = dir.path().join("link.jsonl");
        std::fs::hard_link(&devset, &link).unwrap();
        let e = Target::check(&link, identity, false).err().unwrap();
        assert!(e.to_string().contains("is the input file"), "{e}");
        assert!(Target::check(&dir.path().join("out.jsonl"), identity, false).is_ok());
        let e = Target::check(&dir.path().join("no/out.jsonl"), identity, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
