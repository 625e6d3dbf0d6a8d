//! What an interrupted output already holds, for `--resume` and `dspex merge`.
//!
//! An output is read twice: once up front to learn which rows it has (a set of indices,
//! so memory grows with one bit per row, not with the output), and once while the
//! resumed run writes its new output, streaming the kept lines back in index order. Kept
//! lines are copied byte for byte, so a resumed output equals an uninterrupted one.
//!
//! What is kept: every complete line (one that ends with a newline and parses) whose row
//! finished, failed ones too unless `--retry-failed`. A row that was stopped by a signal
//! (`shutting_down`) never finished and always runs again. A torn last line (a crash in
//! the middle of a write) is dropped.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::CliError;

/// The part of an output line resume looks at.
#[derive(Deserialize)]
struct Seen {
    index: u64,
    #[serde(default)]
    error: Option<SeenError>,
}

#[derive(Deserialize)]
struct SeenError {
    kind: String,
}

/// What one line of an output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Ok,
    Failed,
    /// Stopped by a signal before the row finished: not a result.
    Unfinished,
}

/// Reads the row index and outcome of an output line; `None` for a line that is not one.
pub fn classify(line: &str) -> Option<(u64, LineKind)> {
    let seen: Seen = serde_json::from_str(line).ok()?;
    let kind = match seen.error {
        None => LineKind::Ok,
        Some(e) if e.kind == "shutting_down" => LineKind::Unfinished,
        Some(_) => LineKind::Failed,
    };
    Some((seen.index, kind))
}

/// A set of row indices, one bit each.
#[derive(Debug, Default, Clone)]
pub struct Indices {
    bits: Vec<u64>,
    len: u64,
}

impl Indices {
    pub fn insert(&mut self, index: u64) -> bool {
        let (word, bit) = ((index / 64) as usize, index % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        self.len += u64::from(fresh);
        fresh
    }

    #[cfg(test)]
    pub fn contains(&self, index: u64) -> bool {
        let (word, bit) = ((index / 64) as usize, index % 64);
        self.bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Takes `index` out of the set; whether it was in.
    pub fn remove(&mut self, index: u64) -> bool {
        let (word, bit) = ((index / 64) as usize, index % 64);
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        let present = *w & (1 << bit) != 0;
        *w &= !(1 << bit);
        self.len -= u64::from(present);
        present
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

/// The rows an earlier run left in an output.
#[derive(Debug)]
pub struct Previous {
    path: PathBuf,
    pub kept: Indices,
    /// Kept rows that failed.
    pub failed: u64,
    /// Lines dropped: a torn last line, lines that do not parse, duplicates.
    pub dropped: u64,
}

impl Previous {
    /// Scans `path`; with `retry_failed` failed rows are not kept.
    pub fn scan(path: &Path, retry_failed: bool) -> Result<Previous, CliError> {
        let read_error = |source| CliError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        let mut previous = Previous {
            path: path.to_owned(),
            kept: Indices::default(),
            failed: 0,
            dropped: 0,
        };
        let mut lines = OutputLines::new(BufReader::new(file));
        while let Some((_, seen)) = lines.next().map_err(read_error)? {
            match seen {
                Some((index, LineKind::Ok)) => {
                    if !previous.kept.insert(index) {
                        previous.dropped += 1;
                    }
                }
                Some((index, LineKind::Failed)) if !retry_failed => {
                    if previous.kept.insert(index) {
                        previous.failed += 1;
                    } else {
                        previous.dropped += 1;
                    }
                }
                Some(_) => {}
                None => previous.dropped += 1,
            }
        }
        Ok(previous)
    }

    /// Streams the kept lines back in the order they are in the file.
    pub fn lines(&self) -> Result<KeptLines, CliError> {
        let file = File::open(&self.path).map_err(|source| CliError::Io {
            action: "read",
            path: self.path.clone(),
            source,
        })?;
        Ok(KeptLines {
            lines: OutputLines::new(BufReader::new(file)),
            kept: self.kept.clone(),
            next: None,
        })
    }
}

/// The complete lines of an output (each ending in a newline), as `resume` and `merge`
/// read them: a last line without a newline is torn and ends the reading.
pub struct OutputLines<R> {
    reader: R,
    line: String,
}

impl<R: BufRead> OutputLines<R> {
    pub fn new(reader: R) -> Self {
        OutputLines {
            reader,
            line: String::new(),
        }
    }

    /// The next complete line, without its newline, and its row index and outcome
    /// ([`classify`]; `None` for a line that is not one, such as one that is not UTF-8).
    /// `None` at the end.
    #[allow(clippy::type_complexity)]
    pub fn next(&mut self) -> io::Result<Option<(&str, Option<(u64, LineKind)>)>> {
        self.line.clear();
        let n = match self.reader.read_line(&mut self.line) {
            Ok(n) => n,
            // Lines of another encoding are not dspex output (the line was consumed).
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Some(("", None))),
            Err(e) => return Err(e),
        };
        if n == 0 || !self.line.ends_with('\n') {
            return Ok(None);
        }
        let line = self.line.trim_end_matches(['\n', '\r']);
        Ok(Some((line, classify(line))))
    }
}

/// A kept line of an earlier output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub line: String,
    /// The row succeeded (else it failed; unfinished rows are never kept).
    pub ok: bool,
}

/// The kept lines of an earlier output, handed out by index as a resumed run reaches them.
pub struct KeptLines {
    lines: OutputLines<BufReader<File>>,
    kept: Indices,
    /// A kept line read ahead, with its index.
    next: Option<(u64, Kept)>,
}

impl KeptLines {
    /// The kept line of row `index`. Rows must be asked for in increasing order (which is
    /// the order dspex writes them in).
    pub fn take(&mut self, index: u64) -> io::Result<Option<Kept>> {
        loop {
            match &self.next {
                Some((i, _)) if *i == index => return Ok(self.next.take().map(|(_, l)| l)),
                Some((i, _)) if *i > index => return Ok(None),
                _ => {}
            }
            match self.read_kept()? {
                Some(next) => self.next = Some(next),
                None => return Ok(None),
            }
        }
    }

    /// Every kept line not taken yet, in order (to keep them when a resume is stopped).
    pub fn rest(&mut self, mut each: impl FnMut(Kept)) -> io::Result<()> {
        if let Some((_, line)) = self.next.take() {
            each(line);
        }
        while let Some((_, line)) = self.read_kept()? {
            each(line);
        }
        Ok(())
    }

    fn read_kept(&mut self) -> io::Result<Option<(u64, Kept)>> {
        while let Some((line, seen)) = self.lines.next()? {
            // The scan decided what is kept; take each index once.
            if let Some((index, kind)) = seen {
                if kind != LineKind::Unfinished && self.kept.remove(index) {
                    let kept = Kept {
                        line: line.to_owned(),
                        ok: kind == LineKind::Ok,
                    };
                    return Ok(Some((index, kept)));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const OUTPUT: &str = concat!(
        "{\"index\":0,\"id\":null,\"outputs\":{\"a\":1}}\n",
        "{\"index\":1,\"id\":null,\"error\":{\"kind\":\"lm\",\"message\":\"x\"}}\n",
        "{\"index\":2,\"id\":null,\"error\":{\"kind\":\"shutting_down\",\"message\":\"x\"}}\n",
        "{\"index\":3,\"id\":12345678901234567890123,\"outputs\":{\"a\":3}}\n",
        "{\"index\":4,\"id\":null,\"outp",
    );

    #[test]
    fn keeps_finished_rows_and_drops_unfinished_and_torn_ones() {
        let (_dir, path) = write(OUTPUT);
        let previous = Previous::scan(&path, false).unwrap();
        let kept: Vec<u64> = (0..6).filter(|i| previous.kept.contains(*i)).collect();
        assert_eq!(kept, [0, 1, 3]);
        assert_eq!(previous.failed, 1);
        let retried = Previous::scan(&path, true).unwrap();
        let kept: Vec<u64> = (0..6).filter(|i| retried.kept.contains(*i)).collect();
        assert_eq!(kept, [0, 3], "--retry-failed runs the failed row again");
    }

    #[test]
    fn kept_lines_come_back_byte_for_byte_by_index() {
        let (_dir, path) = write(OUTPUT);
        let previous = Previous::scan(&path, false).unwrap();
        let mut lines = previous.lines().unwrap();
        assert_eq!(
            lines.take(0).unwrap().map(|k| k.line).as_deref(),
            Some("{\"index\":0,\"id\":null,\"outputs\":{\"a\":1}}")
        );
        assert_eq!(lines.take(2).unwrap(), None, "not kept");
        let three = lines.take(3).unwrap().unwrap().line;
        assert!(three.contains("12345678901234567890123"), "{three}");
        assert_eq!(lines.take(4).unwrap(), None);
    }

    #[test]
    fn the_rest_is_handed_out_when_a_resume_stops_early() {
        let (_dir, path) = write(OUTPUT);
        let previous = Previous::scan(&path, false).unwrap();
        let mut lines = previous.lines().unwrap();
        assert!(lines.take(0).unwrap().is_some());
        let mut rest = Vec::new();
        lines.rest(|k| rest.push(k.line)).unwrap();
        assert_eq!(rest.len(), 2);
        assert!(rest[0].starts_with("{\"index\":1,"));
        assert!(rest[1].starts_with("{\"index\":3,"));
    }

    #[test]
    fn indices_count_each_row_once() {
        let mut set = Indices::default();
        assert!(set.insert(5));
        assert!(!set.insert(5));
        assert!(set.insert(1000));
        assert!(set.contains(1000) && set.contains(5) && !set.contains(6));
        assert_eq!(set.len(), 2);
        assert!(set.remove(5) && !set.remove(5) && !set.remove(1 << 20));
        assert_eq!(set.len(), 1);
    }
}
