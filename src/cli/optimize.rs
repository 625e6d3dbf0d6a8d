//! `dspex optimize`: a DSPy optimizer run on a program in one worker, progress on stderr
//! while it runs, the result written as a state file that `run --state` and
//! `eval --state` load.
//!
//! One worker is started (an optimizer is one request; its LM calls use that worker's
//! `pool.worker_concurrency` as DSPy's `num_threads`), and the request has no time limit
//! unless `--timeout` sets one. The training rows are checked against the program before
//! the optimizer starts: a row that does not fit stops the run (exit 2), since an
//! optimizer that silently trained on fewer rows would be worse than no answer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use dspex::program::{Example, OptimizeReport, OptimizeRequest, Optimizer};
use serde_json::{Map, Value};

use super::dataset::{self, Line};
use super::eval::{check_function, program_source};
use super::source::{RowArgs, Runner, SourceArgs};
use super::{note, print, CliError, ConfigArgs, Outcome, WorkerArgs};

pub const HELP: &str = "\
Examples:
  dspex optimize --optimizer bootstrap_fewshot --program qa.program:build \\
      --trainset train.jsonl --metric qa.metrics:answer_match --out qa_optimized.json
  dspex optimize --optimizer mipro_v2 --signature \"question -> answer\" --trainset train.jsonl \\
      --valset dev.jsonl --metric my_metrics:exact --out qa.json --param auto=medium \\
      --lm openai/gpt-4o-mini
  dspex run --program qa.program:build --state qa_optimized.json --input questions.jsonl

Optimizers: bootstrap_fewshot (BootstrapFewShot; no --valset), bootstrap_random
(BootstrapFewShotWithRandomSearch), mipro_v2 (MIPROv2, auto=light unless --param auto=...).
Training rows: the program's input fields are its inputs, every other field but \"id\" a
label the metric compares against; every row must fit the program.
--param KEY=VALUE goes to the optimizer's constructor or its compile(); VALUE is read as
JSON when it parses (2, 0.5, true, null, [1,2], {\"a\":1}, \"text\") and as a plain string
otherwise (auto=light). Repeat it for each key.
Progress goes to stderr while the optimizer runs; at the end the report is printed on
stdout as JSON: {\"state_path\", \"digest\", \"optimizer\", \"demos\", \"score\", \"usage\"}.
Exit status: 0 done, 1 the optimizer failed, 2 bad flags, data, program, metric or params.";

/// Flags of `dspex optimize`.
#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// bootstrap_fewshot, bootstrap_random or mipro_v2.
    #[arg(long, value_name = "NAME")]
    optimizer: String,
    #[command(flatten)]
    source: SourceArgs,
    /// JSONL training rows: the program's inputs and the labels the metric compares against.
    #[arg(long, value_name = "FILE")]
    trainset: PathBuf,
    /// JSONL validation rows, for bootstrap_random and mipro_v2.
    #[arg(long, value_name = "FILE")]
    valset: Option<PathBuf>,
    /// The metric, "package.module:function" (found via python.path), called as
    /// metric(example, prediction, trace).
    #[arg(long, value_name = "PKG.MOD:FN")]
    metric: String,
    /// Where to write the optimized program's state (a .json file).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// An optimizer parameter, KEY=VALUE (VALUE as JSON when it parses, else a string).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Stop the optimizer after this long (e.g. "30m"); no limit by default.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// The language model (sets lm.model): "dummy" or a DSPy/LiteLLM model string.
    #[arg(long, value_name = "MODEL")]
    lm: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

impl OptimizeArgs {
    /// One worker; the model if given.
    fn overrides(&self) -> Vec<(String, toml::Value)> {
        WorkerArgs {
            workers: Some(1),
            lm: self.lm.clone(),
        }
        .overrides()
    }
}

/// `--param` flags as the optimizer's keyword arguments.
fn parse_params(flags: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut params = Map::new();
    for flag in flags {
        let Some((key, value)) = flag.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--param `{flag}`: write KEY=VALUE, e.g. --param max_bootstrapped_demos=4"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(CliError::Usage(format!(
                "--param `{flag}`: the key is empty"
            )));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
        if params.insert(key.to_owned(), value).is_some() {
            return Err(CliError::Usage(format!(
                "--param `{key}` is given twice; give each key once"
            )));
        }
    }
    Ok(params)
}

/// The state file is written by the worker at the end; check now that it can be.
fn check_out(out: &Path) -> Result<(), CliError> {
    if out.extension().map_or(true, |e| e != "json") {
        return Err(CliError::Usage(format!(
            "--out `{}` must end in .json: the state is saved in DSPy's JSON format",
            out.display()
        )));
    }
    if out.is_dir() {
        return Err(CliError::Usage(format!(
            "--out `{}` is a directory",
            out.display()
        )));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CliError::Usage(format!(
            "--out `{}`: directory `{}` does not exist",
            out.display(),
            parent.display()
        )));
    }
    Ok(())
}

pub async fn optimize(args: OptimizeArgs) -> Result<Outcome, CliError> {
    let optimizer: Optimizer = args.optimizer.parse().map_err(|_| {
        CliError::Usage(format!(
            "--optimizer `{}` is not one dspex runs; use one of {}",
            args.optimizer,
            Optimizer::ALL.map(Optimizer::as_str).join(", ")
        ))
    })?;
    let source = program_source(&args.source, "optimize")?;
    check_function("metric", &args.metric)?;
    let params = parse_params(&args.params)?;
    check_out(&args.out)?;
    if optimizer == Optimizer::BootstrapFewShot && args.valset.is_some() {
        return Err(CliError::Usage(
            "--valset: bootstrap_fewshot bootstraps from the trainset alone; use bootstrap_random or mipro_v2 to select on a valset".into(),
        ));
    }
    let config = args.config.load(&args.overrides())?;
    let trainset = dataset::read(&args.trainset, "trainset", config.run.max_line_bytes).await?;
    let valset = match &args.valset {
        Some(path) => Some(dataset::read(path, "valset", config.run.max_line_bytes).await?),
        None => None,
    };

    let system = super::start_system(&config, true, 1).await?;
    let begun = Instant::now();
    let result = async {
        let session = system.open_session(None).await?;
        let runner = source.prepare(&session, Some(&args.metric)).await?;
        let request = OptimizeRequest {
            optimizer,
            trainset: examples(&runner, trainset, "trainset")?,
            valset: match valset {
                Some(lines) => Some(examples(&runner, lines, "valset")?),
                None => None,
            },
            metric: args.metric.clone(),
            params,
            out: args.out.clone(),
            timeout: args.timeout,
            progress: None,
        };
        run(&runner, request).await
    }
    .await;
    let _ = system.shutdown(config.shutdown.graceful_timeout).await;
    let report = result?;
    print(serde_json::to_string(&report).expect("the report serialises"))?;
    note(format_args!(
        "dspex optimize: wrote {} ({} demos{}) in {:.1}s; run it with --state {}",
        report.state_path.display(),
        report.demos,
        report
            .score
            .map(|s| format!(", the optimizer's score {s}"))
            .unwrap_or_default(),
        begun.elapsed().as_secs_f64(),
        report.state_path.display(),
    ));
    Ok(Outcome::Success)
}

/// Rows as examples, each checked against the program (once: [`Runner::row`]).
fn examples(runner: &Runner, lines: Vec<Line>, what: &str) -> Result<Vec<Example>, CliError> {
    let mut examples = Vec::with_capacity(lines.len());
    for line in lines {
        let bad =
            |message: String| CliError::Usage(format!("--{what}: line {}: {message}", line.number));
        let row = line
            .row
            .map_err(|e| CliError::Usage(format!("--{what}: {}", e.message)))?;
        let input = runner.row(row).map_err(|e| bad(e.message))?;
        let RowArgs::Program(inputs) = input.inputs else {
            unreachable!("optimize runs programs only")
        };
        examples.push(Example {
            inputs,
            labels: input.labels,
        });
    }
    Ok(examples)
}

/// Runs the optimizer, printing its progress as it arrives.
async fn run(runner: &Runner, mut request: OptimizeRequest) -> Result<OptimizeReport, CliError> {
    let program = runner
        .program()
        .expect("optimize prepares a program source");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    request.progress = Some(tx);
    note(format_args!(
        "dspex optimize: {} on {} training rows{}; progress follows",
        request.optimizer,
        request.trainset.len(),
        request
            .valset
            .as_ref()
            .map(|v| format!(" and {} validation rows", v.len()))
            .unwrap_or_default()
    ));
    let optimizing = program.optimize(request);
    tokio::pin!(optimizing);
    let result = loop {
        tokio::select! {
            result = &mut optimizing => break result,
            Some(event) = rx.recv() => progress(&event),
        }
    };
    while let Ok(event) = rx.try_recv() {
        progress(&event);
    }
    Ok(result?)
}

fn progress(event: &Value) {
    let message = event
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| event.to_string(), str::to_owned);
    match event.get("stage").and_then(Value::as_str) {
        Some(stage) => note(format_args!("  [{stage}] {message}")),
        None => note(format_args!("  {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_are_json_when_they_parse_and_strings_otherwise() {
        let flags: Vec<String> = [
            "max_bootstrapped_demos=4",
            "auto=light",
            "temperature=0.5",
            "flag=true",
            "nothing=null",
            "sizes=[1, 2]",
            "quoted=\"4\"",
            "text=a=b",
            "empty=",
        ]
        .map(String::from)
        .into();
        let params = parse_params(&flags).unwrap();
        assert_eq!(
            Value::Object(params),
            json!({
                "max_bootstrapped_demos": 4, "auto": "light", "temperature": 0.5, "flag": true,
                "nothing": null, "sizes": [1, 2], "quoted": "4", "text": "a=b", "empty": ""
            })
        );
    }

    #[test]
    fn a_param_without_a_key_or_given_twice_is_a_usage_error() {
        let e = parse_params(&["demos".into()]).unwrap_err();
        assert!(e.to_string().contains("write KEY=VALUE"), "{e}");
        let e = parse_params(&["=3".into()]).unwrap_err();
        assert!(e.to_string().contains("the key is empty"), "{e}");
        let e = parse_params(&["a=1".into(), "a=2".into()]).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn out_must_be_a_json_file_in_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_out(&dir.path().join("x.json")).is_ok());
        let e = check_out(&dir.path().join("x.pkl")).unwrap_err();
        assert!(e.to_string().contains("must end in .json"), "{e}");
        let e = check_out(&dir.path().join("missing/x.json")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        std::fs::create_dir(dir.path().join("d.json")).unwrap();
        let e = check_out(&dir.path().join("d.json")).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }

    #[test]
    fn optimize_runs_one_worker() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            optimize: OptimizeArgs,
        }
        let args = Wrapper::try_parse_from([
            "dspex",
            "--optimizer",
            "bootstrap_fewshot",
            "-s",
            "q -> a",
            "--trainset",
            "t.jsonl",
            "--metric",
            "m:f",
            "--out",
            "o.json",
            "--param",
            "a=1",
            "--param",
            "b=x",
            "--timeout",
            "90s",
        ])
        .unwrap()
        .optimize;
        let overrides = args.overrides();
        assert_eq!(
            overrides[0],
            ("pool.size".to_owned(), toml::Value::Integer(1))
        );
        assert_eq!(args.timeout, Some(Duration::from_secs(90)));
        assert_eq!(args.params.len(), 2);
    }
}
