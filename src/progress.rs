//! Progress of a deploy, streamed to whoever asked for it (the `node deploy`
//! client, a `git push`, an upload), to the node's log, and into the deploy's
//! record (`GET /deploys/{id}`) at the same time.

use std::sync::Arc;

use tokio::sync::mpsc;

/// Where a deploy's record keeps its lines.
pub type RecordSink = Arc<dyn Fn(String) + Send + Sync>;

/// A cheap, cloneable sink for progress lines. A sink whose reader has gone
/// away swallows lines: a deploy never fails because nobody is listening.
#[derive(Clone)]
pub struct Progress {
    tx: Option<mpsc::UnboundedSender<String>>,
    /// The deploy record every line is also kept in.
    record: Option<RecordSink>,
}

impl Progress {
    pub fn channel() -> (Progress, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Progress {
                tx: Some(tx),
                record: None,
            },
            rx,
        )
    }

    /// A sink nobody reads: its lines go to the node's log only.
    pub fn silent() -> Progress {
        Progress {
            tx: None,
            record: None,
        }
    }

    /// The same sink, whose lines also go into a deploy's record.
    pub fn recorded(&self, record: RecordSink) -> Progress {
        Progress {
            tx: self.tx.clone(),
            record: Some(record),
        }
    }

    fn send(&self, line: String) {
        if let Some(record) = &self.record {
            record(line.clone());
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(line);
        }
    }

    pub fn say(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!("{line}");
        self.send(line);
    }

    /// Output of a child process: shown to the user, logged at debug level.
    pub fn output(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::debug!("{line}");
        self.send(line);
    }
}
