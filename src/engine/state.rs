//! What the node knows about one site, persisted in `sites/<site>/site.toml`:
//! which releases are live and previous (and the pool slot of each), and the
//! record of every release still on disk. Written atomically at each switch,
//! before the route map, so a crash between the two is repaired at start.
//! Releases loaded into a slot on demand (the first request to their
//! `N.host`) are remembered in memory only: a restart empties those slots.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::apache::Slot;
use crate::apache::routes::{Route, Routes};
use crate::names::{ReleaseId, SiteName};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Placed {
    pub release: ReleaseId,
    pub slot: Slot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub id: ReleaseId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub created: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
}

/// A kept release that a slot holds because a request asked for it (its
/// `N.host`), not because it is live or previous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDemand {
    pub placed: Placed,
    /// When it was loaded: the one loaded longest ago is evicted first.
    pub loaded_at: Instant,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SiteState {
    /// The id the next release gets; ids are never reused.
    pub next_release: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Placed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Placed>,
    #[serde(default)]
    pub releases: Vec<ReleaseRecord>,
    /// `toppcloud disable`: every host of the site answers the node's 503
    /// maintenance page; its releases and daemons stay, so `enable` brings
    /// them back at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Kept releases loaded on demand; never written (a restarted node
    /// starts those slots empty and loads again on the next request).
    #[serde(skip)]
    pub on_demand: Vec<OnDemand>,
}

impl SiteState {
    pub fn load(path: &Path) -> Result<SiteState> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: invalid site state", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).context("cannot serialise site state")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        crate::atomic::write(path, text.as_bytes())
    }

    pub fn record(&self, id: ReleaseId) -> Option<&ReleaseRecord> {
        self.releases.iter().find(|r| r.id == id)
    }

    pub fn version_of(&self, id: ReleaseId) -> Option<u32> {
        self.record(id).and_then(|r| r.version)
    }

    /// Every host the site answers and the release behind it: `host` ->
    /// live, `prev.host` -> previous, `N.host` -> the newest kept release
    /// whose app.ini says version N.
    pub fn hosts(&self, site: &SiteName) -> BTreeMap<String, ReleaseId> {
        let mut h = BTreeMap::new();
        if let Some(live) = &self.live {
            h.insert(site.as_str().to_string(), live.release);
        }
        if let Some(prev) = &self.prev {
            h.insert(site.prev_host(), prev.release);
        }
        for (v, id) in self.versions() {
            h.insert(site.version_host(v), id);
        }
        h
    }

    /// The slot that holds `release`, if one does: live, previous, or
    /// loaded on demand.
    pub fn slot_of(&self, release: ReleaseId) -> Option<Slot> {
        [&self.live, &self.prev]
            .into_iter()
            .flatten()
            .chain(self.on_demand.iter().map(|o| &o.placed))
            .find(|p| p.release == release)
            .map(|p| p.slot)
    }

    /// What answers each host: the slot that holds its release, or `load`
    /// for a kept release no slot holds (the node loads it on the first
    /// request). A disabled site's hosts all answer the maintenance page.
    pub fn routes(&self, site: &SiteName) -> Routes {
        self.hosts(site)
            .into_iter()
            .map(|(host, id)| {
                let route = if self.disabled {
                    Route::Disabled
                } else {
                    self.slot_of(id).map_or(Route::Load, Route::Slot)
                };
                (host, route)
            })
            .collect()
    }

    /// What each `N.host` serves: of the kept releases, the newest whose
    /// app.ini says version N.
    pub fn versions(&self) -> BTreeMap<u32, ReleaseId> {
        let mut by_version: BTreeMap<u32, ReleaseId> = BTreeMap::new();
        for r in &self.releases {
            if let Some(v) = r.version {
                let newer = by_version.get(&v).is_none_or(|id| *id < r.id);
                if newer {
                    by_version.insert(v, r.id);
                }
            }
        }
        by_version
    }

    /// Releases loaded on demand that no host routes to any more (a newer
    /// release of their version, live or previous now, pruned): their slots
    /// go back to the cell. Returns the slots taken from them.
    pub fn drop_unrouted_on_demand(&mut self, site: &SiteName) -> Vec<Slot> {
        let routed: Vec<ReleaseId> = self.hosts(site).into_values().collect();
        let held: Vec<ReleaseId> = [&self.live, &self.prev]
            .into_iter()
            .flatten()
            .map(|p| p.release)
            .collect();
        let mut gone = Vec::new();
        self.on_demand.retain(|o| {
            let keep = routed.contains(&o.placed.release) && !held.contains(&o.placed.release);
            if !keep {
                gone.push(o.placed.slot);
            }
            keep
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u32, version: Option<u32>) -> ReleaseRecord {
        ReleaseRecord {
            id: ReleaseId::new(id),
            version,
            created: String::new(),
            source: String::new(),
            sha: None,
        }
    }

    fn placed(id: u32, slot: usize) -> Option<Placed> {
        Some(Placed {
            release: ReleaseId::new(id),
            slot: Slot::new(slot),
        })
    }

    #[test]
    fn routes_name_host_prev_and_versions() {
        let site = SiteName::parse("blog", &crate::names::Domain::localhost()).unwrap();
        let st = SiteState {
            next_release: 4,
            live: placed(3, 2),
            prev: placed(2, 1),
            releases: vec![rec(1, Some(1)), rec(2, Some(1)), rec(3, Some(2))],
            disabled: false,
            on_demand: Vec::new(),
        };
        let r = st.routes(&site);
        assert_eq!(r["blog.localhost"].to_string(), "s002");
        assert_eq!(r["prev.blog.localhost"].to_string(), "s001");
        assert_eq!(r["2.blog.localhost"].to_string(), "s002");
        assert_eq!(r["1.blog.localhost"].to_string(), "s001");
        let off = SiteState {
            disabled: true,
            ..st
        };
        let r = off.routes(&site);
        assert_eq!(r.len(), 4);
        assert!(r.values().all(|v| *v == Route::Disabled), "{r:?}");
    }

    #[test]
    fn same_version_routes_to_the_newest() {
        let site = SiteName::parse("blog", &crate::names::Domain::localhost()).unwrap();
        let st = SiteState {
            next_release: 3,
            live: placed(2, 1),
            prev: placed(1, 0),
            releases: vec![rec(1, Some(1)), rec(2, Some(1))],
            disabled: false,
            on_demand: Vec::new(),
        };
        assert_eq!(st.routes(&site)["1.blog.localhost"].to_string(), "s001");
    }

    #[test]
    fn a_kept_release_no_slot_holds_routes_to_load() {
        let site = SiteName::parse("blog", &crate::names::Domain::localhost()).unwrap();
        let mut st = SiteState {
            next_release: 5,
            live: placed(4, 1),
            prev: placed(3, 0),
            releases: vec![
                rec(1, Some(1)),
                rec(2, Some(2)),
                rec(3, None),
                rec(4, Some(3)),
            ],
            disabled: false,
            on_demand: Vec::new(),
        };
        let r = st.routes(&site);
        assert_eq!(r["1.blog.localhost"], Route::Load);
        assert_eq!(r["2.blog.localhost"], Route::Load);
        assert_eq!(r["3.blog.localhost"].to_string(), "s001");
        assert_eq!(st.hosts(&site)["1.blog.localhost"], ReleaseId::new(1));

        // Loaded on demand: its slot, until nothing routes to it.
        st.on_demand.push(OnDemand {
            placed: Placed {
                release: ReleaseId::new(1),
                slot: Slot::new(2),
            },
            loaded_at: Instant::now(),
        });
        assert_eq!(st.routes(&site)["1.blog.localhost"].to_string(), "s002");
        assert!(st.drop_unrouted_on_demand(&site).is_empty());
        st.releases.push(rec(5, Some(1)));
        assert_eq!(st.drop_unrouted_on_demand(&site), [Slot::new(2)]);
        assert_eq!(st.routes(&site)["1.blog.localhost"], Route::Load);
    }

    #[test]
    fn state_round_trips_through_toml() {
        let st = SiteState {
            next_release: 2,
            live: placed(1, 0),
            prev: None,
            releases: vec![rec(1, None)],
            disabled: true,
            on_demand: Vec::new(),
        };
        let text = toml::to_string(&st).unwrap();
        let back: SiteState = toml::from_str(&text).unwrap();
        assert!(back.disabled);
        let old: SiteState = toml::from_str("next_release = 1").unwrap();
        assert!(!old.disabled);
        assert_eq!(back.live, st.live);
        assert_eq!(back.releases.len(), 1);
    }
}
