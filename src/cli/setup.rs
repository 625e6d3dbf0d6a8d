//! `dspex setup`: build the managed venv now, rather than on the first run, and repair it.
//!
//! Useful before going offline, in a Docker build step, or to see pip's progress once.
//! Running it again verifies: every file pip installed is checked against pip's records
//! (a deleted or edited file of `dspy` is found here, not in the middle of a run), damaged
//! packages are reinstalled, and `import dspy` is tried. `--force` rebuilds from scratch.

use clap::Args;
use dspex::python_env::{self, Action, Existing};

use super::{note, print, python, CliError, ConfigArgs, Outcome};

pub const HELP: &str = "\
Examples:
  dspex setup                       create ~/.cache/dspex/venvs/<hash> on first use
  dspex setup --force               delete that venv and build it again
  DSPEX_HOME=/opt/dspex dspex setup put the cache (venv and bridge) somewhere else
  dspex setup --config prod.toml    use that file's python.executable / venv / requirements

Prints the interpreter the workers will run and the venv it belongs to (stdout).
Idempotent: a second run checks every installed file against pip's records (a few
seconds), reinstalls the packages that are damaged, and checks that dspy imports.";

/// Flags of `dspex setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Rebuild the managed venv from scratch even if it looks fine (a venv named by
    /// python.venv is not deleted; its requirements are reinstalled).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub async fn setup(args: SetupArgs) -> Result<Outcome, CliError> {
    let config = args.config.load(&[])?;
    let existing = if args.force {
        Existing::Rebuild
    } else {
        Existing::Verify
    };
    let (env, action) = python::prepare_reporting(&config, true, existing).await?;
    let python = env.python.clone();
    let version = tokio::task::spawn_blocking(move || python_env::dspy_version(&python))
        .await
        .map_err(|e| {
            CliError::Dspex(dspex::Error::Environment(format!(
                "checking dspy stopped unexpectedly: {e}"
            )))
        })?
        .map_err(dspex::Error::from)?;
    let what = match &action {
        Action::Built => "created".to_owned(),
        Action::Reused => "verified".to_owned(),
        Action::Verified {
            distributions,
            files,
        } => format!("verified ({files} files of {distributions} packages intact)"),
        Action::Repaired(specs) => format!("repaired (reinstalled {})", specs.join(", ")),
    };
    note(format_args!(
        "dspex: python environment {what}; dspy {version} imports"
    ));
    print(format_args!("python: {}", env.python.display()))?;
    if let Some(venv) = &env.venv {
        print(format_args!("venv: {}", venv.display()))?;
    }
    print(format_args!("bridge: {}", env.bridge_path.display()))?;
    Ok(Outcome::Success)
}
