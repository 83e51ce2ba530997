//! What a `git push` asks of the node, decided while git holds the push in
//! its pre-receive hook: the deploy branch is exported from git's quarantine
//! and deployed; other branches and tags are stored, not deployed; deleting
//! the deploy branch and shallow pushes are refused. The hook only relays:
//! the push it speaks for is named by a token the SSH session registered, so
//! the site and the pusher come from the authenticated session, not from
//! anything the hook or the client says.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, SiteTurn};
use crate::layout::Layout;
use crate::names::SiteName;
use crate::progress::Progress;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    /// Parses one line of a pre-receive hook's stdin.
    pub fn parse(line: &str) -> Option<RefUpdate> {
        let mut w = line.split_whitespace();
        let (old, new, name) = (w.next()?, w.next()?, w.next()?);
        let hex = |s: &str| s.len() >= 40 && s.chars().all(|c| c.is_ascii_hexdigit());
        (hex(old) && hex(new)).then(|| RefUpdate {
            old: old.into(),
            new: new.into(),
            name: name.into(),
        })
    }

    fn is_delete(&self) -> bool {
        self.new.chars().all(|c| c == '0')
    }
}

struct Push {
    site: SiteName,
    user: String,
    turn: Arc<SiteTurn>,
}

/// Pushes in flight, by the token their receive-pack carries.
#[derive(Default)]
pub struct Pushes {
    live: Mutex<HashMap<String, Push>>,
}

impl Pushes {
    pub fn register(&self, site: SiteName, user: String, turn: SiteTurn) -> String {
        let token = hex::encode(rand::random::<[u8; 16]>());
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            token.clone(),
            Push {
                site,
                user,
                turn: Arc::new(turn),
            },
        );
        token
    }

    pub fn finish(&self, token: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    fn get(&self, token: &str) -> Option<(SiteName, String, Arc<SiteTurn>)> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .map(|p| (p.site.clone(), p.user.clone(), p.turn.clone()))
    }
}

pub struct PreReceive {
    pub token: String,
    pub updates: Vec<RefUpdate>,
    /// GIT_QUARANTINE_PATH: where the pushed objects wait for the verdict.
    pub quarantine: Option<PathBuf>,
}

/// Decides a push; an error rejects it (git prints the progress lines and
/// then `! [remote rejected] ... (pre-receive hook declined)`).
pub async fn pre_receive(
    engine: &Engine,
    pushes: &Pushes,
    layout: &Layout,
    req: PreReceive,
    progress: &Progress,
) -> Result<()> {
    let Some((site, user, turn)) = pushes.get(&req.token) else {
        bail!("this push is not known to the node");
    };
    let repo = layout.repo(&site);
    let mut branch = engine.deploy_branch(&site);
    // A repository's first push chooses between main and master, unless
    // the config names the branch.
    if engine.site_branch(&site).is_none() && !crate::engine::git::has_branches(&repo)? {
        let pushes_head = req
            .updates
            .iter()
            .any(|u| u.name == format!("refs/heads/{branch}"));
        let master = req.updates.iter().any(|u| u.name == "refs/heads/master");
        if !pushes_head && master {
            crate::engine::git::set_head(&repo, "master")?;
            branch = "master".to_string();
        }
    }
    let deploy_ref = format!("refs/heads/{branch}");
    let mut deploy = None;
    for u in &req.updates {
        if u.name == deploy_ref {
            if u.is_delete() {
                bail!("deleting {branch}, the branch this site deploys from, is refused");
            }
            deploy = Some(u.clone());
        } else if let Some(tag) = u.name.strip_prefix("refs/tags/") {
            progress.say(format!("-----> tag {tag} stored, not deployed"));
        } else {
            let name = u.name.strip_prefix("refs/heads/").unwrap_or(&u.name);
            let verb = if u.is_delete() { "deleted" } else { "stored" };
            progress.say(format!(
                "-----> branch {name} {verb}, not deployed (this site deploys {branch})"
            ));
        }
    }
    let Some(update) = deploy else {
        return Ok(());
    };
    let sha = update.new.clone();
    let quarantine = req.quarantine.clone();
    let shallow = {
        let (repo, q, sha) = (repo.clone(), quarantine.clone(), sha.clone());
        tokio::task::spawn_blocking(move || {
            crate::engine::git::is_shallow(&repo, q.as_deref(), &sha)
        })
        .await??
    };
    if shallow {
        bail!(
            "this push comes from a shallow clone and the node needs the full history\n\
             hint: run `git fetch --unshallow` and push again"
        );
    }
    let short = &sha[..12.min(sha.len())];
    progress.say(format!("-----> {branch} is at {short}, pushed by {user}"));
    let origin = format!("git push by {user}");
    let deployed = engine
        .deploy_commit(
            &turn,
            &repo,
            quarantine.as_deref(),
            &sha,
            origin,
            None,
            progress,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    progress.say(deployed.summary());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn hook_lines_parse() {
        let u = RefUpdate::parse(&format!("{ZERO} {} refs/heads/main", "a".repeat(40))).unwrap();
        assert_eq!(u.name, "refs/heads/main");
        assert!(!u.is_delete());
        let d = RefUpdate::parse(&format!("{} {ZERO} refs/heads/x", "a".repeat(40))).unwrap();
        assert!(d.is_delete());
        assert!(RefUpdate::parse("garbage").is_none());
    }
}
