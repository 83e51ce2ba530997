//! Kept releases started on demand: every `N.host` of a kept release that
//! no slot holds routes to `load`, Apache hands its requests to the node,
//! and the node loads the release into a slot of the site's cell here:
//! in the site's turn (a load never races a deploy of the same site, and
//! concurrent first requests share one load: those that waited find it
//! loaded), checked as a deploy checks a release, then routed. A free spare
//! is taken first; with none, the slot loaded on demand longest ago is
//! evicted (its host goes back to `load`). Live, previous and slots claimed
//! by a deploy in flight are never taken.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::Instrument;

use super::state::{OnDemand, Placed};
use super::{Engine, NodeState};
use crate::apache::{self, Slot};
use crate::names::{ReleaseId, SiteName};
use crate::progress::Progress;

/// How long a failed load is remembered: requests that queued behind it
/// are answered at once rather than each trying again.
const FAILED_LOAD_MEMORY: Duration = Duration::from_secs(10);

/// Loads that failed recently, by site and release, with why.
#[derive(Default)]
pub struct Loads {
    failed: Mutex<HashMap<(SiteName, ReleaseId), (Instant, String)>>,
}

impl Loads {
    fn failed_recently(&self, site: &SiteName, id: ReleaseId) -> Option<String> {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|_, (at, _)| at.elapsed() < FAILED_LOAD_MEMORY);
        f.get(&(site.clone(), id)).map(|(_, why)| why.clone())
    }

    fn remember_failure(&self, site: &SiteName, id: ReleaseId, why: String) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        f.insert((site.clone(), id), (Instant::now(), why));
    }
}

/// Why a host's release could not be served; `public` is what the client
/// reads (the node's log has the rest).
#[derive(Debug, thiserror::Error)]
#[error("{public}")]
pub struct LoadError {
    pub public: String,
}

impl NodeState {
    /// Slots holding a release: live, previous or loaded on demand.
    pub(super) fn held_slots(&self) -> std::collections::HashSet<Slot> {
        let mut held = self.live_slots();
        held.extend(
            self.sites
                .values()
                .flat_map(|s| s.on_demand.iter().map(|o| o.placed.slot)),
        );
        held
    }
}

/// `Host` as a site host name: no port, lower case, no final dot.
pub fn host_name(host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Engine {
    /// The site and kept release `host` (a `Host` header) names, if any.
    pub fn host_target(&self, host: &str) -> Option<(SiteName, ReleaseId)> {
        let name = host_name(host);
        let st = self.state();
        st.sites
            .iter()
            .find_map(|(site, s)| s.hosts(site).get(&name).map(|id| (site.clone(), *id)))
    }

    /// Makes sure a slot holds the release `host` names, loading it if
    /// none does; Ok when there is nothing to load (an unknown host: Apache
    /// answers it as it answers any other).
    /// The release `host` names, if no slot holds it yet; its last failure
    /// when it failed to load moments ago.
    fn still_to_load(&self, host: &str) -> Result<Option<(SiteName, ReleaseId)>, LoadError> {
        let Some((site, id)) = self.host_target(host) else {
            return Ok(None);
        };
        if self.is_held(&site, id) {
            return Ok(None);
        }
        if let Some(why) = self.on_demand.failed_recently(&site, id) {
            return Err(LoadError { public: why });
        }
        Ok(Some((site, id)))
    }

    pub async fn load_on_demand(&self, host: &str) -> Result<(), LoadError> {
        let Some((site, _)) = self.still_to_load(host)? else {
            return Ok(());
        };
        let progress = Progress::silent();
        let _turn = self.turn(&site, &progress).await;
        // What the host names may have changed while this waited (a deploy,
        // a prune, the load that the requests before this one shared).
        let Some((site, id)) = self.still_to_load(host)? else {
            return Ok(());
        };
        let span = tracing::info_span!("load", site = %site, release = %id);
        let started = Instant::now();
        match self.load_kept(&site, id, &progress).instrument(span).await {
            Ok(slot) => {
                tracing::info!(
                    site = %site,
                    release = %id,
                    "loaded release {id} into slot {slot} on demand for {} in {:.2}s",
                    host_name(host),
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(site = %site, release = %id, "cannot load release {id} on demand: {e:#}");
                let public = format!(
                    "release {id} of {site} could not be started (the node's log says why); try again shortly"
                );
                self.on_demand.remember_failure(&site, id, public.clone());
                Err(LoadError { public })
            }
        }
    }

    fn is_held(&self, site: &SiteName, id: ReleaseId) -> bool {
        self.state()
            .sites
            .get(site)
            .is_some_and(|s| s.slot_of(id).is_some())
    }

    /// Loads kept release `id` into a slot of the site's cell and routes
    /// its hosts there; for a caller holding the site's turn.
    async fn load_kept(
        &self,
        site: &SiteName,
        id: ReleaseId,
        progress: &Progress,
    ) -> anyhow::Result<Slot> {
        let dir = self.layout.release_dir(site, id);
        if !dir.is_dir() {
            anyhow::bail!("{} is missing", dir.display());
        }
        let slot = self
            .ready_kept(site, id, None, progress)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let routed = (|| {
            let mut st = self.state();
            let s = st
                .sites
                .get_mut(site)
                .context("the site went away during the load")?;
            s.on_demand.push(OnDemand {
                placed: Placed { release: id, slot },
                loaded_at: Instant::now(),
            });
            st.pool.release(slot);
            apache::routes::write(&self.layout.routes_map(), &st.routes())
        })();
        if let Err(e) = routed {
            {
                let mut st = self.state();
                if let Some(s) = st.sites.get_mut(site) {
                    s.on_demand.retain(|o| o.placed.slot != slot);
                }
            }
            self.give_back(site, slot).await;
            return Err(e);
        }
        Ok(slot)
    }

    /// Takes the site's on-demand slot loaded longest ago out of service
    /// (its hosts route to `load` again) and claims it; None when the site
    /// has none. Its daemon still holds the release: the caller retires it.
    pub(super) fn evict_on_demand(&self, st: &mut NodeState, site: &SiteName) -> Option<Slot> {
        let s = st.sites.get_mut(site)?;
        let (i, oldest) = s
            .on_demand
            .iter()
            .enumerate()
            .min_by_key(|(_, o)| o.loaded_at)?;
        let slot = oldest.placed.slot;
        let release = oldest.placed.release;
        let taken = s.on_demand.remove(i);
        if let Err(e) = apache::routes::write(&self.layout.routes_map(), &st.routes()) {
            // The map would still send its host to the slot: it must keep
            // the release it holds, so nothing is evicted.
            tracing::warn!(site = %site, "cannot evict release {release} from slot {slot}: {e:#}");
            if let Some(s) = st.sites.get_mut(site) {
                s.on_demand.push(taken);
            }
            return None;
        }
        st.pool.hold(slot);
        tracing::info!(site = %site, release = %release, "evicted release {release} (loaded on demand) from slot {slot}");
        Some(slot)
    }

    /// Retires slots whose on-demand releases no longer route anywhere.
    pub(super) async fn retire_all(&self, site: &SiteName, slots: impl IntoIterator<Item = Slot>) {
        for slot in slots {
            if let Err(e) = self.apache.retire(slot).await {
                tracing::warn!(site = %site, "retiring slot {slot}: {e:#}");
            }
        }
    }

    /// Retires a slot that was loaded for a release that will not serve,
    /// and hands it back to the cell: a daemon still holding something is
    /// replaced before the next deploy's wait_empty gives it out.
    pub(super) async fn give_back(&self, site: &SiteName, slot: Slot) {
        self.retire_all(site, [slot]).await;
        self.state().pool.release(slot);
    }

    /// Takes release `id` out of the site's on-demand slots when one holds
    /// it, claimed for the caller (activate makes it live directly).
    pub(super) fn take_on_demand(&self, site: &SiteName, id: ReleaseId) -> Option<Slot> {
        let mut st = self.state();
        let s = st.sites.get_mut(site)?;
        let i = s.on_demand.iter().position(|o| o.placed.release == id)?;
        let slot = s.on_demand.remove(i).placed.slot;
        st.pool.hold(slot);
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_port_case_and_final_dot() {
        assert_eq!(host_name("1.Blog.localhost:8080"), "1.blog.localhost");
        assert_eq!(host_name("1.blog.localhost."), "1.blog.localhost");
        assert_eq!(host_name("blog.localhost"), "blog.localhost");
    }
}
