//! Where output lines go, and the promise that they arrive whole.
//!
//! Before anything starts, the output is checked: it must not be the input (compared by
//! device and inode, which also catches hard links, `/dev/stdin` and `-i - < f -o f`), and
//! it must be writable (an existing file is opened for writing, a new one needs a writable
//! directory), so neither mistake costs a Python start-up. Nothing is truncated before
//! that check; the file is emptied only once the workers are up.
//!
//! Lines are written in batches straight to the file descriptor. When a write fails (a
//! full disk, a file size limit) the output is cut back to the last complete line and the
//! error says how many rows were written, so the file is always valid JSONL and a
//! `--resume` can complete it. A resumed run writes a temporary file next to the output
//! and renames it over the output at the end, so a crash during the resume loses nothing.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::input::Identity;
use crate::cli::CliError;

/// A checked output: the file is open (or its directory is writable) but untouched.
pub enum Target {
    Stdout,
    File {
        path: PathBuf,
        /// Open for writing, not truncated; `None` when the file does not exist yet.
        file: Option<File>,
    },
}

impl Target {
    /// Checks `path` (`-`: standard output) against the input and for writability.
    pub fn check(path: &Path, input: Identity, resume: bool) -> Result<Target, CliError> {
        if path == Path::new("-") {
            if resume {
                return Err(CliError::Usage(
                    "--resume completes an output file; give it with --output FILE".into(),
                ));
            }
            // Standard output appended to the input would read its own answers forever.
            if Identity::of_fd(io::stdout()).is_ok_and(|out| same_file(out, input)) {
                return Err(CliError::Usage(
                    "standard output is the input file; writing to it would destroy the input \
                     (use --output FILE)"
                        .into(),
                ));
            }
            return Ok(Target::Stdout);
        }
        let usage = |problem: String| {
            CliError::Usage(format!(
                "cannot write output file `{}`: {problem}",
                path.display()
            ))
        };
        if path.is_dir() {
            return Err(usage("it is a directory".into()));
        }
        let dir = parent(path);
        if !dir.is_dir() {
            return Err(usage(format!(
                "directory `{}` does not exist",
                dir.display()
            )));
        }
        let file = match OpenOptions::new().write(true).open(path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(usage(e.to_string())),
        };
        if let Some(file) = &file {
            let meta = file.metadata().map_err(|e| usage(e.to_string()))?;
            if same_file(Identity::of(&meta), input) {
                return Err(CliError::Usage(format!(
                    "--output `{}` is the input file; writing it would destroy the input",
                    path.display()
                )));
            }
        }
        // A new output, a resume's temporary file and the sidecar are made in the directory.
        let needs_dir = file.is_none() || resume;
        if needs_dir {
            if let Err(e) = writable_dir(dir) {
                return Err(usage(format!(
                    "directory `{}` is not writable ({e})",
                    dir.display()
                )));
            }
        }
        Ok(Target::File {
            path: path.to_owned(),
            file,
        })
    }

    /// The output's path, for messages; `-` for standard output.
    pub fn path(&self) -> &Path {
        match self {
            Target::Stdout => Path::new("-"),
            Target::File { path, .. } => path,
        }
    }

    /// Whether the output is (or will be) a regular file, which gets a sidecar.
    pub fn is_regular(&self) -> bool {
        match self {
            Target::Stdout => false,
            Target::File { file: None, .. } => true,
            Target::File { file: Some(f), .. } => f.metadata().is_ok_and(|m| m.is_file()),
        }
    }

    /// Opens the writer: truncates (or creates) the output, or, for a resume, creates the
    /// temporary file that replaces it at the end.
    pub fn open(self, resume: bool) -> Result<Writer, CliError> {
        match self {
            Target::Stdout => {
                let fd = io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|source| CliError::Io {
                        action: "write to",
                        path: "-".into(),
                        source,
                    })?;
                Ok(Writer::new(File::from(fd), "-".into(), false, None))
            }
            Target::File { path, file } if resume => {
                drop(file);
                let staging = staging_path(&path);
                let file = File::create(&staging).map_err(|source| CliError::Io {
                    action: "create",
                    path: staging.clone(),
                    source,
                })?;
                Ok(Writer::new(file, staging, true, Some(path)))
            }
            Target::File { path, file } => {
                let opened = match file {
                    // Devices (`/dev/null`, `/dev/full`) cannot be truncated, nor need it.
                    Some(file) if !file.metadata().is_ok_and(|m| m.is_file()) => Ok(file),
                    Some(file) => file.set_len(0).map(|()| file),
                    None => File::create(&path),
                };
                let file = opened.map_err(|source| CliError::Io {
                    action: "create output file",
                    path: path.clone(),
                    source,
                })?;
                let regular = file.metadata().is_ok_and(|m| m.is_file());
                Ok(Writer::new(file, path, regular, None))
            }
        }
    }
}

/// Two descriptors name the same file. Only regular files count: a terminal or
/// `/dev/null` on both sides is fine.
fn same_file(a: Identity, b: Identity) -> bool {
    a.regular && b.regular && a.dev == b.dev && a.ino == b.ino
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether this process may create files in `dir` (effective ids, as `open` would check).
fn writable_dir(dir: &Path) -> io::Result<()> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let result = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The temporary file a resume writes before it replaces `output`. Fixed, so a resume
/// that was killed leaves one file that the next resume overwrites.
pub fn staging_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".dspex-resume.tmp");
    PathBuf::from(name)
}

/// Writing the output failed after `rows` complete lines.
#[derive(Debug)]
pub struct WriteFailed {
    pub source: io::Error,
    pub rows: u64,
}

/// Buffers whole lines and writes them in one go; never leaves half a line behind.
pub struct Writer {
    file: File,
    /// What is being written: the output, or a resume's temporary file.
    path: PathBuf,
    /// Whether the file is a regular file this writer filled from its start, so a torn
    /// line can be cut off again.
    truncatable: bool,
    /// A resume's output, which the temporary file replaces in [`Writer::finish`].
    replaces: Option<PathBuf>,
    buf: Vec<u8>,
    /// Bytes and lines known to be in the file.
    committed_bytes: u64,
    committed_rows: u64,
}

impl Writer {
    fn new(file: File, path: PathBuf, truncatable: bool, replaces: Option<PathBuf>) -> Writer {
        Writer {
            file,
            path,
            truncatable,
            replaces,
            buf: Vec::with_capacity(64 * 1024),
            committed_bytes: 0,
            committed_rows: 0,
        }
    }

    /// The output this writer ends up in (for messages).
    pub fn output(&self) -> &Path {
        self.replaces.as_deref().unwrap_or(&self.path)
    }

    /// Queues one line (without its newline).
    pub fn line(&mut self, line: &str) {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
    }

    /// Rows known to be written completely.
    pub fn rows(&self) -> u64 {
        self.committed_rows
    }

    /// Bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes the queued lines. On failure the file ends with the last complete line.
    pub fn flush(&mut self) -> Result<(), WriteFailed> {
        let mut written = 0;
        while written < self.buf.len() {
            match self.file.write(&self.buf[written..]) {
                Ok(0) => {
                    return Err(self.failed(written, io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed(written, e)),
            }
        }
        self.committed_bytes += written as u64;
        self.committed_rows += self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Counts what did get written and cuts a partial line off the file.
    fn failed(&mut self, written: usize, source: io::Error) -> WriteFailed {
        let complete = self.buf[..written]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        self.committed_rows += self.buf[..complete].iter().filter(|&&b| b == b'\n').count() as u64;
        self.committed_bytes += complete as u64;
        if complete < written && self.truncatable {
            if let Err(e) = self.file.set_len(self.committed_bytes) {
                log::warn!(
                    "cannot cut the partial last line off {}: {e}",
                    self.path.display()
                );
            }
        }
        self.buf.clear();
        WriteFailed {
            source,
            rows: self.committed_rows,
        }
    }

    /// The error for a failed write, saying how many rows made it.
    pub fn error(&self, failed: WriteFailed) -> CliError {
        let WriteFailed { source, rows } = failed;
        if source.kind() == io::ErrorKind::BrokenPipe {
            return CliError::Io {
                action: "write output to",
                path: self.output().to_owned(),
                source,
            };
        }
        let kept = match &self.replaces {
            Some(output) => format!(
                "`{}` is unchanged; the resumed rows were in `{}`",
                output.display(),
                self.path.display()
            ),
            None => format!(
                "{rows} rows were written completely (the output ends with the last complete \
                 row); free space and run again (`dspex run --resume` completes a run's output)"
            ),
        };
        CliError::Usage(format!(
            "cannot write output to `{}`: {source}; {kept}",
            self.path.display()
        ))
    }

    /// Flushes, and for a resume makes the temporary file the output (synced first, so a
    /// crash right after cannot leave an empty output behind).
    pub fn finish(mut self) -> Result<(), CliError> {
        self.flush().map_err(|e| self.error(e))?;
        if let Some(output) = &self.replaces {
            self.file.sync_all().map_err(|source| CliError::Io {
                action: "write",
                path: self.path.clone(),
                source,
            })?;
            std::fs::rename(&self.path, output).map_err(|source| CliError::Io {
                action: "replace the output with",
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(path: &Path) -> Identity {
        Identity::of(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn the_input_by_another_name_is_refused_and_left_intact() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        let link = dir.path().join("hard.jsonl");
        std::fs::hard_link(&input, &link).unwrap();
        for output in [&input, &link] {
            let e = Target::check(output, identity(&input), false)
                .err()
                .unwrap();
            assert!(e.to_string().contains("is the input file"), "{e}");
        }
        assert_eq!(std::fs::read(&input).unwrap(), b"{}\n");
        let other = dir.path().join("out.jsonl");
        assert!(Target::check(&other, identity(&input), false).is_ok());
    }

    #[test]
    fn missing_directories_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        let id = identity(&input);
        let e = Target::check(&dir.path().join("no/such/out.jsonl"), id, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = Target::check(dir.path(), id, false).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert!(Target::check(Path::new("-"), id, false).is_ok());
        let e = Target::check(Path::new("-"), id, true).err().unwrap();
        assert!(
            e.to_string().contains("--resume completes an output file"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_write_leaves_only_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut writer = Writer::new(File::create(&path).unwrap(), path.clone(), true, None);
        writer.line("{\"index\":0}");
        writer.flush().unwrap();
        writer.line("{\"index\":1}");
        writer.line("{\"index\":2}");
        // As if the disk filled up in the middle of the third line.
        let partial = writer.buf[..12 + 5].to_vec();
        writer.file.write_all(&partial).unwrap();
        let failed = writer.failed(12 + 5, io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(failed.rows, 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"index\":0}\n{\"index\":1}\n"
        );
        let message = writer.error(failed).to_string();
        assert!(message.contains("No space left on device"), "{message}");
        assert!(
            message.contains("2 rows were written completely"),
            "{message}"
        );
    }
}
