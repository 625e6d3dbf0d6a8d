//! Reading the JSONL datasets of `eval` (the devset) and `optimize` (trainset, valset).
//!
//! Unlike `run`'s input, which streams, these are read whole before any worker starts:
//! an evaluation or an optimization is about the whole set, a file that cannot be read
//! should stop it before Python starts, and the sets are small. A line is still bounded
//! (`run.max_line_bytes`), so a file that is not JSONL (or `/dev/zero`) is refused instead
//! of eating memory. Blank lines are skipped, as `run` skips them.

use std::fs::File;
use std::path::Path;

use serde_json::{Map, Value};
use tokio::io::BufReader;

use super::run::input::{Content, Lines};
use super::run::rows::object_of;
use super::run::RowError;
use super::CliError;

/// One non-blank line of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// 1-based, for messages.
    pub number: u64,
    /// The row's `id` (`null` when it has none or the line is not an object).
    pub id: Value,
    /// The row, or why the line is not one (kind `input`).
    pub row: Result<Map<String, Value>, RowError>,
}

/// Reads `path` (`what` names it in messages: "devset", "trainset"), line by line as
/// `run` reads its input.
///
/// # Errors
///
/// A usage error (exit 2) when the file cannot be read, has no rows, or has a line longer
/// than `max_line` bytes (`run.max_line_bytes`).
pub async fn read(path: &Path, what: &str, max_line: u64) -> Result<Vec<Line>, CliError> {
    let io_error = |source| CliError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    };
    if path.is_dir() {
        return Err(CliError::Usage(format!(
            "--{what} `{}` is a directory; give a JSONL file",
            path.display()
        )));
    }
    let file = tokio::fs::File::from_std(File::open(path).map_err(io_error)?);
    let mut reader = Lines::new(BufReader::new(file), max_line);
    let mut lines = Vec::new();
    while let Some(line) = reader.next_line().await.map_err(io_error)? {
        let bytes = match line.content {
            Content::Text(bytes) => bytes,
            Content::TooLong => {
                return Err(CliError::Usage(format!(
                    "--{what} `{}`: line {} is longer than {max_line} bytes (run.max_line_bytes); is it a JSONL file?",
                    path.display(),
                    line.number,
                )))
            }
        };
        let row = object_of(&bytes, line.number);
        let id = match &row {
            Ok(row) => row.get("id").cloned().unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        lines.push(Line {
            number: line.number,
            id,
            row,
        });
    }
    if lines.is_empty() {
        return Err(CliError::Usage(format!(
            "--{what} `{}` has no rows; give one JSON object per line",
            path.display()
        )));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_keep_their_line_numbers_and_ids_and_blank_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.jsonl");
        std::fs::write(
            &path,
            "{\"id\": 7, \"q\": \"a\"}\n\n  \n[1]\n{\"q\": \"b\"}",
        )
        .unwrap();
        let lines = read(&path, "devset", 1 << 20).await.unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!((lines[0].number, &lines[0].id), (1, &Value::from(7)));
        assert_eq!(lines[1].number, 4);
        let error = lines[1].row.as_ref().unwrap_err();
        assert_eq!(error.kind, "input");
        assert_eq!(
            error.message,
            "line 4: expected a JSON object, got an array"
        );
        assert_eq!(lines[2].row.as_ref().unwrap()["q"], "b");
        assert_eq!(lines[2].id, Value::Null);
    }

    #[tokio::test]
    async fn a_missing_empty_or_directory_dataset_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(&dir.path().join("nope.jsonl"), "devset", 1 << 20)
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot read"), "{e}");
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "\n\n").unwrap();
        let e = read(&empty, "trainset", 1 << 20).await.unwrap_err();
        assert!(
            e.to_string().contains("--trainset") && e.to_string().contains("no rows"),
            "{e}"
        );
        let e = read(dir.path(), "devset", 1 << 20).await.unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}
