//! stub
use super::{CliError, Outcome};
use clap::Args;
pub const HELP: &str = "Examples:\n  dspex run";
#[derive(Debug, Args)]
pub struct RunArgs {}
pub async fn run(_args: RunArgs) -> Result<Outcome, CliError> {
    Ok(Outcome::Success)
}
