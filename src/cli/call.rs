//! `dspex call`: one command through the pool, for scripts and for trying out handlers.
//!
//! The system is started like for a run, so the command meets exactly the workers,
//! handlers and environment a run would. The workers do not have to import DSPy to
//! start (generic and user commands do not need it); a DSPy command imports it on
//! first use in the worker.

use clap::Args;
use dspex::Call;
use serde_json::Value;

use super::{CliError, ConfigArgs, Outcome};

pub const HELP: &str = "\
Examples:
  dspex call ping
  dspex call echo --args '{\"hello\": \"world\"}'
  dspex call word_count --args '{\"text\": \"a b c\"}' --config handlers.toml
  dspex call word_count --args @request.json      (the JSON object in a file; @- reads stdin)
  dspex call list_programs --session my-session

The result is printed as JSON on stdout. A Python exception prints
`python error <Type>: <message>` (and its traceback) on stderr and exits 1.
User commands come from the modules in python.handlers, found via python.path.";

/// Flags of `dspex call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The command: a built-in (ping, echo, get_stats, ...), a DSPy command or a user one.
    command: String,
    /// The command's arguments: a JSON object, or @FILE to read it from a file (@- for
    /// standard input).
    #[arg(long, value_name = "JSON|@FILE", default_value = "{}")]
    args: String,
    /// Run in this session (tracked if new; prefers the worker that served it last).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Parses `--args`: it must be a JSON object, since that is what commands receive.
/// `@FILE` reads it from a file, `@-` from standard input.
fn parse_args(text: &str) -> Result<Value, CliError> {
    let (text, from) = match text.strip_prefix('@') {
        Some(path) => (read_args(path)?, format!(" (in {})", describe(path))),
        None => (text.to_owned(), String::new()),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => {
            let mut shown = other.to_string();
            if shown.len() > 80 {
                shown = format!("{}...", shown.chars().take(80).collect::<String>());
            }
            Err(CliError::Usage(format!(
                "--args must be a JSON object such as '{{\"key\": 1}}', got {shown}{from}"
            )))
        }
        Err(e) => Err(CliError::Usage(format!(
            "--args is not valid JSON{from}: {e}"
        ))),
    }
}

fn describe(path: &str) -> String {
    if path == "-" {
        "standard input".into()
    } else {
        format!("`{path}`")
    }
}

fn read_args(path: &str) -> Result<String, CliError> {
    let read = if path == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|source| CliError::Io {
        action: "read --args from",
        path: path.into(),
        source,
    })
}

pub async fn call(args: CallArgs) -> Result<Outcome, CliError> {
    let command_args = parse_args(&args.args)?;
    if args.command.trim().is_empty() {
        return Err(CliError::Usage("the command name must not be empty".into()));
    }
    let config = args.config.load(&[])?;
    let system = super::start_system(&config, false, 1).await?;
    let mut request = Call::new(args.command, command_args);
    if let Some(session) = args.session {
        request = request.session(session);
    }
    let result = system.execute(request).await;
    let _ = system.shutdown(config.shutdown.graceful_timeout).await;
    let value = result?;
    let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    super::print(text)?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_must_be_a_json_object() {
        assert_eq!(
            parse_args(r#"{"a": [1]}"#).unwrap(),
            serde_json::json!({"a": [1]})
        );
        let not_object = parse_args("[1, 2]").unwrap_err();
        assert!(not_object.to_string().contains("must be a JSON object"));
        let invalid = parse_args("{a: 1}").unwrap_err();
        assert!(invalid.to_string().starts_with("--args is not valid JSON"));
        assert_eq!(invalid.exit_code(), 2);
    }

    #[test]
    fn args_come_from_a_file_with_an_at_sign() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("args.json");
        std::fs::write(&file, "{\"text\": \"a b\",\n \"n\": [1, 2]}\n").unwrap();
        let arg = format!("@{}", file.display());
        assert_eq!(
            parse_args(&arg).unwrap(),
            serde_json::json!({"text": "a b", "n": [1, 2]})
        );
        std::fs::write(&file, "[1]").unwrap();
        let e = parse_args(&arg).unwrap_err().to_string();
        assert!(
            e.contains("must be a JSON object") && e.contains("args.json"),
            "{e}"
        );
        let e = parse_args("@/no/such/args.json").unwrap_err();
        assert!(e.to_string().contains("cannot read --args from"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
