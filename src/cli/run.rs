//! `dspex run`: a DSPy program over a JSONL dataset, the CLI's main job.
//!
//! Everything that can be wrong with the command line is found before Python starts or
//! the output file is touched (exit 2, nothing written): the program source, the
//! configuration, the input, whether the output is the input or cannot be written, and
//! for `--resume` whether the output belongs to this input. Then the run loop
//! (`run_loop`) streams rows through the pool and writes them in input order.
//!
//! An output file gets a sidecar (`sidecar`) naming the input and program it belongs to,
//! which is what lets `--resume` complete an interrupted run and `dspex merge` join the
//! outputs of `--shard` runs. A signal stops the reading, gives in-flight rows
//! `shutdown.graceful_timeout` to finish, fails the rest as `shutting_down`, and leaves
//! the output valid JSONL that `--resume` completes.

pub(super) mod input;
pub(super) mod output;
mod progress;
mod reorder;
pub mod resume;
pub(super) mod rows;
mod run_loop;
pub mod sidecar;
pub(super) mod streak;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use dspex::config::Config;
use tokio::signal::unix::{signal, SignalKind};

use self::input::Input;
use self::output::Target;
use self::progress::RunProgress;
use self::resume::Previous;
pub use self::rows::RowError;
use self::run_loop::RunLoop;
pub(super) use self::run_loop::Window;
use self::sidecar::{InputRecord, Shard, Sidecar};
use super::source::{Runner, SourceArgs, SourcePlan};
use super::{note, CliError, ConfigArgs, Outcome, Signal, WorkerArgs};

pub const HELP: &str = "\
Examples:
  dspex run --signature \"question -> answer\" --input examples/questions.jsonl
  dspex run -s 'review -> sentiment: Literal[\"positive\", \"negative\", \"neutral\"], confidence: float' \\
      -i examples/reviews.jsonl -o out.jsonl --workers 4
  cat rows.jsonl | dspex run -s \"question -> answer\" -m chain_of_thought -i - --lm openai/gpt-4o-mini
  dspex run -s \"question -> answer\" -i big.jsonl -o out.jsonl --resume   # after a crash
  dspex run -s \"question -> answer\" -i big.jsonl -o part-1.jsonl --shard 1/4

Input: one JSON object per line. The program's input fields are taken from each object;
other keys (an \"id\", labels) are ignored. Blank lines are skipped and get no output line.
A line longer than run.max_line_bytes fails its row as \"input\" without being read into
memory (it ends at its newline, or at the end of the input).
Output: one line per input row, in input order, written as soon as it is ready:
  {\"index\": 0, \"id\": <the row's \"id\", exactly as written, or null>, \"outputs\": {...}, \"usage\": {...}}
  {\"index\": 1, \"id\": ..., \"error\": {\"kind\": \"validation\", \"message\": \"...\"}}
index counts non-blank lines from 0. \"usage\" (tokens, cost when known) appears when
the row made LM calls. A line that is not a JSON object fails as kind \"input\", a row
with a missing or mistyped input as \"validation\" (checked before anything is sent).
An output file gets a sidecar OUT.dspex.json recording the input (size, SHA-256), the
program's digest and the shard, for --resume and `dspex merge`.

Resuming: --resume keeps the rows already in the output (a torn last line is dropped,
rows stopped by a signal run again, failed rows too with --retry-failed), runs the
missing ones and replaces the output with the complete one, in input order (written to
OUT.dspex-resume.tmp first, so a crash during the resume loses nothing). Resuming
against another input, program or shard is refused. Without an output yet, --resume
is a normal run, so a job can always be started with it.
Sharding: --shard K/N runs the rows whose index is K modulo N; `dspex merge OUT
SHARD...` joins the shards' outputs in order (see examples/deploy/).

Exit status: 0 every row ok, 1 some rows failed, 2 bad flags/config/signature/input,
an output that cannot be written (a full disk: the output keeps whole rows only and the
message says how many), or Python could not be set up (nothing is written then), 130
on SIGINT, 143 on SIGTERM, 141 when the reader of standard output goes away (`| head`).
On SIGINT/SIGTERM no more rows are read, rows in flight get shutdown.graceful_timeout to
finish (a second signal stops waiting), the rest are written as \"shutting_down\".
A summary line goes to stderr at the end (with token totals); --report-cpu adds
dspex's own CPU time. When 10 rows in a row fail with the same error (an LM that cannot
be reached, a wrong key), stderr says so once; the run goes on.";

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
    #[command(flatten)]
    workers: WorkerArgs,
    /// Complete an interrupted output: keep its rows, run the missing ones.
    #[arg(long)]
    resume: bool,
    /// With --resume, run the rows that failed again too.
    #[arg(long, requires = "resume")]
    retry_failed: bool,
    /// Run only the rows whose index is K modulo N (0 <= K < N), e.g. 0/4.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
    /// Add dspex's own CPU time (user + system, per row) to the summary line.
    #[arg(long)]
    report_cpu: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// A run whose command line checked out: nothing started, nothing written yet.
struct Plan {
    source: SourcePlan,
    config: Config,
    input: Input,
    target: Target,
    /// The input's size and hash, for an output that gets a sidecar.
    record: Option<InputRecord>,
    shard: Option<Shard>,
    resume: Option<Resume>,
    report_cpu: bool,
}

/// What `--resume` found in the output it completes.
struct Resume {
    sidecar: Sidecar,
    previous: Previous,
}

/// Checks everything the command line names, in the order a user would fix them.
fn plan(args: RunArgs) -> Result<Plan, CliError> {
    let source = args.source.plan()?;
    let config = args.config.load(&args.workers.overrides())?;
    let input = input::open(&args.input)?;
    let target = Target::check(&args.output, input.identity, args.resume)?;
    // Only a regular file can be hashed (a device like /dev/zero never ends) and read
    // again by a resume; other inputs get a record without a hash.
    let record = match (target.is_regular(), input.len.is_some()) {
        (true, true) => Some(InputRecord::of(&args.input)?),
        (true, false) => Some(InputRecord::of(Path::new("-"))?),
        (false, _) => None,
    };
    let resume = match (&record, args.resume) {
        (Some(record), true) => resumable(&args, record, digest_before_start(&source))?,
        (None, true) => {
            return Err(CliError::Usage(format!(
                "--resume completes an output file, and `{}` is not a regular file",
                args.output.display()
            )))
        }
        (_, false) => None,
    };
    Ok(Plan {
        source,
        config,
        input,
        target,
        record,
        shard: args.shard,
        resume,
        report_cpu: args.report_cpu,
    })
}

/// The program's digest when it is known without Python (a program, whose definition
/// digest depends only on the flags and the state file; a command's is checked once the
/// runner exists).
fn digest_before_start(source: &SourcePlan) -> Option<String> {
    match source {
        SourcePlan::Program(def) => Some(def.digest().to_owned()),
        SourcePlan::Command(_) => None,
    }
}

/// What an existing output holds for `--resume`, once it is known to belong to this
/// input, shard and (when `digest` is known already) program. No output yet: `None`, a
/// normal run.
fn resumable(
    args: &RunArgs,
    record: &InputRecord,
    digest: Option<String>,
) -> Result<Option<Resume>, CliError> {
    let output = &args.output;
    if record.sha256.is_none() {
        return Err(CliError::Usage(
            "--resume needs --input FILE, a regular file: standard input or a device cannot be \
             read a second time to find the rows that are missing"
                .into(),
        ));
    }
    if !output.exists() {
        return Ok(None);
    }
    let sidecar = Sidecar::read(output)?.ok_or_else(|| {
        CliError::Usage(format!(
            "cannot resume `{}`: it has no run record `{}`, so it cannot be checked against \
             the input; run without --resume to start over",
            output.display(),
            Sidecar::path_for(output).display()
        ))
    })?;
    if let Some(why) = sidecar.mismatch(record, digest.as_deref(), args.shard) {
        return Err(CliError::Usage(format!(
            "cannot resume `{}`: {why}",
            output.display()
        )));
    }
    let previous = Previous::scan(output, args.retry_failed)?;
    Ok(Some(Resume { sidecar, previous }))
}

/// SIGINT and SIGTERM as one stream. Installed by the binary only, never the library.
pub struct Signals {
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
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

pub async fn run(args: RunArgs) -> Result<Outcome, CliError> {
    let plan = plan(args)?;
    if let Some(outcome) = already_complete(&plan) {
        return Ok(outcome);
    }
    let mut signals = Signals::install()?;
    let begun = Instant::now();
    let runner = tokio::select! {
        runner = start(&plan) => runner?,
        signal = signals.recv() => {
            note(format_args!("dspex: stopped by {} while starting", signal.name()));
            return Ok(Outcome::Interrupted(signal));
        }
    };
    let system = match &runner {
        Runner::Program(program) => program.session().system().clone(),
        Runner::Command { session, .. } => session.system().clone(),
    };
    let graceful = plan.config.shutdown.graceful_timeout;
    let report_cpu = plan.report_cpu;
    let result = execute(plan, &runner, &mut signals, begun.elapsed()).await;
    let graceful = match result {
        // After a signal the in-flight rows already had their grace period.
        Ok(ref ended) if matches!(ended.outcome, Outcome::Interrupted(_)) => Duration::ZERO,
        _ => graceful,
    };
    let _ = system.shutdown(graceful).await;
    let ended = result?;
    let stopped_by = match ended.outcome {
        Outcome::Interrupted(signal) => Some(signal.name()),
        _ => None,
    };
    ended.progress.finish(stopped_by, report_cpu);
    Ok(ended.outcome)
}

/// A resume of an output that already has every row: nothing to start. Only for a
/// program, whose digest was checked without Python.
fn already_complete(plan: &Plan) -> Option<Outcome> {
    let resume = plan.resume.as_ref()?;
    if !matches!(plan.source, SourcePlan::Program(_)) {
        return None;
    }
    let rows = resume.sidecar.rows.filter(|_| resume.sidecar.complete)?;
    let expected = match plan.shard {
        Some(shard) => (0..rows).filter(|i| shard.contains(*i)).count() as u64,
        None => rows,
    };
    if resume.previous.kept.len() != expected {
        return None;
    }
    note(format_args!(
        "dspex: `{}` already has all {expected} rows ({} failed); nothing to resume",
        plan.target.path().display(),
        resume.previous.failed
    ));
    Some(if resume.previous.failed == 0 {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// Python, the system, a session and what runs the rows.
async fn start(plan: &Plan) -> Result<Runner, CliError> {
    // A user command needs no DSPy in the workers; a program does.
    let dspy = matches!(plan.source, SourcePlan::Program(_));
    let system = super::start_system(&plan.config, dspy, 1).await?;
    let prepared = async {
        let session = system.open_session(None).await?;
        let runner = plan.source.prepare(&session, None).await?;
        if let (Some(resume), Some(record)) = (&plan.resume, &plan.record) {
            let digest = runner.digest();
            if let Some(why) = resume.sidecar.mismatch(record, Some(&digest), plan.shard) {
                return Err(CliError::Usage(format!(
                    "cannot resume `{}`: {why}",
                    plan.target.path().display()
                )));
            }
        }
        Ok(runner)
    }
    .await;
    if prepared.is_err() {
        let _ = system.shutdown(plan.config.shutdown.graceful_timeout).await;
    }
    prepared
}

/// Opens the output, runs the loop, and records what the output now holds.
async fn execute(
    plan: Plan,
    runner: &Runner,
    signals: &mut Signals,
    startup: Duration,
) -> Result<run_loop::Ended, CliError> {
    let Plan {
        config,
        input,
        target,
        record,
        shard,
        resume,
        ..
    } = plan;
    let output = target.path().to_owned();
    if resume.is_none() && record.is_some() {
        // The old record describes an output that is about to be emptied.
        Sidecar::remove(&output)?;
    }
    let writer = target.open(resume.is_some())?;
    let mut sidecar = match (&resume, record) {
        (Some(resume), _) => Some(resume.sidecar.clone()),
        (None, Some(record)) => Some(Sidecar::new(record, runner.digest(), shard)),
        (None, None) => None,
    };
    let progress = RunProgress::new(super::stderr_is_terminal(), input.len, startup);
    if let (None, Some(sidecar)) = (&resume, &sidecar) {
        record_sidecar(sidecar, &output, &progress);
    }
    let kept = match &resume {
        Some(resume) => Some(resume.previous.lines()?),
        None => None,
    };
    let run_loop = RunLoop::new(runner, input.reader, writer, progress, &config, shard, kept);
    let ended = run_loop.run(signals).await?;
    if let Some(sidecar) = &mut sidecar {
        if ended.rows.is_some() {
            sidecar.rows = ended.rows;
        }
        sidecar.complete = ended.complete;
        record_sidecar(sidecar, &output, &ended.progress);
    }
    Ok(ended)
}

/// Writes the sidecar; a failure costs only the ability to resume, so it is a warning.
fn record_sidecar(sidecar: &Sidecar, output: &Path, progress: &RunProgress) {
    if let Err(e) = sidecar.write(output) {
        progress.note(&format!(
            "dspex: warning: cannot write `{}` ({e}); --resume and merge will not accept this output",
            Sidecar::path_for(output).display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<RunArgs, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            run: RunArgs,
        }
        Wrapper::try_parse_from(argv).map(|w| w.run)
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["dspex", "--signature", "question -> answer", "--input", "-"];
        argv.extend_from_slice(extra);
        parse(&argv).unwrap()
    }

    #[test]
    fn workers_flag_sets_pool_size_and_startup_concurrency() {
        let overrides = args(&["--workers", "4", "--lm", "openai/x"])
            .workers
            .overrides();
        let keys: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["pool.size", "pool.startup_concurrency", "lm.model"]);
        assert_eq!(overrides[0].1, toml::Value::Integer(4));
        assert_eq!(overrides[2].1, toml::Value::from("openai/x"));
        assert!(args(&[]).workers.overrides().is_empty());
    }

    #[test]
    fn zero_workers_and_bad_shards_are_refused_by_the_flag_parser() {
        assert!(parse(&["dspex", "-s", "a -> b", "-i", "-", "--workers", "0"]).is_err());
        assert!(parse(&["dspex", "-s", "a -> b", "-i", "-", "--shard", "4/4"]).is_err());
        assert!(parse(&["dspex", "-s", "a -> b", "-i", "-", "--retry-failed"]).is_err());
        let run = args(&["--shard", "1/4", "--report-cpu"]);
        assert_eq!(run.shard, Some(Shard { index: 1, count: 4 }));
        assert!(run.report_cpu);
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
    fn resume_needs_a_file_input_and_a_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        let output = dir.path().join("out.jsonl");
        std::fs::write(&input, "{\"question\": \"q\"}\n").unwrap();
        let record = InputRecord::of(&input).unwrap();
        let mut run = args(&["--resume"]);
        run.output = output.clone();
        let stdin = InputRecord::of(Path::new("-")).unwrap();
        let e = resumable(&run, &stdin, None).err().unwrap();
        assert!(e.to_string().contains("--resume needs --input FILE"), "{e}");
        run.input = input.clone();
        assert!(
            resumable(&run, &record, None).unwrap().is_none(),
            "no output yet: a normal run"
        );
        std::fs::write(&output, "").unwrap();
        let e = resumable(&run, &record, None).err().unwrap();
        assert!(e.to_string().contains("has no run record"), "{e}");
    }

    #[test]
    fn a_missing_or_directory_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = input::open(&dir.path().join("missing.jsonl"))
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("cannot read input file"), "{e}");
        let e = input::open(dir.path()).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}
