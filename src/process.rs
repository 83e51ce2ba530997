//! Running a child process whose output the user should see: every line is
//! streamed to the deploy's progress, and a failure carries the last lines of
//! output so the error names what went wrong in the tool's own words.
//!
//! Output comes from code the node does not control (an app's build, its
//! `requirements.txt`), so what is kept of it is bounded: a line longer than
//! `MAX_LINE` bytes is cut and marked, the rest of it read and dropped as it
//! arrives, and only the last `TAIL_LINES` lines are kept for the error.

use std::collections::VecDeque;
use std::process::Stdio;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::progress::Progress;

const TAIL_LINES: usize = 20;

/// The most of one line of output that is kept, in bytes.
pub const MAX_LINE: usize = 4096;

/// Lines read ahead of the consumer, per child: the child waits (its pipe
/// fills) rather than the node buffering without end.
const LINES_IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}):\n{tail}")]
    Failed {
        program: String,
        status: String,
        tail: String,
    },
}

/// The PATH every child of the node gets.
pub const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// Gives `cmd` the node's clean environment: nothing inherited but what is
/// added here (PATH, LANG) and what the caller adds after, by name. Every
/// child the node runs starts from this, so no variable of the node's own
/// environment reaches an app, a build or a git command by accident.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear()
        .env("PATH", CHILD_PATH)
        .env("LANG", "C.UTF-8")
}

const SYSTEMD_RUN: &str = "/usr/bin/systemd-run";

/// The command that starts one of the servers the node keeps beside it
/// (an Apache of the pool, the TLS front). Under systemd (a system-mode
/// node's unit) every process the node starts sits in the unit's control
/// group and is killed when the unit stops or restarts; these must keep
/// serving while the node restarts, so they start in a scope of their own.
/// `systemd-run --scope` runs the program itself, in the new scope, with
/// the environment the caller gives it.
pub fn outliving_command(program: &std::path::Path) -> Command {
    if under_systemd() {
        let mut c = Command::new(SYSTEMD_RUN);
        c.args(["--scope", "--quiet", "--collect", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn under_systemd() -> bool {
    // systemd sets INVOCATION_ID for the processes of a unit it runs.
    std::env::var_os("INVOCATION_ID").is_some()
        && std::path::Path::new("/run/systemd/system").is_dir()
        && std::path::Path::new(SYSTEMD_RUN).is_file()
}

/// Runs `cmd`, streaming stdout and stderr lines (prefixed by `prefix`) to
/// `progress`. The child is killed if the future is dropped.
pub async fn run_streamed(
    cmd: Command,
    program: &str,
    prefix: &str,
    progress: &Progress,
) -> Result<(), ProcessError> {
    run(cmd, program, |line| {
        progress.output(format!("{prefix}{line}"))
    })
    .await
}

/// Runs a short command quietly; its last lines of output (stdout and
/// stderr) go into the error if it fails.
pub async fn run_captured(cmd: Command, program: &str) -> Result<(), ProcessError> {
    run(cmd, program, |_| {}).await
}

/// Runs `cmd` to its end, handing each line of its output (both streams,
/// bounded by `MAX_LINE`) to `each`.
async fn run(
    mut cmd: Command,
    program: &str,
    mut each: impl FnMut(&str),
) -> Result<(), ProcessError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(LINES_IN_FLIGHT);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(BufReader::new(out), tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(BufReader::new(err), tx.clone()));
    }
    drop(tx);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    while let Some(line) = rx.recv().await {
        each(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().await.map_err(|source| ProcessError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().map(|l| format!("  {l}")).collect();
    Err(ProcessError::Failed {
        program: program.to_string(),
        status: status.to_string(),
        tail: tail.join("\n"),
    })
}

async fn forward<R: AsyncBufRead + Unpin>(mut reader: R, tx: tokio::sync::mpsc::Sender<String>) {
    // A read error ends this stream's lines; the child's exit status still
    // says how it went.
    while let Ok(Some(line)) = bounded_line(&mut reader, MAX_LINE).await {
        if tx.send(line).await.is_err() {
            break;
        }
    }
}

/// The next line (without its `\n` or `\r\n`), at most `max` bytes of it:
/// the rest of a longer line is read and dropped, and the line says how
/// much was. Invalid UTF-8 is replaced, not an error. None at the end.
pub async fn bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut dropped: u64 = 0;
    let mut any = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if !any {
                return Ok(None);
            }
            break;
        }
        any = true;
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        let take = chunk.len().min(max - line.len());
        line.extend_from_slice(&chunk[..take]);
        dropped += (chunk.len() - take) as u64;
        let used = newline.map_or(buf.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            break;
        }
    }
    if dropped == 0 && line.last() == Some(&b'\r') {
        line.pop();
    }
    if dropped > 0 {
        // A cut through a multi-byte character would show as garbage.
        if let Err(e) = std::str::from_utf8(&line)
            && e.error_len().is_none()
        {
            let cut = e.valid_up_to();
            dropped += (line.len() - cut) as u64;
            line.truncate(cut);
        }
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if dropped > 0 {
        text.push_str(&format!(" [line cut: {dropped} more bytes dropped]"));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, ReadBuf};

    /// `len` bytes of `x`, made as they are read, then `rest`.
    struct Endless {
        left: u64,
        rest: &'static [u8],
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.left > 0 {
                let n = (buf.remaining() as u64).min(self.left) as usize;
                buf.put_slice(&vec![b'x'; n]);
                self.left -= n as u64;
            } else {
                let n = buf.remaining().min(self.rest.len());
                buf.put_slice(&self.rest[..n]);
                self.rest = &self.rest[n..];
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn lines_of(bytes: &'static [u8], max: usize) -> Vec<String> {
        let mut r = BufReader::with_capacity(4, bytes);
        let mut out = Vec::new();
        while let Some(l) = bounded_line(&mut r, max).await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn a_100_mb_line_without_newline_is_cut_and_marked() {
        let total: u64 = 100 * 1024 * 1024;
        let mut r = BufReader::new(Endless {
            left: total,
            rest: b"\nnext\n",
        });
        let line = bounded_line(&mut r, MAX_LINE).await.unwrap().unwrap();
        let kept = MAX_LINE as u64;
        assert!(line.starts_with(&"x".repeat(MAX_LINE)));
        assert!(
            line.ends_with(&format!(" [line cut: {} more bytes dropped]", total - kept)),
            "{}",
            &line[MAX_LINE..]
        );
        assert!(line.len() < MAX_LINE + 100);
        // The reader is past the long line: the next one is intact.
        assert_eq!(
            bounded_line(&mut r, MAX_LINE).await.unwrap().unwrap(),
            "next"
        );
        assert!(bounded_line(&mut r, MAX_LINE).await.unwrap().is_none());

        // Without any newline at all, too.
        let mut r = BufReader::new(Endless {
            left: total,
            rest: b"",
        });
        let line = bounded_line(&mut r, MAX_LINE).await.unwrap().unwrap();
        assert!(line.len() < MAX_LINE + 100);
        assert!(bounded_line(&mut r, MAX_LINE).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn short_lines_come_through_as_lines_would() {
        assert_eq!(
            lines_of(b"one\r\ntwo\n\nthree", 100).await,
            ["one", "two", "", "three"]
        );
        assert!(lines_of(b"", 100).await.is_empty());
        // Exactly at the limit is not cut.
        assert_eq!(
            lines_of(b"abcd\nefghi\n", 4).await,
            ["abcd", "efgh [line cut: 1 more bytes dropped]"]
        );
    }

    #[tokio::test]
    async fn bad_utf8_is_replaced_and_cuts_keep_whole_characters() {
        assert_eq!(lines_of(b"a\xffb\n", 100).await, ["a\u{fffd}b"]);
        // "é" is two bytes; a cut after its first byte drops all of it.
        assert_eq!(
            lines_of("aé\n".as_bytes(), 2).await,
            ["a [line cut: 2 more bytes dropped]"]
        );
    }

    #[tokio::test]
    async fn a_child_printing_a_huge_line_is_streamed_bounded() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("head -c 3000000 /dev/zero | tr '\\0' y; echo; echo done; exit 3");
        let (progress, mut lines) = Progress::channel();
        let err = run_streamed(cmd, "sh", "> ", &progress).await.unwrap_err();
        drop(progress);
        let mut got = Vec::new();
        while let Some(l) = lines.recv().await {
            got.push(l);
        }
        assert_eq!(
            got.len(),
            2,
            "{:?}",
            got.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert!(got[0].starts_with("> yyy"));
        assert!(got[0].ends_with(&format!("{} more bytes dropped]", 3_000_000 - MAX_LINE)));
        assert_eq!(got[1], "> done");
        let text = err.to_string();
        assert!(
            text.contains("sh failed") && text.contains("  done"),
            "{}",
            &text[..200.min(text.len())]
        );
        assert!(text.len() < 2 * MAX_LINE, "{}", text.len());
    }
}
