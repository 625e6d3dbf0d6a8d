//! Preparing the workers' Python with progress a person can follow.
//!
//! The first `dspex` command on a machine builds the managed venv (a minute or more of
//! `pip install`). Silence for that long looks like a hang, so every phase is shown on
//! stderr: a spinner with pip's latest line on a terminal, one line per phase otherwise
//! (pip's own lines then go to the debug log, to keep CI logs short).

use std::time::Duration;

use dspex::config::Config;
use dspex::python_env::{self, Action, Existing, Progress, PythonEnv};
use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;

/// [`python_env::ensure`] for `config`, off the async threads, with progress on stderr.
pub async fn prepare(config: &Config, require_dspy: bool) -> Result<PythonEnv, CliError> {
    Ok(prepare_reporting(config, require_dspy, Existing::Reuse)
        .await?
        .0)
}

/// [`python_env::prepare`]: like [`prepare`], treating an existing venv as `existing`
/// says, and saying what was done.
pub async fn prepare_reporting(
    config: &Config,
    require_dspy: bool,
    existing: Existing,
) -> Result<(PythonEnv, Action), CliError> {
    let setup = dspex::launch::python_setup(config, require_dspy);
    let terminal = super::stderr_is_terminal();
    let joined = tokio::task::spawn_blocking(move || {
        let mut display = Display::new(terminal);
        let result = python_env::prepare(&setup, existing, &mut |p| display.show(p));
        display.finish();
        result
    })
    .await;
    match joined {
        Ok(result) => Ok(result.map_err(dspex::Error::from)?),
        Err(e) => Err(CliError::Dspex(dspex::Error::Environment(format!(
            "preparing Python stopped unexpectedly: {e}"
        )))),
    }
}

/// Where progress goes: a spinner on a terminal, plain lines otherwise.
struct Display {
    spinner: Option<ProgressBar>,
    terminal: bool,
}

impl Display {
    fn new(terminal: bool) -> Self {
        Display {
            spinner: None,
            terminal,
        }
    }

    fn spinner(&mut self) -> &ProgressBar {
        self.spinner.get_or_insert_with(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }

    fn show(&mut self, progress: Progress<'_>) {
        match (progress, self.terminal) {
            (Progress::Step(step), true) => {
                let spinner = self.spinner();
                spinner.println(format!("dspex: {step}"));
                spinner.set_message(step.to_owned());
            }
            (Progress::Line(line), true) => {
                let line: String = line.chars().take(100).collect();
                self.spinner().set_message(line);
            }
            (Progress::Done(done), true) => {
                if let Some(spinner) = self.spinner.take() {
                    spinner.finish_and_clear();
                }
                super::note(format_args!("dspex: {done}"));
            }
            (Progress::Step(s) | Progress::Done(s), false) => {
                super::note(format_args!("dspex: {s}"))
            }
            (Progress::Line(line), false) => log::debug!("python setup: {line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
    }
}
