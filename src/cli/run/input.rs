//! Reading JSONL input lazily, one line at a time, in bounded memory.
//!
//! Lines are read as bytes (invalid UTF-8 fails that row, not the run). Blank lines
//! (empty or only whitespace) are skipped: they produce no output line and take no row
//! index, so a trailing empty line or a visual separator never counts as a failed row.
//!
//! No line is held beyond `run.max_line_bytes`. A longer line is reported as too long
//! the moment it passes the limit (so its row fails at once, and a user sees why), and
//! the rest of it is read and dropped in buffer-sized chunks up to its newline or the end
//! of the input. One line is always one row: an input with no newline at all, such as
//! `/dev/zero`, is one failed row followed by reading to its end in constant memory.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::cli::CliError;

/// One non-blank input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the input, for messages.
    pub number: u64,
    /// Bytes of input consumed up to and including this line (for progress); for a
    /// line that is too long, up to where it passed the limit.
    pub end_offset: u64,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The line without its line terminator.
    Text(Vec<u8>),
    /// The line is longer than the limit; its bytes were not kept.
    TooLong,
}

/// Yields the non-blank lines of a reader.
pub struct Lines<R> {
    reader: R,
    max_line_bytes: usize,
    buf: Vec<u8>,
    /// Dropping the rest of a line that was too long.
    skipping: bool,
    number: u64,
    offset: u64,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    pub fn new(reader: R, max_line_bytes: u64) -> Self {
        Lines {
            reader,
            max_line_bytes: usize::try_from(max_line_bytes).unwrap_or(usize::MAX),
            buf: Vec::new(),
            skipping: false,
            number: 0,
            offset: 0,
        }
    }

    /// The next non-blank line, or `None` at the end of the input.
    ///
    /// Cancel safe (usable in `select!`): the only await is the reader's `fill_buf`, and
    /// everything taken from the reader is kept in `self` before the next one.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                // End of input: a last line without a newline still counts.
                let skipped = std::mem::replace(&mut self.skipping, false);
                if self.buf.is_empty() || skipped {
                    return Ok(None);
                }
                if let Some(line) = self.take_line() {
                    return Ok(Some(line));
                }
                return Ok(None);
            }
            let newline = memchr(chunk);
            let used = newline.map_or(chunk.len(), |i| i + 1);
            if self.skipping {
                // The rest of a line already reported as too long.
                self.reader.consume(used);
                self.offset += used as u64;
                self.skipping = newline.is_none();
                continue;
            }
            // Room for a "\r\n" beyond the limit, which is on the line itself.
            if self.buf.len() + used > self.max_line_bytes.saturating_add(2) {
                self.reader.consume(used);
                self.offset += used as u64;
                self.buf.clear();
                self.skipping = newline.is_none();
                return Ok(Some(self.too_long()));
            }
            self.buf.extend_from_slice(&chunk[..used]);
            self.reader.consume(used);
            self.offset += used as u64;
            if newline.is_none() {
                continue;
            }
            if let Some(line) = self.take_line() {
                return Ok(Some(line));
            }
        }
    }

    fn too_long(&mut self) -> Line {
        self.number += 1;
        Line {
            number: self.number,
            end_offset: self.offset,
            content: Content::TooLong,
        }
    }

    /// The buffered line, unless it is blank (which only advances the line number).
    fn take_line(&mut self) -> Option<Line> {
        let mut bytes = std::mem::take(&mut self.buf);
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.len() > self.max_line_bytes {
            bytes.clear();
            self.buf = bytes;
            return Some(self.too_long());
        }
        self.number += 1;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // Keep the allocation for the next line.
            bytes.clear();
            self.buf = bytes;
            return None;
        }
        Some(Line {
            number: self.number,
            end_offset: self.offset,
            content: Content::Text(bytes),
        })
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

pub type Reader = Box<dyn AsyncBufRead + Unpin + Send>;

/// An opened input.
pub struct Input {
    pub reader: Reader,
    /// The size of a regular input file, for the progress bar and the sidecar.
    pub len: Option<u64>,
    /// Device and inode, so the output can be told apart from it.
    pub identity: Identity,
}

/// Which file an open descriptor is: two paths (a hard link, `/dev/stdin`) or a path and
/// a redirection of the same file are one file exactly when these agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub regular: bool,
}

impl Identity {
    pub fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            regular: meta.is_file(),
        }
    }

    /// Of an open descriptor (`fstat`), e.g. fd 0 or 1.
    pub fn of_fd(fd: impl AsFd) -> std::io::Result<Identity> {
        let file = File::from(fd.as_fd().try_clone_to_owned()?);
        Ok(Identity::of(&file.metadata()?))
    }
}

/// Opens `path` (`-`: standard input) for reading.
pub fn open(path: &Path) -> Result<Input, CliError> {
    let (file, what) = if path == Path::new("-") {
        // A duplicate of fd 0 read through tokio's file reader (on its blocking pool),
        // which works for pipes and terminals alike.
        let fd = std::io::stdin().as_fd().try_clone_to_owned();
        (fd.map(File::from), "read standard input")
    } else {
        (File::open(path), "read input file")
    };
    let io_error = |source| CliError::Io {
        action: what,
        path: path.to_owned(),
        source,
    };
    let file = file.map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    if meta.is_dir() {
        return Err(CliError::Usage(format!(
            "cannot read input file `{}`: it is a directory",
            path.display()
        )));
    }
    Ok(Input {
        identity: Identity::of(&meta),
        len: meta.is_file().then_some(meta.len()),
        reader: Box::new(BufReader::with_capacity(
            64 * 1024,
            tokio::fs::File::from_std(file),
        )),
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn text(line: &Line) -> &[u8] {
        match &line.content {
            Content::Text(bytes) => bytes,
            Content::TooLong => b"<too long>",
        }
    }

    async fn all_with(input: &'static [u8], max: u64, buffer: usize) -> Vec<Line> {
        let mut lines = Lines::new(BufReader::with_capacity(buffer, input), max);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            out.push(line);
        }
        out
    }

    async fn all(input: &'static [u8]) -> Vec<Line> {
        all_with(input, 1 << 20, 8192).await
    }

    #[tokio::test]
    async fn skips_blank_lines_but_counts_them_in_line_numbers() {
        let lines = all(b"{\"a\":1}\n\n  \r\n{\"a\":2}\r\n{\"a\":3}").await;
        let numbers: Vec<u64> = lines.iter().map(|l| l.number).collect();
        let bytes: Vec<&[u8]> = lines.iter().map(text).collect();
        assert_eq!(numbers, [1, 4, 5]);
        assert_eq!(bytes, [&b"{\"a\":1}"[..], b"{\"a\":2}", b"{\"a\":3}"]);
    }

    #[tokio::test]
    async fn offsets_count_every_byte_consumed() {
        let lines = all(b"ab\n\ncd\n").await;
        assert_eq!(lines[0].end_offset, 3);
        assert_eq!(lines[1].end_offset, 7);
    }

    #[tokio::test]
    async fn empty_input_has_no_lines() {
        assert!(all(b"").await.is_empty());
        assert!(all(b"\n\n").await.is_empty());
    }

    #[tokio::test]
    async fn invalid_utf8_is_passed_on_as_bytes() {
        let lines = all(b"\xff\xfe\n").await;
        assert_eq!(text(&lines[0]), b"\xff\xfe");
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_one_row_and_the_next_line_is_intact() {
        // Small buffers make the long line arrive in many chunks.
        for buffer in [1, 3, 8, 64] {
            let lines = all_with(b"short\n0123456789abcdef\nafter\r\n12345678\n", 8, buffer).await;
            let got: Vec<(u64, &[u8])> = lines.iter().map(|l| (l.number, text(l))).collect();
            assert_eq!(
                got,
                [
                    (1, &b"short"[..]),
                    (2, b"<too long>"),
                    (3, b"after"),
                    (4, b"12345678")
                ],
                "buffer {buffer}"
            );
        }
    }

    #[tokio::test]
    async fn a_line_without_newline_ends_at_the_end_of_input() {
        let lines = all_with(b"a\nzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", 4, 5).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].content, Content::TooLong);
        let lines = all_with(b"a\nbb", 4, 5).await;
        assert_eq!(text(&lines[1]), b"bb");
    }

    #[tokio::test]
    async fn an_endless_line_is_reported_once_and_read_in_constant_memory() {
        let zeros = tokio::io::repeat(0).take(5 << 20);
        let mut lines = Lines::new(BufReader::with_capacity(4096, zeros), 1024);
        let first = lines.next_line().await.unwrap().unwrap();
        assert_eq!(first.content, Content::TooLong);
        assert!(first.end_offset <= 1024 + 4096, "{}", first.end_offset);
        assert_eq!(lines.next_line().await.unwrap(), None);
        assert!(
            lines.buf.capacity() <= 4096 + 1024,
            "{}",
            lines.buf.capacity()
        );
        assert_eq!(lines.offset, 5 << 20, "every byte was read");
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_accepted() {
        let lines = all_with(b"1234\r\n12345\n", 4, 2).await;
        assert_eq!(text(&lines[0]), b"1234");
        assert_eq!(lines[1].content, Content::TooLong);
    }
}
