//! The host's ends of a worker's transport, and the handling of its log streams.
//!
//! A [`Connection`] is what any [`crate::launcher::WorkerLauncher`] hands to the Worker
//! actor: a byte stream for requests, one for responses and zero or more log streams. The
//! actor does not care whether the other end is a Python process or the in-memory fake of
//! `testing` module. Log output is turned into lines by [`log_lines`] (which tolerates
//! anything a child may print) and the last few are kept in a [`LogTail`] for crash reports.

use futures::Stream;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};

pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Longest log line kept, in bytes; the rest of a longer line is dropped so that a child
/// printing a huge blob cannot blow up the host's memory or its logs.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// Appended to a log line that was cut at [`MAX_LOG_LINE`].
pub const TRUNCATED_MARK: &str = " [line truncated]";

/// Which child stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    /// `"stdout"` or `"stderr"`, as used in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a launcher hands to the Worker actor.
pub struct Connection {
    /// Requests are written here (fd 3 of the child, or its stdin).
    pub writer: BoxWrite,
    /// Responses are read from here (fd 4 of the child, or its stdout).
    pub reader: BoxRead,
    /// Streams that carry only log output (stdout/stderr in `fds` mode, stderr in `stdio`).
    pub logs: Vec<(LogStream, BoxRead)>,
    /// The real process, if there is one.
    pub process: Option<super::process::ChildProcess>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field(
                "logs",
                &self.logs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            )
            .field("pid", &self.process.as_ref().map(|p| p.pid()))
            .finish_non_exhaustive()
    }
}

/// Turns a log stream into a stream of lines.
///
/// Lines are decoded as lossy UTF-8 without their `\n` / `\r\n`; a line longer than
/// [`MAX_LOG_LINE`] bytes is cut there and marked with [`TRUNCATED_MARK`]. The stream
/// never fails: end of file ends it (after yielding an unterminated last line), and a read
/// error is logged at debug level and ends it too, because a child's log output is never
/// worth failing a worker over.
///
/// # Examples
///
/// ```
/// use dspex_actors::log_lines;
/// use futures::StreamExt;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let lines: Vec<String> = log_lines(Box::pin(&b"one\r\ntwo"[..])).collect().await;
/// assert_eq!(lines, ["one", "two"]);
/// # });
/// ```
pub fn log_lines(reader: BoxRead) -> impl Stream<Item = String> + Send + 'static {
    log_lines_with_limit(reader, MAX_LOG_LINE)
}

/// [`log_lines`] with a chosen line limit (at least 1 byte).
pub fn log_lines_with_limit(
    reader: BoxRead,
    max_line: usize,
) -> impl Stream<Item = String> + Send + 'static {
    let state = LineReader {
        reader: BufReader::new(reader),
        max_line: max_line.max(1),
        skipping: false,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let line = state.next_line().await?;
        Some((line, state))
    })
}

struct LineReader {
    reader: BufReader<BoxRead>,
    max_line: usize,
    /// Dropping the rest of a line that was already cut and emitted.
    skipping: bool,
    done: bool,
}

impl LineReader {
    async fn next_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        loop {
            if self.done {
                return None;
            }
            let buf = match self.reader.fill_buf().await {
                Ok(buf) => buf,
                Err(e) => {
                    log::debug!("log stream read failed, ending it: {e}");
                    self.done = true;
                    return (!line.is_empty()).then(|| finish(&line, false));
                }
            };
            if buf.is_empty() {
                self.done = true;
                return (!line.is_empty()).then(|| finish(&line, false));
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            if self.skipping {
                let n = newline.map_or(buf.len(), |i| i + 1);
                self.reader.consume(n);
                self.skipping = newline.is_none();
                continue;
            }
            let room = self.max_line - line.len();
            match newline {
                Some(i) => {
                    let cut = i > room;
                    line.extend_from_slice(&buf[..i.min(room)]);
                    self.reader.consume(i + 1);
                    return Some(finish(&line, cut));
                }
                None if buf.len() > room => {
                    line.extend_from_slice(&buf[..room]);
                    let n = buf.len();
                    self.reader.consume(n);
                    self.skipping = true;
                    return Some(finish(&line, true));
                }
                None => {
                    line.extend_from_slice(buf);
                    let n = buf.len();
                    self.reader.consume(n);
                }
            }
        }
    }
}

fn finish(line: &[u8], cut: bool) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut text = String::from_utf8_lossy(line).into_owned();
    if cut {
        text.push_str(TRUNCATED_MARK);
    }
    text
}

/// The last `capacity` log lines of a worker, for crash reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    capacity: usize,
    lines: VecDeque<String>,
}

impl LogTail {
    /// Keeps at most `capacity` lines (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        LogTail {
            capacity,
            lines: VecDeque::with_capacity(capacity.min(1024)),
        }
    }

    /// Adds a line, dropping the oldest one when full.
    pub fn push(&mut self, line: impl Into<String>) {
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line.into());
    }

    /// The kept lines joined with `\n`, oldest first; empty if there are none.
    pub fn joined(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(line);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn lines_of(input: &'static [u8], max: usize) -> Vec<String> {
        log_lines_with_limit(Box::pin(input), max).collect().await
    }

    #[tokio::test]
    async fn unterminated_last_line_is_yielded_at_eof() {
        assert_eq!(lines_of(b"a\nb", 100).await, ["a", "b"]);
    }

    #[tokio::test]
    async fn empty_lines_are_kept_and_crlf_is_stripped() {
        assert_eq!(lines_of(b"a\r\n\nb\n", 100).await, ["a", "", "b"]);
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_an_error() {
        assert_eq!(lines_of(b"a\xffb\nok\n", 100).await, ["a\u{fffd}b", "ok"]);
    }

    #[tokio::test]
    async fn long_line_is_cut_and_the_rest_of_it_dropped() {
        assert_eq!(
            lines_of(b"0123456789\nnext\n", 4).await,
            [format!("0123{TRUNCATED_MARK}"), "next".to_owned()]
        );
    }

    #[tokio::test]
    async fn line_of_exactly_the_limit_is_not_marked_cut() {
        assert_eq!(lines_of(b"0123\n45\n", 4).await, ["0123", "45"]);
    }

    #[tokio::test]
    async fn long_line_split_across_reads_is_cut_once() {
        // A reader that hands out one byte per read forces the multi-read path.
        let (mut tx, rx) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(b"abcdefgh\nxy\n").await.unwrap();
        });
        let lines: Vec<String> = log_lines_with_limit(Box::pin(rx), 3).collect().await;
        writer.await.unwrap();
        assert_eq!(lines, [format!("abc{TRUNCATED_MARK}"), "xy".to_owned()]);
    }

    #[test]
    fn log_tail_keeps_the_last_lines_in_order() {
        let mut tail = LogTail::new(2);
        for line in ["a", "b", "c"] {
            tail.push(line);
        }
        assert_eq!(tail.joined(), "b\nc");
    }

    #[test]
    fn log_tail_of_zero_keeps_nothing() {
        let mut tail = LogTail::new(0);
        tail.push("a");
        assert_eq!(tail.joined(), "");
    }
}
