//! `dspex run`: a DSPy program over a JSONL dataset, the CLI's main job.
//!
//! Everything that can be wrong with the command line is found before Python starts or
//! the output file is touched (exit 2, nothing written). Then rows stream through the
//! pool: the input is read lazily, about two rows per worker are in flight, finished
//! rows wait in a reorder buffer until their predecessors are written, and the output is
//! flushed as it grows. A signal stops the reading, gives in-flight rows
//! `shutdown.graceful_timeout` to finish, fails the rest, and leaves the output a valid
//! JSONL prefix of the input.

mod input;
mod progress;
mod reorder;
mod rows;

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use clap::Args;
use dspex::config::Config;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use serde_json::Value;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::signal::unix::{signal, SignalKind};

use self::input::Lines;
use self::progress::RunProgress;
use self::reorder::Reorder;
pub use self::rows::RowError;
use super::source::{RowOutput, Runner, SourceArgs, SourcePlan};
use super::{CliError, ConfigArgs, Outcome, Signal};

pub const HELP: &str = "\
Examples:
  dspex run --signature \"question -> answer\" --input examples/questions.jsonl
  dspex run -s 'review -> sentiment: Literal[\"positive\", \"negative\", \"neutral\"], confidence: float' \\
      -i examples/reviews.jsonl -o out.jsonl --workers 4
  cat rows.jsonl | dspex run -s \"question -> answer\" -m chain_of_thought -i - --lm openai/gpt-4o-mini

Input: one JSON object per line. The signature's input fields are taken from each object;
other keys (an \"id\", labels) are ignored. Blank lines are skipped and get no output line.
Output: one line per input row, in input order, written as soon as it is ready:
  {\"index\": 0, \"id\": <the row's \"id\" or null>, \"outputs\": {...}}
  {\"index\": 1, \"id\": ..., \"error\": {\"kind\": \"validation\", \"message\": \"...\"}}
index counts rows from 0. A line that is not a JSON object fails as kind \"input\", a row
with a missing or mistyped input as \"validation\" (checked before anything is sent).

Exit status: 0 every row ok, 1 some rows failed, 2 bad flags/config/signature/input or
Python could not be set up (nothing is written then), 130 on SIGINT, 143 on SIGTERM,
141 when the reader of standard output goes away (e.g. `| head`).
On SIGINT/SIGTERM no more rows are read, rows in flight get shutdown.graceful_timeout to
finish (a second signal stops waiting), and the output is a valid prefix of the input.
A summary line goes to stderr at the end; DSPEX_REPORT_CPU=1 adds dspex's own CPU time.";

/// Flags of `dspex run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// JSONL input file, or - for standard input.
    #[arg(long, short = 'i', value_name = "FILE|-")]
    input: PathBuf,
    /// JSONL output file (created or truncated), or - for standard output.
    #[arg(long, short = 'o', value_name = "FILE|-", default_value = "-")]
    output: PathBuf,
    /// Number of Python workers (sets pool.size and pool.startup_concurrency).
    #[arg(long, short = 'w', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,
    /// The language model (sets lm.model): "dummy" or a DSPy/LiteLLM model string.
    #[arg(long, value_name = "MODEL")]
    lm: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

impl RunArgs {
    /// The flags that override configuration keys.
    fn overrides(&self) -> Vec<(String, toml::Value)> {
        let mut overrides = Vec::new();
        if let Some(workers) = self.workers {
            let n = toml::Value::Integer(i64::from(workers));
            overrides.push(("pool.size".to_owned(), n.clone()));
            overrides.push(("pool.startup_concurrency".to_owned(), n));
        }
        if let Some(lm) = &self.lm {
            overrides.push(("lm.model".to_owned(), toml::Value::from(lm.as_str())));
        }
        overrides
    }
}

/// A run whose command line checked out: nothing started, nothing written yet.
struct Plan {
    source: SourcePlan,
    config: Config,
    input: Input,
    output: PathBuf,
}

type Reader = Box<dyn AsyncBufRead + Unpin + Send>;

struct Input {
    reader: Reader,
    /// The size of a regular input file, for the progress bar.
    len: Option<u64>,
}

/// Checks everything the command line names, in the order a user would fix them.
fn plan(args: RunArgs) -> Result<Plan, CliError> {
    let source = args.source.plan()?;
    let config = args.config.load(&args.overrides())?;
    let input = open_input(&args.input)?;
    check_output(&args.output, &args.input)?;
    Ok(Plan {
        source,
        config,
        input,
        output: args.output,
    })
}

fn open_input(path: &Path) -> Result<Input, CliError> {
    if path == Path::new("-") {
        // A duplicate of fd 0 read through tokio's file reader (on its blocking pool),
        // which works for pipes and terminals alike.
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| CliError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })?;
        return Ok(Input {
            reader: Box::new(BufReader::with_capacity(
                64 * 1024,
                tokio::fs::File::from_std(File::from(fd)),
            )),
            len: None,
        });
    }
    let io_error = |source| CliError::Io {
        action: "read input file",
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    if meta.is_dir() {
        return Err(CliError::Usage(format!(
            "cannot read input file `{}`: it is a directory",
            path.display()
        )));
    }
    Ok(Input {
        reader: Box::new(BufReader::with_capacity(
            64 * 1024,
            tokio::fs::File::from_std(file),
        )),
        len: meta.is_file().then_some(meta.len()),
    })
}

/// The output file is only created once Python is up; check now that it can be.
fn check_output(output: &Path, input: &Path) -> Result<(), CliError> {
    if output == Path::new("-") {
        return Ok(());
    }
    if output.is_dir() {
        return Err(CliError::Usage(format!(
            "cannot write output file `{}`: it is a directory",
            output.display()
        )));
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CliError::Usage(format!(
            "cannot write output file `{}`: directory `{}` does not exist",
            output.display(),
            parent.display()
        )));
    }
    if input != Path::new("-") {
        if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
            if a == b {
                return Err(CliError::Usage(format!(
                    "--output `{}` is the input file; writing it would destroy the input",
                    output.display()
                )));
            }
        }
    }
    Ok(())
}

/// SIGINT and SIGTERM as one stream. Installed by the binary only, never the library.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, CliError> {
        let install = |kind| {
            signal(kind).map_err(|e| {
                CliError::Dspex(dspex::Error::Environment(format!(
                    "cannot install a signal handler: {e}"
                )))
            })
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    /// The next signal (cancel safe).
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

pub async fn run(args: RunArgs) -> Result<Outcome, CliError> {
    let plan = plan(args)?;
    let mut signals = Signals::install()?;
    let config = plan.config.clone();
    let begun = std::time::Instant::now();
    let runner = tokio::select! {
        runner = start(&plan) => runner?,
        signal = signals.recv() => {
            eprintln!("dspex: stopped by {} while starting", signal.name());
            return Ok(Outcome::Interrupted(signal));
        }
    };
    let system = match &runner {
        Runner::Program(program) => program.session().system().clone(),
        Runner::Command { session, .. } => session.system().clone(),
    };
    let result = stream(plan, &runner, &mut signals, begun.elapsed()).await;
    let graceful = match result {
        // After a signal the in-flight rows already had their grace period.
        Ok((Outcome::Interrupted(_), _)) => Duration::ZERO,
        _ => config.shutdown.graceful_timeout,
    };
    let _ = system.shutdown(graceful).await;
    let (outcome, progress) = result?;
    let stopped_by = match outcome {
        Outcome::Interrupted(signal) => Some(signal.name()),
        _ => None,
    };
    progress.finish(stopped_by, report_cpu());
    Ok(outcome)
}

fn report_cpu() -> bool {
    std::env::var("DSPEX_REPORT_CPU").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Python, the system, a session and what runs the rows.
async fn start(plan: &Plan) -> Result<Runner, CliError> {
    // A user command needs no DSPy in the workers; a program does.
    let dspy = matches!(plan.source, SourcePlan::Program(_));
    let system = super::start_system(&plan.config, dspy, 1).await?;
    let prepared = async {
        let session = system.open_session(None).await?;
        plan.source.prepare(&session, None).await
    }
    .await;
    if prepared.is_err() {
        let _ = system.shutdown(plan.config.shutdown.graceful_timeout).await;
    }
    prepared
}

type RowFuture = Pin<Box<dyn Future<Output = (u64, dspex::Result<RowOutput>)> + Send>>;

/// A finished row waiting to be written.
struct Finished {
    line: String,
    ok: bool,
    end_offset: u64,
}

/// Where finished rows go: the reorder buffer, then the output in order.
struct Sink {
    out: BufWriter<Box<dyn Write + Send>>,
    path: PathBuf,
    reorder: Reorder<Finished>,
    progress: RunProgress,
}

impl Sink {
    fn finish(
        &mut self,
        index: u64,
        id: &Value,
        end_offset: u64,
        result: Result<RowOutput, RowError>,
    ) {
        let line = rows::render(index, id, &result);
        self.reorder.insert(
            index,
            Finished {
                line,
                ok: result.is_ok(),
                end_offset,
            },
        );
    }

    /// Writes every row that is next in order, then flushes, so the output grows
    /// steadily rather than in buffer-sized bursts.
    fn write_ready(&mut self) -> Result<(), CliError> {
        let mut wrote = false;
        while let Some(row) = self.reorder.pop() {
            writeln!(self.out, "{}", row.line).map_err(|e| self.write_error(e))?;
            self.progress.row_written(row.ok, Some(row.end_offset));
            wrote = true;
        }
        if wrote {
            self.out.flush().map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    fn write_error(&self, source: std::io::Error) -> CliError {
        CliError::Io {
            action: "write output to",
            path: self.path.clone(),
            source,
        }
    }
}

fn create_output(path: &Path) -> Result<Box<dyn Write + Send>, CliError> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = File::create(path).map_err(|source| CliError::Io {
        action: "create output file",
        path: path.to_owned(),
        source,
    })?;
    Ok(Box::new(file))
}

/// Runs every row and writes the output; stops early on a signal.
async fn stream(
    plan: Plan,
    runner: &Runner,
    signals: &mut Signals,
    startup: Duration,
) -> Result<(Outcome, RunProgress), CliError> {
    let Plan {
        config,
        input,
        output,
        ..
    } = plan;
    let terminal = super::stderr_is_terminal();
    let mut sink = Sink {
        out: BufWriter::with_capacity(64 * 1024, create_output(&output)?),
        path: output,
        reorder: Reorder::default(),
        progress: RunProgress::new(terminal, input.len, startup),
    };
    let mut lines = Lines::new(input.reader);
    // Every slot of the pool busy, and a few rows more so a slot never waits for a row.
    let max_in_flight = config.pool.capacity() + config.pool.size;
    // Rows read but not yet written: bounds the reorder buffer behind one slow row.
    let max_window = (64 * config.pool.size as u64).max(1024);
    let mut in_flight: FuturesUnordered<RowFuture> = FuturesUnordered::new();
    let mut outstanding: HashMap<u64, (Value, u64)> = HashMap::new();
    let mut next_index: u64 = 0;
    let mut eof = false;
    let mut read_error = None;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + progress::LINE_INTERVAL,
        progress::LINE_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopped_by = None;

    while !(eof && in_flight.is_empty()) {
        let can_read = !eof
            && in_flight.len() < max_in_flight
            && next_index - sink.reorder.next_index() < max_window;
        tokio::select! {
            biased;
            signal = signals.recv() => {
                stopped_by = Some(signal);
                break;
            }
            Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                // Take every row that is already done too, so one flush covers them all.
                let mut done = Some(first);
                while let Some((index, result)) = done {
                    let (id, end_offset) = outstanding.remove(&index).unwrap_or_default();
                    sink.finish(index, &id, end_offset, result.map_err(|e| RowError::from(&e)));
                    done = in_flight.next().now_or_never().flatten();
                }
                sink.write_ready()?;
            }
            read = lines.next_line(), if can_read => match read {
                Ok(Some(line)) => {
                    let index = next_index;
                    next_index += 1;
                    match rows::parse(&line.bytes, line.number, runner) {
                        Ok(row) => {
                            outstanding.insert(index, (row.id, line.end_offset));
                            let runner = runner.clone();
                            in_flight.push(Box::pin(async move {
                                (index, runner.run(row.input).await)
                            }));
                        }
                        Err(rejected) => {
                            sink.finish(index, &rejected.id, line.end_offset, Err(rejected.error));
                            sink.write_ready()?;
                        }
                    }
                }
                Ok(None) => eof = true,
                Err(e) => {
                    // Rows already read still finish; then the run fails.
                    eof = true;
                    read_error = Some(e);
                }
            },
            _ = tick.tick() => sink.progress.tick(),
        }
    }

    if let Some(signal) = stopped_by {
        sink.progress.note(&format!(
            "dspex: {}: reading no more rows; waiting up to {:?} for {} in flight",
            signal.name(),
            config.shutdown.graceful_timeout,
            in_flight.len()
        ));
        let deadline = tokio::time::Instant::now() + config.shutdown.graceful_timeout;
        while !in_flight.is_empty() {
            tokio::select! {
                Some((index, result)) = in_flight.next() => {
                    let (id, end_offset) = outstanding.remove(&index).unwrap_or_default();
                    sink.finish(index, &id, end_offset, result.map_err(|e| RowError::from(&e)));
                    sink.write_ready()?;
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = signals.recv() => break,
            }
        }
        drop(in_flight);
        let mut unfinished: Vec<_> = outstanding.into_iter().collect();
        unfinished.sort_by_key(|(index, _)| *index);
        for (index, (id, end_offset)) in unfinished {
            let error = RowError::new(
                "shutting_down",
                format!("stopped by {} before this row finished", signal.name()),
            );
            sink.finish(index, &id, end_offset, Err(error));
        }
        sink.write_ready()?;
        return Ok((Outcome::Interrupted(signal), sink.progress));
    }

    debug_assert_eq!(sink.reorder.waiting(), 0, "every row read was written");
    if let Some(source) = read_error {
        sink.progress.note(&format!(
            "dspex: {} rows written before the input failed",
            sink.progress.ok() + sink.progress.failed()
        ));
        return Err(CliError::Io {
            action: "read input",
            path: PathBuf::from("(input)"),
            source,
        });
    }
    let outcome = if sink.progress.failed() == 0 {
        Outcome::Success
    } else {
        Outcome::Failed
    };
    Ok((outcome, sink.progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            run: RunArgs,
        }
        let mut argv = vec!["dspex", "--signature", "question -> answer", "--input", "-"];
        argv.extend_from_slice(extra);
        Wrapper::try_parse_from(argv).unwrap().run
    }

    #[test]
    fn workers_flag_sets_pool_size_and_startup_concurrency() {
        let overrides = args(&["--workers", "4", "--lm", "openai/x"]).overrides();
        let keys: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["pool.size", "pool.startup_concurrency", "lm.model"]);
        assert_eq!(overrides[0].1, toml::Value::Integer(4));
        assert_eq!(overrides[2].1, toml::Value::from("openai/x"));
        assert!(args(&[]).overrides().is_empty());
    }

    #[test]
    fn zero_workers_is_refused_by_the_flag_parser() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            run: RunArgs,
        }
        let parsed =
            Wrapper::try_parse_from(["dspex", "-s", "a -> b", "-i", "-", "--workers", "0"]);
        assert!(parsed.is_err());
    }

    #[test]
    fn a_bad_signature_or_module_is_a_usage_error_naming_the_flag() {
        let mut bad = args(&[]);
        bad.source.signature = Some("question ->".into());
        let e = plan(bad).err().unwrap();
        assert!(
            e.to_string().starts_with("--signature: invalid signature"),
            "{e}"
        );
        let e = plan(args(&["--module", "react"])).err().unwrap();
        assert!(
            e.to_string()
                .starts_with("--module: unknown module kind `react`"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn output_must_not_be_the_input_or_in_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        let e = check_output(&input, &input).unwrap_err();
        assert!(e.to_string().contains("is the input file"), "{e}");
        let missing = dir.path().join("no/such/out.jsonl");
        let e = check_output(&missing, &input).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = check_output(dir.path(), &input).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert!(check_output(&dir.path().join("out.jsonl"), &input).is_ok());
        assert!(check_output(Path::new("-"), &input).is_ok());
    }

    #[test]
    fn a_missing_or_directory_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_input(&dir.path().join("missing.jsonl")).err().unwrap();
        assert!(e.to_string().starts_with("cannot read input file"), "{e}");
        let e = open_input(dir.path()).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}
