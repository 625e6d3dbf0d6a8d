//! The `dspex` command line: flags, where settings come from, and how a command's
//! result becomes an exit code.
//!
//! `main.rs` only parses flags and hands them here. Each subcommand lives in its own
//! file under `cli/`; this module holds what they share: the two-stage configuration
//! (flags are turned into overrides and merged with the config file and the
//! environment by [`Config::load`], which validates once), the managed Python
//! environment with visible progress, and the error type that decides the exit code.

mod call;
mod dataset;
mod doctor;
mod eval;
mod merge;
mod optimize;
mod python;
mod run;
mod setup;
mod source;
mod status;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dspex::config::{self, Config};
use dspex::System;

/// The config file read when `--config` is not given, if it exists in the working
/// directory.
const LOCAL_CONFIG: &str = "dspex.toml";

const CONFIG_HELP: &str = "\
Configuration: the defaults built into dspex (every key documented in config/dspex.toml),
then the config file (--config FILE, else $DSPEX_CONFIG, else ./dspex.toml when it exists),
then DSPEX_<SECTION>__<KEY> environment variables (e.g. DSPEX_POOL__SIZE=4), then flags.
Logging: RUST_LOG=info (or debug) prints dspex's log to stderr; the default is warn.";

/// Run DSPy programs over a supervised pool of Python workers.
#[derive(Debug, Parser)]
#[command(name = "dspex", version, about, after_help = CONFIG_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a DSPy program over a JSONL dataset, one output line per input row.
    #[command(after_help = run::HELP)]
    Run(run::RunArgs),
    /// Join the outputs of `run --shard K/N` into one output in input order.
    #[command(after_help = merge::HELP)]
    Merge(merge::MergeArgs),
    /// Score a DSPy program on a JSONL devset with a metric, as dspy.Evaluate does.
    #[command(after_help = eval::HELP)]
    Eval(eval::EvalArgs),
    /// Optimize a DSPy program (BootstrapFewShot, MIPROv2, ...) and save its state.
    #[command(after_help = optimize::HELP)]
    Optimize(optimize::OptimizeArgs),
    /// Send one command (built-in, DSPy or user) through the pool and print its result.
    #[command(after_help = call::HELP)]
    Call(call::CallArgs),
    /// Create (or verify) the managed Python environment the workers run in.
    #[command(after_help = setup::HELP)]
    Setup(setup::SetupArgs),
    /// Check Python, the venv, DSPy, a worker handshake and the configuration.
    #[command(after_help = doctor::HELP)]
    Doctor(doctor::DoctorArgs),
    /// Start the system, wait for every worker, and print its health and metrics.
    #[command(after_help = status::HELP)]
    Status(status::StatusArgs),
}

/// `--workers` and `--lm`, shared by the commands that run a program over a dataset.
#[derive(Debug, Clone, Default, Args)]
struct WorkerArgs {
    /// Number of Python workers (sets pool.size and pool.startup_concurrency).
    #[arg(long, short = 'w', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,
    /// The language model (sets lm.model): "dummy" or a DSPy/LiteLLM model string.
    #[arg(long, value_name = "MODEL")]
    lm: Option<String>,
}

impl WorkerArgs {
    /// The configuration keys these flags set.
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

/// `--config`, shared by every subcommand.
#[derive(Debug, Clone, Args)]
struct ConfigArgs {
    /// TOML config file (default: ./dspex.toml if present, else the built-in defaults).
    #[arg(long, short = 'c', value_name = "FILE", env = "DSPEX_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArgs {
    /// The file to read: the flag, else `./dspex.toml` when there is one.
    fn file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let local = Path::new(LOCAL_CONFIG);
            local.is_file().then(|| local.to_owned())
        })
    }

    /// Defaults, file, environment and `overrides` (from flags), validated once.
    fn load(&self, overrides: &[(String, toml::Value)]) -> Result<Config, CliError> {
        let file = self.file();
        if let Some(file) = &file {
            log::info!("reading config file {}", file.display());
        }
        Ok(Config::load(
            file.as_deref(),
            config::process_env(),
            overrides,
        )?)
    }
}

/// How a command ended, before it becomes a process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything worked: exit 0.
    Success,
    /// The command ran but some of its work failed (rows, a Python error, a check): exit 1.
    Failed,
    /// Stopped by a signal: exit 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    Interrupted(Signal),
}

/// The signals `dspex run` stops on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    fn number(self) -> u8 {
        match self {
            Signal::Interrupt => libc::SIGINT as u8,
            Signal::Terminate => libc::SIGTERM as u8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag, the signature, the input or the output is unusable: exit 2.
    #[error("{0}")]
    Usage(String),
    /// An error from the dspex library. Setup errors (config, environment, signature)
    /// exit 2; errors of the work itself (a Python exception, a timeout) exit 1.
    #[error(transparent)]
    Dspex(#[from] dspex::Error),
    /// A file could not be opened, read or written: exit 2.
    #[error("cannot {action} {}: {source}", describe_path(path))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<config::ConfigError> for CliError {
    fn from(e: config::ConfigError) -> Self {
        CliError::Dspex(e.into())
    }
}

impl CliError {
    fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Io { .. } => 2,
            CliError::Dspex(e) => e.error_kind().exit_code(),
        }
    }
}

/// `-` reads as standard input/output in messages.
fn describe_path(path: &Path) -> String {
    if path == Path::new("-") {
        "standard input/output".to_owned()
    } else {
        format!("`{}`", path.display())
    }
}

/// Logging to stderr only (stdout carries results), filtered by `RUST_LOG`, default warn.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
}

/// Runs the parsed command line and says how the process should exit.
pub fn main(cli: Cli) -> ExitCode {
    // One thread is enough: the run loop is a single task and the workers are driven by
    // the actor system's own thread; fewer threads mean fewer cross-thread wake-ups per row.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            note(format_args!("dspex: cannot start the async runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Merge(args) => merge::merge(args).await,
            Command::Eval(args) => eval::eval(args).await,
            Command::Optimize(args) => optimize::optimize(args).await,
            Command::Call(args) => call::call(args).await,
            Command::Setup(args) => setup::setup(args).await,
            Command::Doctor(args) => doctor::doctor(args).await,
            Command::Status(args) => status::status(args).await,
        }
    });
    // A blocking venv build may still be running if a signal cut it short; do not wait.
    runtime.shutdown_background();
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Interrupted(signal)) => ExitCode::from(128 + signal.number()),
        Err(e) if e.is_broken_pipe() => {
            // The reader went away (`dspex run ... | head`): like a process killed by
            // SIGPIPE, stop quietly with 128 + 13.
            log::debug!("{e}");
            ExitCode::from(128 + libc::SIGPIPE as u8)
        }
        Err(e) => {
            report_error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints an error to stderr (see [`error_report`]).
fn report_error(e: &CliError) {
    use std::io::Write;
    // A closed stderr must not turn a clean error exit into a panic.
    let _ = std::io::stderr()
        .lock()
        .write_all(error_report(e).as_bytes());
}

/// An error as the CLI shows it: one line, then what explains it, indented: a Python
/// traceback, or the last output of a worker that died.
fn error_report(e: &CliError) -> String {
    let mut text = format!("dspex: {e}\n");
    let detail = match e {
        CliError::Dspex(dspex::Error::Python {
            traceback: Some(traceback),
            ..
        }) => Some(("", traceback.as_str())),
        CliError::Dspex(dspex::Error::WorkerCrashed(crash)) if !crash.last_output.is_empty() => {
            Some(("  its last output:\n", crash.last_output.as_str()))
        }
        _ => None,
    };
    if let Some((heading, lines)) = detail {
        text.push_str(heading);
        for line in lines.lines() {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Writes one line to stderr, ignoring a stderr that is closed or full: a command must
/// finish its work even when whoever read its messages went away (`2>&1 | head -1`),
/// which `eprintln!` would turn into a panic.
pub(crate) fn note(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Writes one line of a command's result to stdout. A reader that went away (`| head`)
/// is a broken pipe, which ends the command quietly with 141 instead of a panic.
pub(crate) fn print(line: impl std::fmt::Display) -> Result<(), CliError> {
    use std::io::Write;
    writeln!(std::io::stdout(), "{line}").map_err(|source| CliError::Io {
        action: "write to",
        path: PathBuf::from("-"),
        source,
    })
}

/// Whether stderr is a terminal, so progress may redraw in place.
fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Prepares Python (with progress) and starts a system whose `wait_ready` workers are
/// ready.
async fn start_system(
    config: &Config,
    require_dspy: bool,
    wait_ready: usize,
) -> Result<System, CliError> {
    let env = python::prepare(config, require_dspy).await?;
    let started = System::builder(config.clone())
        .python_env(env.clone())
        .require_dspy(require_dspy)
        .wait_ready(wait_ready)
        .start()
        .await;
    match started {
        Ok(system) => Ok(system),
        // Workers that cannot start in a venv with missing files fail with an import error
        // that says nothing about the venv; say what is wrong and that `setup` repairs it.
        Err(e) if e.kind() == "environment" => {
            let damaged =
                tokio::task::spawn_blocking(move || dspex::python_env::check_venv_files(&env))
                    .await;
            match damaged {
                Ok(Err(damage)) => Err(dspex::Error::from(damage).into()),
                _ => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_help_with_an_example() {
        use clap::CommandFactory;
        let command = Cli::command();
        command.clone().debug_assert();
        for sub in command.get_subcommands() {
            let after = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                after.contains("dspex "),
                "`dspex {}` --help has no example",
                sub.get_name()
            );
        }
    }

    #[test]
    fn setup_errors_exit_2_and_work_errors_exit_1() {
        let config = CliError::from(Config::from_toml_str("[pool]\nsize = 0").unwrap_err());
        assert_eq!(config.exit_code(), 2);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let env = CliError::Dspex(dspex::Error::Environment("no python".into()));
        assert_eq!(env.exit_code(), 2);
        let python = CliError::Dspex(dspex::Error::Python {
            error_type: "ValueError".into(),
            message: "boom".into(),
            traceback: None,
        });
        assert_eq!(python.exit_code(), 1);
        assert_eq!(python.to_string(), "python error ValueError: boom");
    }

    #[test]
    fn a_crash_shows_the_workers_last_output_indented_like_a_traceback() {
        let crash = dspex::Error::from(dspex_actors::ActorError::WorkerCrashed {
            worker_id: "w-1".into(),
            reason: "killed by signal 9 (SIGKILL)".into(),
            last_output: "loading model\nSegmentation fault".into(),
            out_of_memory: false,
        });
        let report = error_report(&CliError::Dspex(crash));
        assert_eq!(
            report,
            "dspex: worker w-1 died while handling the request: killed by signal 9 (SIGKILL)\n  its last output:\n    loading model\n    Segmentation fault\n"
        );
        let python = CliError::Dspex(dspex::Error::Python {
            error_type: "ValueError".into(),
            message: "boom".into(),
            traceback: Some("Traceback (most recent call last):\n  File \"x.py\"".into()),
        });
        assert_eq!(
            error_report(&python),
            "dspex: python error ValueError: boom\n    Traceback (most recent call last):\n      File \"x.py\"\n"
        );
        assert_eq!(
            error_report(&CliError::Usage("bad flag".into())),
            "dspex: bad flag\n"
        );
    }

    #[test]
    fn exit_codes_come_from_the_error_table() {
        let refused = CliError::Dspex(dspex::Error::from(dspex_actors::ActorError::Python {
            error_type: "InvalidRequest".into(),
            message: "metric 'm:f' is not callable".into(),
            traceback: None,
        }));
        assert_eq!(
            refused.exit_code(),
            2,
            "a caller's mistake found by the worker"
        );
        let lm = CliError::Dspex(dspex::Error::Lm("down".into()));
        assert_eq!(lm.exit_code(), 1);
    }

    #[test]
    fn signals_exit_with_128_plus_their_number() {
        assert_eq!(128 + Signal::Interrupt.number(), 130);
        assert_eq!(128 + Signal::Terminate.number(), 143);
    }

    #[test]
    fn explicit_config_flag_wins_over_the_local_file() {
        let args = ConfigArgs {
            config: Some(PathBuf::from("/somewhere/my.toml")),
        };
        assert_eq!(args.file(), Some(PathBuf::from("/somewhere/my.toml")));
    }
}
