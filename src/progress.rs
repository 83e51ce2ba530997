//! Progress of a deploy, streamed to whoever asked for it (the `node deploy`
//! client, later a `git push`) and to the node's log at the same time.

use tokio::sync::mpsc;

/// A cheap, cloneable sink for progress lines. A sink whose reader has gone
/// away swallows lines: a deploy never fails because nobody is listening.
#[derive(Clone)]
pub struct Progress {
    tx: Option<mpsc::UnboundedSender<String>>,
}

impl Progress {
    pub fn channel() -> (Progress, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Progress { tx: Some(tx) }, rx)
    }

    pub fn say(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!("{line}");
        if let Some(tx) = &self.tx {
            let _ = tx.send(line);
        }
    }

    /// Output of a child process: shown to the user, logged at debug level.
    pub fn output(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::debug!("{line}");
        if let Some(tx) = &self.tx {
            let _ = tx.send(line);
        }
    }
}
