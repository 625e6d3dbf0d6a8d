//! The `dspex` binary: parse the command line, then hand over to [`cli`].
//!
//! Kept thin on purpose (ripgrep style): everything that can be tested without a
//! process lives in `cli` and its submodules.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging();
    cli::main(args)
}
