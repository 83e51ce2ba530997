//! A site's life besides its deploys: `disable` (every host answers the
//! node's 503 maintenance page, releases and daemons kept), `enable` (the
//! routes back) and `destroy` (routes, daemons, releases, venvs, state and
//! repository gone; the site's files and secrets kept unless asked, its
//! database kept). Each runs in the site's turn, with a record of its own.

use std::path::Path;

use anyhow::Context;

use super::queue::Outcome;
use super::{DeployError, Engine, Failed, Record, release};
use crate::apache;
use crate::names::SiteName;
use crate::progress::Progress;

/// The site's directory entry that `destroy` keeps unless asked (and a
/// restart never removes): the files its app wrote (`service.files`).
pub const FILES_DIR: &str = "files";

impl Engine {
    /// `toppcloud disable` (`disabled` true) and `toppcloud enable`.
    pub async fn set_disabled(
        &self,
        site: &SiteName,
        disabled: bool,
        by: &str,
        progress: &Progress,
    ) -> Result<String, Failed> {
        let verb = if disabled { "disable" } else { "enable" };
        let record = self.open_op(site, format!("{verb} by {by}"));
        let progress = record.progress(progress, &self.deploys);
        let _turn = self.turn(site, &progress).await;
        self.deploys.started(&record.id, release::now_rfc3339());
        let result = self.switch_disabled(site, disabled, &progress);
        if let Ok(m) = &result {
            tracing::info!(site = %site, by, "{m}");
        }
        self.close_op(&record, result)
    }

    fn switch_disabled(
        &self,
        site: &SiteName,
        disabled: bool,
        progress: &Progress,
    ) -> Result<String, DeployError> {
        let mut st = self.state();
        let Some(s) = st.sites.get_mut(site) else {
            return Err(DeployError::Source(anyhow::anyhow!(
                "site {site} not found: it has no live release"
            )));
        };
        if s.disabled == disabled {
            return Ok(if disabled {
                format!("{site} is already disabled: its hosts answer the maintenance page")
            } else {
                format!("{site} is already enabled: nothing to do")
            });
        }
        let before = s.clone();
        s.disabled = disabled;
        let live = s.live.as_ref().map(|p| p.release);
        if let Err(e) = s.save(&self.layout.site_state(site)) {
            *s = before;
            return Err(DeployError::Node(
                e.context("cannot record the change; nothing was switched"),
            ));
        }
        // State first, then the map (start() rebuilds the map from the
        // state, so a crash in between heals).
        if let Err(e) = apache::routes::write(&self.layout.routes_map(), &st.routes()) {
            return Err(DeployError::Node(e));
        }
        let url = self.url(site.as_str());
        Ok(if disabled {
            progress.say(format!(
                "-----> {site}: every host answers the maintenance page (503)"
            ));
            format!(
                "{site} is disabled: {url} answers 503 (maintenance); its releases are kept; `toppcloud enable {site}` serves them again"
            )
        } else {
            let release = live.map(|r| format!(" (release {r})")).unwrap_or_default();
            progress.say(format!("-----> {site}: routes restored"));
            format!("{site} is enabled: live at {url}{release}")
        })
    }

    /// Whether the site is disabled (a deploy to it stays behind the
    /// maintenance page).
    pub fn is_disabled(&self, site: &SiteName) -> bool {
        self.state().sites.get(site).is_some_and(|s| s.disabled)
    }

    /// Tells a deployer that what it made live is behind the maintenance
    /// page.
    pub(super) fn say_if_disabled(&self, site: &SiteName, progress: &Progress) {
        if self.is_disabled(site) {
            progress.say(format!(
                "-----> {site} is disabled: the release is live but its hosts answer the maintenance page until `toppcloud enable {site}`"
            ));
        }
    }

    /// `toppcloud destroy SITE --yes [--data]`: its routes go first (the map
    /// written before anything is removed), then its daemons, releases,
    /// venvs, state, uploads and repository. Its files directory and its
    /// secrets stay unless `data`; its database always stays. Its cell
    /// stays its own, so a later deploy of the same name reuses it.
    pub async fn destroy(
        &self,
        site: &SiteName,
        data: bool,
        by: &str,
        progress: &Progress,
    ) -> Result<String, Failed> {
        let what = if data { "destroy --data" } else { "destroy" };
        let record = self.open_op(site, format!("{what} by {by}"));
        let progress = record.progress(progress, &self.deploys);
        let _turn = self.turn(site, &progress).await;
        self.deploys.started(&record.id, release::now_rfc3339());
        let result = self.destroy_now(site, data, &progress).await;
        if let Ok(m) = &result {
            tracing::info!(site = %site, by, "{m}");
        }
        self.close_op(&record, result)
    }

    async fn destroy_now(
        &self,
        site: &SiteName,
        data: bool,
        progress: &Progress,
    ) -> Result<String, DeployError> {
        let node = DeployError::Node;
        let site_dir = self.layout.site_dir(site);
        let repo = self.layout.repo(site);
        let known = self.state().sites.contains_key(site);
        if !known && !site_dir.exists() && !repo.exists() {
            return Err(DeployError::Source(anyhow::anyhow!(
                "site {site} not found: nothing to destroy"
            )));
        }
        // Routes first: from here on no host reaches the site.
        let removed = {
            let mut st = self.state();
            let removed = st.sites.remove(site);
            if let Err(e) = apache::routes::write(&self.layout.routes_map(), &st.routes()) {
                if let Some(s) = removed {
                    st.sites.insert(site.clone(), s);
                }
                return Err(node(
                    e.context("cannot write the route map; nothing was removed"),
                ));
            }
            removed
        };
        progress.say(format!("-----> {site}: routes removed"));
        // Without its state the site is not brought back by a restart.
        match std::fs::remove_file(self.layout.site_state(site)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(node(anyhow::Error::new(e).context(format!(
                    "cannot remove {}",
                    self.layout.site_state(site).display()
                ))));
            }
        }
        if let Some(s) = &removed {
            let on_demand = s.on_demand.iter().map(|o| &o.placed);
            let held: Vec<_> = [&s.live, &s.prev]
                .into_iter()
                .flatten()
                .chain(on_demand)
                .map(|p| p.slot)
                .collect();
            self.retire_all(site, held).await;
            progress.say(format!("-----> {site}: daemons retired"));
        }
        let keep_files = !data;
        let dir = site_dir.clone();
        tokio::task::spawn_blocking(move || remove_site_dir(&dir, keep_files))
            .await
            .context("removing the site's files was interrupted")
            .and_then(|r| r)
            .map_err(node)?;
        progress.say(format!(
            "-----> {site}: releases, environments and state removed"
        ));
        if repo.exists() {
            std::fs::remove_dir_all(&repo)
                .with_context(|| format!("cannot remove {}", repo.display()))
                .map_err(node)?;
            progress.say(format!("-----> {site}: repository removed"));
        }
        let mut kept = Vec::new();
        if data {
            self.settings.forget(site).map_err(node)?;
            progress.say(format!(
                "-----> {site}: files directory, config vars and secret removed"
            ));
        } else {
            if site_dir.join(FILES_DIR).exists() {
                kept.push("its files directory");
            }
            kept.push("its config vars and secret");
        }
        if self
            .layout
            .secrets_dir()
            .join(format!("{site}.postgresql"))
            .exists()
        {
            kept.push("its database (drop it by hand if it is no longer wanted)");
        }
        let kept = if kept.is_empty() {
            String::new()
        } else {
            format!("; kept: {}", kept.join(", "))
        };
        Ok(format!("{site} is destroyed{kept}"))
    }

    fn open_op(&self, site: &SiteName, origin: String) -> Record {
        Record {
            id: self.deploys.open(site, origin, release::now_rfc3339()),
            own: true,
        }
    }

    /// Records how an operation that makes no release live ended.
    fn close_op(
        &self,
        record: &Record,
        result: Result<String, DeployError>,
    ) -> Result<String, Failed> {
        if let Err(e) = &result
            && e.is_node_fault()
        {
            tracing::error!(deploy = %record.id, "operation failed on the node: {e}");
        }
        let outcome = match &result {
            Ok(m) => Outcome::Done(m.clone()),
            Err(e) => Outcome::Failed(e.public_message()),
        };
        if let Some(d) = self.deploys.get(&record.id) {
            self.deploys
                .finish(&d.site, &record.id, outcome, release::now_rfc3339());
        }
        result.map_err(|error| Failed {
            deploy: record.id.clone(),
            error,
        })
    }
}

/// Removes a site's directory, all but its files directory when
/// `keep_files` (then the directory itself stays, holding only that).
pub fn remove_site_dir(dir: &Path, keep_files: bool) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut kept = false;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        if keep_files && e.file_name() == FILES_DIR {
            kept = true;
            continue;
        }
        let path = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    if !kept {
        std::fs::remove_dir(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_site_dir_keeps_its_files_when_asked() {
        let d = tempfile::tempdir().unwrap();
        let site = d.path().join("blog.localhost");
        for p in ["releases/1/app", "venvs/abc", "files/uploads", "tmp/1"] {
            std::fs::create_dir_all(site.join(p)).unwrap();
        }
        std::fs::write(site.join("site.toml"), "next_release = 2").unwrap();
        std::fs::write(site.join("files/uploads/a.txt"), "kept").unwrap();
        remove_site_dir(&site, true).unwrap();
        let left: Vec<String> = std::fs::read_dir(&site)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["files"]);
        assert_eq!(
            std::fs::read_to_string(site.join("files/uploads/a.txt")).unwrap(),
            "kept"
        );
        remove_site_dir(&site, false).unwrap();
        assert!(!site.exists());
        remove_site_dir(&site, false).unwrap();
    }
}
