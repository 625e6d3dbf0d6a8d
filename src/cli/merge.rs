//! `dspex merge`: join the outputs of `dspex run --shard K/N` into one output in input
//! order, and say which rows are missing.
//!
//! Sharding is how dspex uses an engine it does not have to be: a Kubernetes Indexed Job
//! or a Slurm array runs one shard per pod or task on a shared volume (see
//! `examples/deploy/`), and this command puts the pieces together. Each shard's output is
//! already in index order, so the merge streams them (a k-way merge, memory independent
//! of the outputs' size) and copies every line byte for byte: three shards merged equal a
//! single run. The shards' sidecars must agree on the input and the program; the merged
//! output gets a sidecar of its own, so `dspex run --resume` can complete missing rows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use super::run::resume::{LineKind, OutputLines};
use super::run::sidecar::Sidecar;
use super::{note, CliError, Outcome};

pub const HELP: &str = "\
Examples:
  dspex merge out.jsonl part-0.jsonl part-1.jsonl part-2.jsonl
  dspex merge out.jsonl parts/*.jsonl

Each SHARD is the output of `dspex run --shard K/N` with its sidecar (SHARD.dspex.json);
they must come from the same input and program. Lines are copied unchanged, in index
order, so the merged file equals a single run's output. A torn last line (a shard that
crashed) is dropped; a row that is in no shard, or was stopped by a signal, is missing.
The merged output gets its own sidecar, so the missing rows can be run with
`dspex run --resume --output OUT ...`.

Exit status: 0 when every row is there and succeeded, 1 when rows are missing or failed
(the message lists the first missing ones), 2 when the shards cannot be merged.";

/// Flags of `dspex merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The merged output file (replaced once the merge is complete).
    #[arg(value_name = "OUT")]
    output: PathBuf,
    /// The shards' output files.
    #[arg(value_name = "SHARD", required = true)]
    shards: Vec<PathBuf>,
}

/// How many missing rows the message names.
const NAMED: usize = 10;

pub async fn merge(args: MergeArgs) -> Result<Outcome, CliError> {
    tokio::task::spawn_blocking(move || merge_files(&args.output, &args.shards))
        .await
        .map_err(|e| CliError::Usage(format!("the merge stopped unexpectedly: {e}")))?
}

/// What a merge found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    written: u64,
    failed: u64,
    missing: u64,
    named_missing: Vec<u64>,
    duplicates: u64,
}

impl Tally {
    fn missing(&mut self, index: u64) {
        self.missing += 1;
        if self.named_missing.len() < NAMED {
            self.named_missing.push(index);
        }
    }
}

fn merge_files(output: &Path, shards: &[PathBuf]) -> Result<Outcome, CliError> {
    let sidecar = agreeing_sidecars(output, shards)?;
    let mut readers = Vec::with_capacity(shards.len());
    for path in shards {
        let file = File::open(path).map_err(|source| CliError::Io {
            action: "read shard",
            path: path.clone(),
            source,
        })?;
        readers.push(Shard {
            path: path.clone(),
            lines: OutputLines::new(BufReader::new(file)),
            last: None,
        });
    }
    let staging = {
        let mut name = output.as_os_str().to_owned();
        name.push(".dspex-merge.tmp");
        PathBuf::from(name)
    };
    let write_error = |source| CliError::Io {
        action: "write",
        path: staging.clone(),
        source,
    };
    let mut out = io::BufWriter::new(File::create(&staging).map_err(write_error)?);
    let tally = merge_lines(&mut readers, sidecar.rows, &mut out)?;
    // The old record (if any) describes the output about to be replaced.
    Sidecar::remove(output)?;
    out.flush().map_err(write_error)?;
    let file = out.into_inner().map_err(|e| write_error(e.into_error()))?;
    file.sync_all().map_err(write_error)?;
    std::fs::rename(&staging, output).map_err(|source| CliError::Io {
        action: "replace the merged output with",
        path: staging.clone(),
        source,
    })?;
    let merged = Sidecar {
        shard: None,
        complete: tally.missing == 0 && sidecar.rows.is_some(),
        ..sidecar.clone()
    };
    if let Err(e) = merged.write(output) {
        note(format_args!(
            "dspex: warning: cannot write `{}` ({e}); --resume will not accept the merged output",
            Sidecar::path_for(output).display()
        ));
    }
    report(output, shards.len(), &tally, sidecar.rows);
    Ok(if tally.missing == 0 && tally.failed == 0 {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// The shards' sidecars, which must name one input and one program. The result holds the
/// input's row count when any shard read the input to its end.
fn agreeing_sidecars(output: &Path, shards: &[PathBuf]) -> Result<Sidecar, CliError> {
    let output_id = std::fs::metadata(output).ok().map(|m| identity(&m));
    let mut first: Option<(Sidecar, &Path)> = None;
    for path in shards {
        let meta = std::fs::metadata(path).map_err(|source| CliError::Io {
            action: "read shard",
            path: path.clone(),
            source,
        })?;
        if output_id == Some(identity(&meta)) {
            return Err(CliError::Usage(format!(
                "the merged output `{}` is also a shard; writing it would destroy that shard",
                output.display()
            )));
        }
        let sidecar = Sidecar::read(path)?.ok_or_else(|| {
            CliError::Usage(format!(
                "`{}` has no run record `{}`; merge takes the outputs of `dspex run --shard`",
                path.display(),
                Sidecar::path_for(path).display()
            ))
        })?;
        match &mut first {
            None => first = Some((sidecar, path)),
            Some((agreed, first_path)) => {
                let differ = if !agreed.input.same_bytes(&sidecar.input) {
                    Some("different inputs")
                } else if agreed.program != sidecar.program {
                    Some("different programs")
                } else {
                    None
                };
                if let Some(what) = differ {
                    return Err(CliError::Usage(format!(
                        "cannot merge `{}` with `{}`: they were written from {what}",
                        path.display(),
                        first_path.display(),
                    )));
                }
                agreed.rows = agreed.rows.or(sidecar.rows);
            }
        }
    }
    first
        .map(|(sidecar, _)| sidecar)
        .ok_or_else(|| CliError::Usage("merge needs at least one shard".into()))
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// One shard's output being read.
struct Shard {
    path: PathBuf,
    lines: OutputLines<BufReader<File>>,
    /// The index of its line read last, to find a shard out of order.
    last: Option<u64>,
}

impl Shard {
    /// The next result line: (index, kind, line); lines that are not results are
    /// skipped, and a torn last line ends the shard.
    fn next(&mut self) -> Result<Option<(u64, LineKind, String)>, CliError> {
        loop {
            let read = self.lines.next().map_err(|source| CliError::Io {
                action: "read shard",
                path: self.path.clone(),
                source,
            })?;
            let Some((text, seen)) = read else {
                return Ok(None);
            };
            let Some((index, kind)) = seen else {
                continue;
            };
            if self.last.is_some_and(|last| index <= last) {
                return Err(CliError::Usage(format!(
                    "`{}` is not in index order (row {index} after row {}); it was not written \
                     by dspex run",
                    self.path.display(),
                    self.last.unwrap_or_default()
                )));
            }
            self.last = Some(index);
            return Ok(Some((index, kind, text.to_owned())));
        }
    }
}

/// Streams the shards' lines into `out` in index order, one line per index.
fn merge_lines(
    shards: &mut [Shard],
    rows: Option<u64>,
    out: &mut impl Write,
) -> Result<Tally, CliError> {
    let mut tally = Tally::default();
    let mut heap = BinaryHeap::new();
    let mut pending: Vec<Option<(LineKind, String)>> = vec![None; shards.len()];
    for (i, shard) in shards.iter_mut().enumerate() {
        if let Some((index, kind, line)) = shard.next()? {
            heap.push(Reverse((index, i)));
            pending[i] = Some((kind, line));
        }
    }
    let mut next: u64 = 0;
    while let Some(Reverse((index, i))) = heap.pop() {
        let (kind, line) = pending[i].take().expect("a pushed shard has a line");
        if let Some((index, kind, line)) = shards[i].next()? {
            heap.push(Reverse((index, i)));
            pending[i] = Some((kind, line));
        }
        if index < next {
            tally.duplicates += 1;
            continue;
        }
        for gap in next..index {
            tally.missing(gap);
        }
        next = index + 1;
        out.write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|source| CliError::Io {
                action: "write the merged output",
                path: PathBuf::from("(merge)"),
                source,
            })?;
        tally.written += 1;
        match kind {
            LineKind::Ok => {}
            LineKind::Failed => tally.failed += 1,
            LineKind::Unfinished => tally.missing(index),
        }
    }
    for gap in next..rows.unwrap_or(next) {
        tally.missing(gap);
    }
    Ok(tally)
}

fn report(output: &Path, shards: usize, tally: &Tally, rows: Option<u64>) {
    let mut line = format!(
        "dspex: merged {} rows from {shards} shards into `{}` ({} failed)",
        tally.written,
        output.display(),
        tally.failed
    );
    if tally.duplicates > 0 {
        line.push_str(&format!(
            "; {} rows found in more than one shard were taken once",
            tally.duplicates
        ));
    }
    note(line);
    if rows.is_none() {
        note(
            "dspex: no shard read the input to its end, so rows after the last one seen \
             cannot be counted as missing",
        );
    }
    if tally.missing > 0 {
        let named: Vec<String> = tally.named_missing.iter().map(u64::to_string).collect();
        let more = if tally.missing > named.len() as u64 {
            ", ..."
        } else {
            ""
        };
        note(format_args!(
            "dspex: {} rows missing (index {}{more}); run them with `dspex run --resume \
             --output {} --input ...` and the same program",
            tally.missing,
            named.join(", "),
            output.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(dir: &Path, name: &str, text: &str) -> Shard {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Shard {
            lines: OutputLines::new(BufReader::new(File::open(&path).unwrap())),
            path,
            last: None,
        }
    }

    fn line(index: u64) -> String {
        format!("{{\"index\":{index},\"id\":null,\"outputs\":{{}}}}\n")
    }

    #[test]
    fn interleaves_shards_by_index_and_counts_gaps_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let a = shard(
            dir.path(),
            "a",
            &format!("{}{}{}", line(0), line(2), line(4)),
        );
        let b = shard(
            dir.path(),
            "b",
            &format!("{}{}{{\"index\":5,\"id\"", line(1), line(3)),
        );
        let mut out = Vec::new();
        let tally = merge_lines(&mut [a, b], Some(7), &mut out).unwrap();
        let expected: String = (0..5).map(line).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(tally.written, 5);
        assert_eq!(tally.named_missing, [5, 6]);
        assert_eq!(tally.missing, 2);
    }

    #[test]
    fn a_row_in_two_shards_is_written_once_and_failed_rows_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let failed = "{\"index\":1,\"id\":null,\"error\":{\"kind\":\"lm\",\"message\":\"x\"}}\n";
        let a = shard(dir.path(), "a", &format!("{}{failed}", line(0)));
        let b = shard(dir.path(), "b", &format!("{}{}", line(0), line(2)));
        let mut out = Vec::new();
        let tally = merge_lines(&mut [a, b], Some(3), &mut out).unwrap();
        assert_eq!(tally.written, 3);
        assert_eq!(tally.duplicates, 1);
        assert_eq!(tally.failed, 1);
        assert_eq!(tally.missing, 0);
    }

    #[test]
    fn a_shard_out_of_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = shard(dir.path(), "a", &format!("{}{}", line(3), line(1)));
        let e = merge_lines(&mut [a], None, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("is not in index order"), "{e}");
    }
}
