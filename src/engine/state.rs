//! What the node knows about one site, persisted in `sites/<site>/site.toml`:
//! which releases are live and previous (and the pool slot of each), and the
//! record of every release still on disk. Written atomically at each switch,
//! before the route map, so a crash between the two is repaired at start.

use std::collections::BTreeMap;
use std::path::Path;

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

    /// The hosts this site answers and the slot behind each: `host` -> live,
    /// `prev.host` -> previous, `N.host` -> the newest of those two whose
    /// app.ini says version N. A disabled site's hosts all answer the
    /// maintenance page.
    pub fn routes(&self, site: &SiteName) -> Routes {
        let to = |p: &Placed| {
            if self.disabled {
                Route::Disabled
            } else {
                Route::Slot(p.slot)
            }
        };
        let mut r = Routes::new();
        if let Some(live) = &self.live {
            r.insert(site.as_str().to_string(), to(live));
        }
        if let Some(prev) = &self.prev {
            r.insert(site.prev_host(), to(prev));
        }
        for (v, p) in self.versions() {
            r.insert(site.version_host(v), to(p));
        }
        r
    }

    /// What each `N.host` serves: of the live and previous releases, the
    /// newest whose app.ini says version N.
    pub fn versions(&self) -> BTreeMap<u32, &Placed> {
        let mut by_version: BTreeMap<u32, &Placed> = BTreeMap::new();
        for p in [&self.prev, &self.live].into_iter().flatten() {
            if let Some(v) = self.version_of(p.release) {
                let newer = by_version.get(&v).is_none_or(|q| q.release < p.release);
                if newer {
                    by_version.insert(v, p);
                }
            }
        }
        by_version
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
        };
        assert_eq!(st.routes(&site)["1.blog.localhost"].to_string(), "s001");
    }

    #[test]
    fn state_round_trips_through_toml() {
        let st = SiteState {
            next_release: 2,
            live: placed(1, 0),
            prev: None,
            releases: vec![rec(1, None)],
            disabled: true,
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
