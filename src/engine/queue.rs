//! The registry of every deploy, whatever door it came through (git push,
//! rsync upload, `node deploy`, webhooks, the API): its id, status, who
//! asked and its log. Deploys of one site run one at a time in the order
//! they asked for the site's turn (the engine's); requests for a site's
//! upstream (webhooks, `POST /sites/{site}/deploy`) also coalesce here, so a
//! burst becomes at most one running and one pending deploy.
//!
//! It lives in memory: the node keeps every queued or running deploy and
//! the last `KEEP_FINISHED` finished ones, each with at most
//! `MAX_LOG_LINES` lines of log. The durable record of every deploy,
//! whatever started it, stays the site's `deploys.jsonl`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::names::SiteName;

/// Finished deploys kept for `GET /deploys/{id}`, node-wide.
pub const KEEP_FINISHED: usize = 200;
/// Lines of build log kept per deploy; later lines are counted, not kept.
pub const MAX_LOG_LINES: usize = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting behind the site's running deploy.
    Queued,
    /// Holding the site's turn: fetching, building, switching.
    Running,
    Live,
    Failed,
    /// An operation that makes no release live (disable, enable, destroy)
    /// finished.
    Done,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deploy {
    pub id: String,
    pub site: SiteName,
    pub status: Status,
    /// What asked for it; a pending deploy collects every request folded in.
    pub requested_by: Vec<String>,
    /// Set when any request asked to deploy even an unchanged head.
    pub force: bool,
    pub queued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The upstream commit it fetched and deployed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<u32>,
    /// The final word: where it is live, or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub log: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub log_lines_dropped: usize,
}

impl Deploy {
    /// A deploy waiting for the site's turn.
    fn queued(id: &str, site: &SiteName, by: String, force: bool, now: String) -> Deploy {
        Deploy {
            id: id.to_string(),
            site: site.clone(),
            status: Status::Queued,
            requested_by: vec![by],
            force,
            queued_at: now,
            started_at: None,
            finished_at: None,
            sha: None,
            release: None,
            message: None,
            log: Vec::new(),
            log_lines_dropped: 0,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The answer to a request for a deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new deploy, and nothing runs for the site: the caller starts it.
    Start(String),
    /// A new deploy, pending behind the running one.
    Pending(String),
    /// Folded into the deploy already pending (which fetches the newest
    /// head when it starts).
    Joined(String),
}

impl Enqueued {
    pub fn id(&self) -> &str {
        match self {
            Enqueued::Start(id) | Enqueued::Pending(id) | Enqueued::Joined(id) => id,
        }
    }
}

/// How a deploy ended.
pub enum Outcome {
    Live {
        release: u32,
        /// The commit, when the tree came from git.
        sha: Option<String>,
        message: String,
    },
    Failed(String),
    /// An operation that makes no release live, with its summary.
    Done(String),
}

#[derive(Default)]
struct SiteQueue {
    running: Option<String>,
    pending: Option<String>,
}

pub struct Registry {
    /// Tells this node run's ids from an earlier run's.
    boot: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    deploys: HashMap<String, Deploy>,
    /// Finished ids, oldest first, for forgetting.
    finished: VecDeque<String>,
    /// Ids per site name, oldest first (only those still remembered).
    by_site: HashMap<SiteName, VecDeque<String>>,
    queues: HashMap<SiteName, SiteQueue>,
}

impl Inner {
    fn insert(&mut self, d: Deploy) {
        self.by_site
            .entry(d.site.clone())
            .or_default()
            .push_back(d.id.clone());
        self.deploys.insert(d.id.clone(), d);
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            boot: hex::encode(rand::random::<[u8; 3]>()),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a deploy of `site`: at most one runs and one waits per
    /// site; a request while one waits joins it.
    pub fn request(&self, site: &SiteName, by: String, force: bool, now: String) -> Enqueued {
        let mut inner = self.inner();
        let inner = &mut *inner;
        let queue = inner.queues.entry(site.clone()).or_default();
        if let Some(id) = queue.pending.clone() {
            if let Some(d) = inner.deploys.get_mut(&id) {
                d.force |= force;
                if d.requested_by.len() < 100 {
                    d.requested_by.push(by);
                }
            }
            return Enqueued::Joined(id);
        }
        inner.next += 1;
        let id = format!("{}-{}", inner.next, self.boot);
        let running = queue.running.is_some();
        if running {
            queue.pending = Some(id.clone());
        } else {
            queue.running = Some(id.clone());
        }
        inner.insert(Deploy::queued(&id, site, by, force, now));
        if running {
            Enqueued::Pending(id)
        } else {
            Enqueued::Start(id)
        }
    }

    /// Records a deploy that does not coalesce (a push, an upload, `node
    /// deploy`): queued until it has the site's turn.
    pub fn open(&self, site: &SiteName, by: String, now: String) -> String {
        let mut inner = self.inner();
        inner.next += 1;
        let id = format!("{}-{}", inner.next, self.boot);
        inner.insert(Deploy::queued(&id, site, by, false, now));
        id
    }

    /// Deploys that have not finished, for a node that is stopping.
    pub fn unfinished(&self) -> Vec<Deploy> {
        let inner = self.inner();
        let mut v: Vec<Deploy> = inner
            .deploys
            .values()
            .filter(|d| matches!(d.status, Status::Queued | Status::Running))
            .map(|d| Deploy {
                log: Vec::new(),
                ..d.clone()
            })
            .collect();
        v.sort_by(|a, b| a.queued_at.cmp(&b.queued_at));
        v
    }

    /// The deploy has the site's turn. Returns whether it was asked to
    /// deploy even an unchanged head, as of now (later joiners cannot
    /// join a running deploy).
    pub fn started(&self, id: &str, now: String) -> bool {
        let mut inner = self.inner();
        match inner.deploys.get_mut(id) {
            Some(d) => {
                d.status = Status::Running;
                d.started_at = Some(now);
                d.force
            }
            None => false,
        }
    }

    pub fn log(&self, id: &str, line: String) {
        let mut inner = self.inner();
        if let Some(d) = inner.deploys.get_mut(id) {
            if d.log.len() < MAX_LOG_LINES {
                d.log.push(line);
            } else {
                d.log_lines_dropped += 1;
            }
        }
    }

    /// Records how the deploy ended and hands the site's queue on: returns
    /// the pending deploy that now runs, if any.
    pub fn finish(
        &self,
        site: &SiteName,
        id: &str,
        outcome: Outcome,
        now: String,
    ) -> Option<String> {
        let mut inner = self.inner();
        let inner = &mut *inner;
        if let Some(d) = inner.deploys.get_mut(id) {
            d.finished_at = Some(now);
            match outcome {
                Outcome::Live {
                    release,
                    sha,
                    message,
                } => {
                    d.status = Status::Live;
                    d.release = Some(release);
                    if sha.is_some() {
                        d.sha = sha;
                    }
                    d.message = Some(message);
                }
                Outcome::Failed(why) => {
                    d.status = Status::Failed;
                    d.message = Some(why);
                }
                Outcome::Done(message) => {
                    d.status = Status::Done;
                    d.message = Some(message);
                }
            }
        }
        inner.finished.push_back(id.to_string());
        while inner.finished.len() > KEEP_FINISHED {
            if let Some(old) = inner.finished.pop_front()
                && let Some(d) = inner.deploys.remove(&old)
                && let Some(ids) = inner.by_site.get_mut(&d.site)
            {
                ids.retain(|i| *i != old);
            }
        }
        let queue = inner.queues.entry(site.clone()).or_default();
        if queue.running.as_deref() == Some(id) {
            queue.running = queue.pending.take();
        }
        queue.running.clone()
    }

    /// Notes the commit a deploy fetched, as soon as it is known.
    pub fn fetched(&self, id: &str, sha: &str) {
        if let Some(d) = self.inner().deploys.get_mut(id) {
            d.sha = Some(sha.to_string());
        }
    }

    pub fn get(&self, id: &str) -> Option<Deploy> {
        self.inner().deploys.get(id).cloned()
    }

    /// The site's deploys, newest first, without their logs.
    pub fn recent(&self, site: &SiteName, n: usize) -> Vec<Deploy> {
        let inner = self.inner();
        let Some(ids) = inner.by_site.get(site) else {
            return Vec::new();
        };
        ids.iter()
            .rev()
            .filter_map(|id| inner.deploys.get(id))
            .take(n)
            .map(|d| Deploy {
                log: Vec::new(),
                log_lines_dropped: 0,
                ..d.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(n: &str) -> SiteName {
        SiteName::parse(n, &crate::names::Domain::localhost()).unwrap()
    }

    fn live() -> Outcome {
        Outcome::Live {
            release: 1,
            sha: Some("a".repeat(40)),
            message: "live".into(),
        }
    }

    #[test]
    fn a_burst_leaves_one_running_and_one_pending() {
        let r = Registry::new();
        let s = site("blog");
        let Enqueued::Start(first) = r.request(&s, "a".into(), false, "t".into()) else {
            panic!("the first starts");
        };
        let Enqueued::Pending(second) = r.request(&s, "b".into(), false, "t".into()) else {
            panic!("the second waits");
        };
        assert_ne!(first, second);
        for by in ["c", "d", "e"] {
            assert_eq!(
                r.request(&s, by.into(), false, "t".into()),
                Enqueued::Joined(second.clone())
            );
        }
        // Another site is not held up.
        assert!(matches!(
            r.request(&site("other"), "x".into(), false, "t".into()),
            Enqueued::Start(_)
        ));
        assert!(!r.started(&first, "t".into()));
        assert_eq!(r.get(&first).unwrap().status, Status::Running);
        assert_eq!(r.get(&second).unwrap().requested_by, ["b", "c", "d", "e"]);
        assert_eq!(r.get(&second).unwrap().status, Status::Queued);
        // The running one ends: the pending one runs, and a new request
        // now waits behind it.
        assert_eq!(
            r.finish(&s, &first, live(), "t".into()),
            Some(second.clone())
        );
        let Enqueued::Pending(third) = r.request(&s, "f".into(), true, "t".into()) else {
            panic!("waits behind the second");
        };
        assert!(!r.started(&second, "t".into()));
        assert_eq!(
            r.finish(&s, &second, Outcome::Failed("no".into()), "t".into()),
            Some(third.clone())
        );
        assert!(r.started(&third, "t".into()), "force is kept");
        assert_eq!(r.finish(&s, &third, live(), "t".into()), None);
        assert!(matches!(
            r.request(&s, "g".into(), false, "t".into()),
            Enqueued::Start(_)
        ));
        let recent: Vec<Status> = r.recent(&s, 10).iter().map(|d| d.status).collect();
        assert_eq!(
            recent,
            [Status::Queued, Status::Live, Status::Failed, Status::Live]
        );
    }

    #[test]
    fn finished_deploys_and_logs_are_bounded() {
        let r = Registry::new();
        let s = site("blog");
        let mut ids = Vec::new();
        for _ in 0..KEEP_FINISHED + 5 {
            let id = r
                .request(&s, "x".into(), false, "t".into())
                .id()
                .to_string();
            r.started(&id, "t".into());
            r.finish(&s, &id, live(), "t".into());
            ids.push(id);
        }
        assert!(r.get(&ids[0]).is_none(), "the oldest are forgotten");
        assert!(r.get(&ids[ids.len() - 1]).is_some());
        assert_eq!(r.recent(&s, usize::MAX).len(), KEEP_FINISHED);

        let id = r
            .request(&s, "x".into(), false, "t".into())
            .id()
            .to_string();
        for i in 0..MAX_LOG_LINES + 3 {
            r.log(&id, format!("line {i}"));
        }
        let d = r.get(&id).unwrap();
        assert_eq!(d.log.len(), MAX_LOG_LINES);
        assert_eq!(d.log_lines_dropped, 3);
    }
}
