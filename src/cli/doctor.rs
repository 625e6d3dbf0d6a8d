//! stub
use super::{CliError, Outcome};
use clap::Args;
pub const HELP: &str = "Examples:\n  dspex doctor";
#[derive(Debug, Args)]
pub struct DoctorArgs {}
pub async fn doctor(_args: DoctorArgs) -> Result<Outcome, CliError> {
    Ok(Outcome::Success)
}
