//! `dspex setup`: build the managed venv now, rather than on the first run.
//!
//! Useful before going offline, in a Docker build step, or to see pip's progress once.
//! Running it again only verifies: the venv is reused, and `import dspy` is tried in it so
//! a broken environment shows up here rather than in the middle of a run.

use clap::Args;

use super::{python, CliError, ConfigArgs, Outcome};

pub const HELP: &str = "\
Examples:
  dspex setup                       create ~/.cache/dspex/venvs/<hash> on first use
  DSPEX_HOME=/opt/dspex dspex setup put the cache (venv and bridge) somewhere else
  dspex setup --config prod.toml    use that file's python.executable / venv / requirements

Prints the interpreter the workers will run and the venv it belongs to (stdout).
Idempotent: a second run only checks that the environment imports dspy.";

/// Flags of `dspex setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

pub async fn setup(args: SetupArgs) -> Result<Outcome, CliError> {
    let config = args.config.load(&[])?;
    let prepared = python::prepare_reporting(&config, true).await?;
    let env = &prepared.env;
    let version = python::dspy_version(&env.python).await?;
    let verb = if prepared.changed {
        "created"
    } else {
        "verified"
    };
    eprintln!("dspex: python environment {verb}; dspy {version} imports");
    println!("python: {}", env.python.display());
    if let Some(venv) = &env.venv {
        println!("venv: {}", venv.display());
    }
    println!("bridge: {}", env.bridge_path.display());
    Ok(Outcome::Success)
}
