//! Reading JSONL input lazily, one line at a time, so a file of any size runs in
//! bounded memory.
//!
//! Lines are read as bytes (invalid UTF-8 fails that row, not the run). Blank lines
//! (empty or only whitespace) are skipped: they produce no output line and take no row
//! index, so a trailing empty line or a visual separator never counts as a failed row.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One non-blank input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the input, for messages.
    pub number: u64,
    /// Bytes of input consumed up to and including this line (for progress).
    pub end_offset: u64,
    /// The line without its line terminator.
    pub bytes: Vec<u8>,
}

/// Yields the non-blank lines of a reader.
pub struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    number: u64,
    offset: u64,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    pub fn new(reader: R) -> Self {
        Lines {
            reader,
            buf: Vec::new(),
            number: 0,
            offset: 0,
        }
    }

    /// The next non-blank line, or `None` at the end of the input.
    ///
    /// Cancel safe (usable in `select!`): a partly read line stays in the buffer and
    /// the next call continues it; counters change only after a whole line was read.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let read = self.reader.read_until(b'\n', &mut self.buf).await?;
            if read == 0 && self.buf.is_empty() {
                return Ok(None);
            }
            let mut bytes = std::mem::take(&mut self.buf);
            self.number += 1;
            self.offset += bytes.len() as u64;
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Line {
                number: self.number,
                end_offset: self.offset,
                bytes,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(text: &'static [u8]) -> Vec<Line> {
        let mut lines = Lines::new(text);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn skips_blank_lines_but_counts_them_in_line_numbers() {
        let lines = all(b"{\"a\":1}\n\n  \r\n{\"a\":2}\r\n{\"a\":3}").await;
        let numbers: Vec<u64> = lines.iter().map(|l| l.number).collect();
        let bytes: Vec<&[u8]> = lines.iter().map(|l| l.bytes.as_slice()).collect();
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
        assert_eq!(lines[0].bytes, b"\xff\xfe");
    }
}
