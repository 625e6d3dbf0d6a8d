//! What an output file belongs to, kept next to it as `OUT.dspex.json`.
//!
//! `--resume` may only complete an output with rows of the same input run through the same
//! program, and `dspex merge` may only join shards of one run, so every output written to a
//! regular file gets a sidecar recording the input (size and SHA-256 of its bytes), the
//! program definition's digest, the shard, how many rows the input has once it was read to
//! its end, and whether every row of the output's shard has a line. A sidecar rather than a
//! header line keeps the output plain JSONL, one line per row, for every other tool.
//!
//! ```json
//! {"format": "dspex-run/1",
//!  "input": {"path": "data.jsonl", "size": 1234, "sha256": "9f86d0..."},
//!  "program": "<hex SHA-256 of the program definition>",
//!  "shard": {"index": 0, "count": 3},
//!  "rows": 500000,
//!  "complete": true}
//! ```
//! `shard` is `null` for a whole run, `rows` is `null` until the input was read to its end,
//! and `sha256` is `null` for standard input (which cannot be read again, so cannot be
//! resumed).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::CliError;

const FORMAT: &str = "dspex-run/1";

/// `--shard K/N`: the rows whose index is `K` modulo `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn contains(&self, row: u64) -> bool {
        row % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let parsed = text
            .split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count >= 1 && index < count => Ok(Shard { index, count }),
            _ => Err(format!(
                "`{text}` is not a shard; use K/N with 0 <= K < N, e.g. 0/4 for the first of four"
            )),
        }
    }
}

/// The input an output belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// As given on the command line, for messages only: the bytes are what count.
    pub path: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

impl InputRecord {
    /// Reads and hashes the input file (standard input: no size, no hash).
    pub fn of(path: &Path) -> Result<InputRecord, CliError> {
        if path == Path::new("-") {
            return Ok(InputRecord {
                path: "-".into(),
                size: None,
                sha256: None,
            });
        }
        let read_error = |source| CliError::Io {
            action: "read input file",
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(read_error)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok(InputRecord {
            path: path.display().to_string(),
            size: Some(size),
            sha256: Some(
                hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            ),
        })
    }

    /// The same bytes (the path may differ: a moved or copied input is still the input).
    pub fn same_bytes(&self, other: &InputRecord) -> bool {
        self.sha256.is_some() && self.size == other.size && self.sha256 == other.sha256
    }
}

/// The sidecar's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub format: String,
    pub input: InputRecord,
    pub program: String,
    pub shard: Option<Shard>,
    pub rows: Option<u64>,
    pub complete: bool,
}

impl Sidecar {
    pub fn new(input: InputRecord, program: String, shard: Option<Shard>) -> Sidecar {
        Sidecar {
            format: FORMAT.into(),
            input,
            program,
            shard,
            rows: None,
            complete: false,
        }
    }

    /// `OUT.dspex.json` for output `OUT`.
    pub fn path_for(output: &Path) -> PathBuf {
        let mut name = output.as_os_str().to_owned();
        name.push(".dspex.json");
        PathBuf::from(name)
    }

    /// The sidecar of `output`; `Ok(None)` when there is none.
    pub fn read(output: &Path) -> Result<Option<Sidecar>, CliError> {
        let path = Sidecar::path_for(output);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CliError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let sidecar: Sidecar = serde_json::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "`{}` is not a dspex run record ({e}); remove it and run without --resume",
                path.display()
            ))
        })?;
        if sidecar.format != FORMAT {
            return Err(CliError::Usage(format!(
                "`{}` has format {:?}, this dspex reads {FORMAT:?}",
                path.display(),
                sidecar.format
            )));
        }
        Ok(Some(sidecar))
    }

    /// Writes the sidecar of `output` (to a temporary file renamed over it, so a crash
    /// leaves the old one or the new one).
    pub fn write(&self, output: &Path) -> io::Result<()> {
        let path = Sidecar::path_for(output);
        let mut staging = path.clone().into_os_string();
        staging.push(".tmp");
        let text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        fs::write(&staging, text + "\n")?;
        fs::rename(&staging, &path)
    }

    /// Removes the sidecar of `output`, before the output is replaced by something it
    /// does not describe. A sidecar that cannot be removed is an error: a stale record
    /// would let a later `--resume` keep rows of another input.
    pub fn remove(output: &Path) -> Result<(), CliError> {
        let path = Sidecar::path_for(output);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CliError::Io {
                action: "remove the old run record",
                path,
                source,
            }),
        }
    }

    /// Why an output with this sidecar cannot take rows from a run of `input` through
    /// program `program` on `shard`, or `None` when it can.
    pub fn mismatch(
        &self,
        input: &InputRecord,
        program: Option<&str>,
        shard: Option<Shard>,
    ) -> Option<String> {
        if !self.input.same_bytes(input) {
            return Some(format!(
                "it belongs to another input: it was written for `{}` ({} bytes, sha256 {}), \
                 and `{}` is {} bytes with sha256 {}",
                self.input.path,
                show(self.input.size),
                short(&self.input.sha256),
                input.path,
                show(input.size),
                short(&input.sha256),
            ));
        }
        if let Some(program) = program.filter(|p| *p != self.program) {
            return Some(format!(
                "it belongs to another program: it was written by the program with digest \
                 {}, and this one has digest {}",
                &self.program[..self.program.len().min(16)],
                &program[..program.len().min(16)]
            ));
        }
        if self.shard != shard {
            let name =
                |s: Option<Shard>| s.map_or("the whole input".to_owned(), |s| format!("shard {s}"));
            return Some(format!(
                "it belongs to another shard: it holds {}, and this run is {}",
                name(self.shard),
                name(shard)
            ));
        }
        None
    }
}

fn show(size: Option<u64>) -> String {
    size.map_or_else(|| "?".into(), |s| s.to_string())
}

fn short(hash: &Option<String>) -> String {
    hash.as_deref()
        .map_or_else(|| "unknown".into(), |h| h[..h.len().min(16)].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_select_by_index_modulo_count() {
        let shard: Shard = "1/3".parse().unwrap();
        assert_eq!(shard, Shard { index: 1, count: 3 });
        let rows: Vec<u64> = (0..10).filter(|i| shard.contains(*i)).collect();
        assert_eq!(rows, [1, 4, 7]);
        for bad in ["3/3", "1", "a/b", "0/0", "-1/2", "1/2/3"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("use K/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn mismatch_names_input_program_or_shard() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        fs::write(&a, "{\"q\": 1}\n").unwrap();
        fs::write(&b, "{\"q\": 2}\n").unwrap();
        let input_a = InputRecord::of(&a).unwrap();
        let input_b = InputRecord::of(&b).unwrap();
        let sidecar = Sidecar::new(input_a.clone(), "p1".into(), None);
        assert_eq!(sidecar.mismatch(&input_a, Some("p1"), None), None);
        let other_input = sidecar.mismatch(&input_b, Some("p1"), None).unwrap();
        assert!(
            other_input.starts_with("it belongs to another input"),
            "{other_input}"
        );
        let other_program = sidecar.mismatch(&input_a, Some("p2"), None).unwrap();
        assert!(other_program.starts_with("it belongs to another program"));
        let other_shard = sidecar
            .mismatch(&input_a, None, Some(Shard { index: 0, count: 2 }))
            .unwrap();
        assert!(other_shard.contains("shard 0/2"), "{other_shard}");
        let stdin = InputRecord::of(Path::new("-")).unwrap();
        let from_stdin = Sidecar::new(stdin.clone(), "p1".into(), None);
        assert!(
            from_stdin.mismatch(&stdin, None, None).is_some(),
            "stdin never matches"
        );
    }

    #[test]
    fn sidecar_round_trips_next_to_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        assert_eq!(Sidecar::read(&out).unwrap(), None);
        let mut sidecar = Sidecar::new(
            InputRecord {
                path: "x".into(),
                size: Some(3),
                sha256: Some("ab".into()),
            },
            "digest".into(),
            Some(Shard { index: 1, count: 2 }),
        );
        sidecar.rows = Some(10);
        sidecar.write(&out).unwrap();
        assert!(dir.path().join("out.jsonl.dspex.json").is_file());
        assert_eq!(Sidecar::read(&out).unwrap(), Some(sidecar));
        Sidecar::remove(&out).unwrap();
        assert_eq!(Sidecar::read(&out).unwrap(), None);
        Sidecar::remove(&out).unwrap();
    }
}
