//! Deploys from a site's upstream (`[sites."NAME"] upstream`), for webhooks
//! and `POST /sites/{site}/deploy`: in the site's turn, `git fetch` the
//! deploy branch into the site's repository, export the fetched head,
//! deploy it through the engine, and move the site's branch to it, so the
//! branch and the live site agree. Nothing from a request reaches git: the
//! URL and branch come from the node's config, and the commit deployed is
//! the one git fetched, never the one a webhook body names.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::NodeConfig;
use crate::engine::Engine;
use crate::engine::queue::{Enqueued, Outcome, Registry};
use crate::engine::release::now_rfc3339;
use crate::layout::Layout;
use crate::names::SiteName;
use crate::progress::Progress;

/// Where the fetched upstream head lands in the site's bare repository:
/// apart from `refs/heads/*`, which only moves once a deploy is live.
pub const UPSTREAM_REF: &str = "refs/toppcloud/upstream";
/// A fetch that has not finished by then is killed and the deploy fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a finished deploy waits for its last log lines.
const LOG_DRAIN: Duration = Duration::from_secs(5);
/// Protocols git may use for an upstream; `ext::` (which runs commands)
/// and anything exotic stay off whatever the git config says.
const ALLOWED_PROTOCOLS: &str = "file:git:http:https:ssh";

pub struct Upstream {
    engine: Arc<Engine>,
    layout: Layout,
    cfg: Arc<NodeConfig>,
    registry: Arc<Registry>,
}

impl Upstream {
    pub fn new(engine: Arc<Engine>, layout: Layout, cfg: Arc<NodeConfig>) -> Arc<Upstream> {
        Arc::new(Upstream {
            registry: engine.deploys().clone(),
            engine,
            layout,
            cfg,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The configured upstream URL of a site.
    pub fn url(&self, site: &SiteName) -> Option<&str> {
        self.cfg.sites.get(site).and_then(|s| s.upstream.as_deref())
    }

    /// The branch a site deploys (the engine's rule, shared with pushes).
    pub fn branch(&self, site: &SiteName) -> String {
        self.engine.deploy_branch(site)
    }

    /// Asks for a deploy of the site's upstream head; see `Registry::request`
    /// for how requests coalesce. `force` deploys even a head already live.
    pub fn request(self: &Arc<Self>, site: &SiteName, by: String, force: bool) -> Enqueued {
        let queued = self.registry.request(site, by, force, now_rfc3339());
        if let Enqueued::Start(id) = &queued {
            tokio::spawn(self.clone().work(site.clone(), id.clone()));
        }
        queued
    }

    /// Runs the site's deploys one after the other until none is pending.
    async fn work(self: Arc<Self>, site: SiteName, first: String) {
        let mut id = first;
        loop {
            let (me, s, i) = (self.clone(), site.clone(), id.clone());
            // In its own task, so a panic fails this deploy, not the queue.
            let outcome = match tokio::spawn(async move { me.run(&s, &i).await }).await {
                Ok(o) => o,
                Err(e) => Outcome::Failed(format!("internal error: {e}")),
            };
            match self.registry.finish(&site, &id, outcome, now_rfc3339()) {
                Some(next) => id = next,
                None => break,
            }
        }
    }

    /// One deploy, its progress captured into the registry as its log.
    async fn run(&self, site: &SiteName, id: &str) -> Outcome {
        let (progress, mut lines) = Progress::channel();
        let registry = self.registry.clone();
        let log_id = id.to_string();
        let drain = tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                registry.log(&log_id, line);
            }
        });
        let result = self.fetch_and_deploy(site, id, &progress).await;
        if let Err(e) = &result {
            progress.say(format!("-----> deploy failed: {e:#}"));
        }
        drop(progress);
        if tokio::time::timeout(LOG_DRAIN, drain).await.is_err() {
            tracing::warn!(site = %site, deploy = id, "build log still open after the deploy ended");
        }
        match result {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(site = %site, deploy = id, "deploy from upstream failed: {e:#}");
                Outcome::Failed(format!("{e:#}"))
            }
        }
    }

    async fn fetch_and_deploy(
        &self,
        site: &SiteName,
        id: &str,
        progress: &Progress,
    ) -> Result<Outcome> {
        let url = self
            .url(site)
            .ok_or_else(|| anyhow!("site {site} has no upstream in the node config"))?
            .to_string();
        let requested = self
            .registry
            .get(id)
            .map(|d| d.requested_by)
            .unwrap_or_default();
        progress.say(format!(
            "-----> deploy {id} of {site}, requested by {}",
            summarise(&requested)
        ));
        let turn = self.engine.turn(site, progress).await;
        let force = self.registry.started(id, now_rfc3339());

        let repo = self.layout.repo(site);
        {
            let repo = repo.clone();
            tokio::task::spawn_blocking(move || crate::engine::git::ensure_repo(&repo))
                .await
                .context("preparing the repository was interrupted")??;
        }
        let branch = self.branch(site);
        progress.say(format!("-----> fetching {branch} from {}", redact(&url)));
        fetch(&repo, &self.layout, &url, &branch).await?;
        let sha = {
            let repo = repo.clone();
            tokio::task::spawn_blocking(move || resolve(&repo, UPSTREAM_REF))
                .await
                .context("reading the fetched head was interrupted")??
        };
        self.registry.fetched(id, &sha);
        let short = &sha[..12.min(sha.len())];
        progress.say(format!("-----> {branch} is at {short} upstream"));

        if !force && let Some((release, url)) = self.live_at(site, &sha) {
            let message =
                format!("{short} is already live at {url} (release {release}); nothing to deploy");
            progress.say(format!("-----> {message}"));
            return Ok(Outcome::Live {
                release,
                sha: Some(sha),
                message,
            });
        }

        let origin = format!("upstream {branch}: {}", summarise(&requested));
        let record = Some(id.to_string());
        let deployed = match self
            .engine
            .deploy_commit(&turn, &repo, None, &sha, origin, record, progress)
            .await
        {
            Ok(d) => d,
            Err(failed) => {
                // The node's own faults stay in its log; the rest is the
                // user's to read.
                let why = failed.error.public_message();
                progress.say(format!("-----> deploy failed: {why}"));
                return Ok(Outcome::Failed(why));
            }
        };

        // The site is live either way; a branch that did not move is a
        // warning in the log, not a failed deploy.
        let moved = {
            let (repo, branch, sha) = (repo.clone(), branch.clone(), sha.clone());
            tokio::task::spawn_blocking(move || set_branch(&repo, &branch, &sha)).await
        };
        match moved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => progress.say(format!(
                "warning: the site's {branch} branch was not moved: {e:#}"
            )),
            Err(e) => progress.say(format!(
                "warning: the site's {branch} branch was not moved: {e}"
            )),
        }
        let message = deployed.summary();
        progress.say(message.clone());
        Ok(Outcome::Live {
            release: deployed.release.get(),
            sha: Some(sha),
            message,
        })
    }

    /// The live release and its URL, when it was made from commit `sha`.
    fn live_at(&self, site: &SiteName, sha: &str) -> Option<(u32, String)> {
        let sites = self.engine.sites();
        let st = sites.get(site)?;
        let live = st.live.as_ref()?;
        let record = st.record(live.release)?;
        (record.sha.as_deref() == Some(sha)).then(|| {
            let url = self.engine.url(site.as_str());
            (live.release.get(), url)
        })
    }
}

/// "github delivery X", or "github delivery X and 3 more".
fn summarise(requested: &[String]) -> String {
    match requested {
        [] => "(nobody)".to_string(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
    }
}

/// Fetches `branch` of `url` into `UPSTREAM_REF` with the git CLI (which
/// knows the node user's credentials, ssh config and proxies), with a
/// scrubbed environment, no tags, no submodules, no hooks and no prompts.
async fn fetch(repo: &Path, layout: &Layout, url: &str, branch: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("--git-dir")
        .arg(repo)
        .args(["-c", "core.hooksPath=/dev/null"])
        .args([
            "fetch",
            "--no-tags",
            "--no-recurse-submodules",
            "--no-write-fetch-head",
            "--",
            url,
        ])
        .arg(format!("+refs/heads/{branch}:{UPSTREAM_REF}"));
    crate::process::clean_env(&mut cmd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS);
    // The node user's HOME holds its ssh keys and git credentials.
    let home = std::env::var_os("HOME").unwrap_or_else(|| layout.root().as_os_str().to_owned());
    cmd.env("HOME", home);
    for var in [
        "SSH_AUTH_SOCK",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let shown = redact(url);
    match tokio::time::timeout(
        FETCH_TIMEOUT,
        crate::process::run_captured(cmd, "git fetch"),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            // git mostly hides passwords in URLs itself; make sure.
            let text = e.to_string().replace(url, &shown);
            bail!("cannot fetch {branch} from {shown}: {text}")
        }
        Err(_) => {
            bail!("fetching {branch} from {shown} took longer than {FETCH_TIMEOUT:?}; gave up")
        }
    }
}

/// The commit a reference points at.
fn resolve(repo: &Path, name: &str) -> Result<String> {
    let r = git2::Repository::open_bare(repo)
        .with_context(|| format!("cannot open {}", repo.display()))?;
    let commit = r
        .find_reference(name)
        .and_then(|r| r.peel_to_commit())
        .with_context(|| format!("{name} does not name a commit"))?;
    Ok(commit.id().to_string())
}

/// Points `refs/heads/<branch>` at the deployed commit.
fn set_branch(repo: &Path, branch: &str, sha: &str) -> Result<()> {
    let r = git2::Repository::open_bare(repo)
        .with_context(|| format!("cannot open {}", repo.display()))?;
    let oid = git2::Oid::from_str(sha)?;
    r.reference(
        &format!("refs/heads/{branch}"),
        oid,
        true,
        "toppcloud: deployed from upstream",
    )
    .with_context(|| format!("cannot move {branch} to {sha}"))?;
    Ok(())
}

/// The URL without its password: "https://user:tok@host/x" becomes
/// "https://user:***@host/x", for logs and API answers.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else if scheme.starts_with("http") {
                // A bare token as the user name ("https://TOKEN@github.com").
                format!("{scheme}://***@{host}{path}")
            } else {
                url.to_string()
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact("https://u:tok@github.com/a/b.git"),
            "https://u:***@github.com/a/b.git"
        );
        assert_eq!(
            redact("https://ghp_x@github.com/a/b.git"),
            "https://***@github.com/a/b.git"
        );
        assert_eq!(
            redact("https://github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(redact("file:///srv/a@b.git"), "file:///srv/a@b.git");
        assert_eq!(redact("git@github.com:a/b.git"), "git@github.com:a/b.git");
        assert_eq!(redact("ssh://git@host/x"), "ssh://git@host/x");
    }

    #[test]
    fn summaries_name_the_first_request() {
        assert_eq!(summarise(&["a".into()]), "a");
        assert_eq!(
            summarise(&["a".into(), "b".into(), "c".into()]),
            "a and 2 more"
        );
    }
}
