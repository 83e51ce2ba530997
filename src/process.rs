//! Running a child process whose output the user should see: every line is
//! streamed to the deploy's progress, and a failure carries the last lines of
//! output so the error names what went wrong in the tool's own words.

use std::collections::VecDeque;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::progress::Progress;

const TAIL_LINES: usize = 20;

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

/// Runs `cmd`, streaming stdout and stderr lines (prefixed by `prefix`) to
/// `progress`. The child is killed if the future is dropped.
pub async fn run_streamed(
    mut cmd: Command,
    program: &str,
    prefix: &str,
    progress: &Progress,
) -> Result<(), ProcessError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(forward(BufReader::new(out), tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(forward(BufReader::new(err), tx.clone())));
    }
    drop(tx);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    while let Some(line) = rx.recv().await {
        progress.output(format!("{prefix}{line}"));
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

async fn forward<R: tokio::io::AsyncRead + Unpin>(
    reader: BufReader<R>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// Runs a short command and returns its stdout; stderr goes into the error.
pub async fn run_captured(mut cmd: Command, program: &str) -> Result<String, ProcessError> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = cmd.output().await.map_err(|source| ProcessError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let tail: Vec<String> = text
        .lines()
        .rev()
        .take(TAIL_LINES)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|l| format!("  {l}"))
        .collect();
    Err(ProcessError::Failed {
        program: program.to_string(),
        status: out.status.to_string(),
        tail: tail.join("\n"),
    })
}
