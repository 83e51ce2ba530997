//! The names a site answers besides its own: its aliases, whether they
//! redirect, and whether its HTTPS answers carry HSTS.
//!
//! `[sites."NAME"] aliases` in node.toml is where aliases start; `toppcloud
//! domains SITE add|remove NAME` changes them on a running node. Those
//! changes are kept by the node in `<data_dir>/domains.toml`, as names added
//! and removed over the config's list, rather than by rewriting node.toml:
//! that file is the operator's (comments, secrets, often managed by a
//! configuration tool, mode 600), and the node never writes it. A name
//! added with `domains` and later put into node.toml stays; one removed
//! with `domains` stays removed until it is added again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::SiteConfig;
use crate::names::{HostName, SiteName};

/// The site among `sites` whose own names (host, `prev.host`, `N.host`)
/// include `name`, if any.
pub fn owner_among<'a>(
    name: &HostName,
    sites: impl IntoIterator<Item = &'a SiteName>,
) -> Option<&'a SiteName> {
    let n = name.as_str();
    sites.into_iter().find(|site| {
        let s = site.as_str();
        if n == s {
            return true;
        }
        n.strip_suffix(s)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| {
                label == "prev" || (!label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
            })
    })
}

/// What `domains` changed, per site.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Changes {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    added: BTreeSet<HostName>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    removed: BTreeSet<HostName>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ChangesFile {
    #[serde(default)]
    sites: BTreeMap<SiteName, Changes>,
}

/// Every site's extra names: node.toml's, with `domains`' changes over them.
#[derive(Debug, Clone)]
pub struct Domains {
    config: BTreeMap<SiteName, SiteConfig>,
    changes: ChangesFile,
    path: PathBuf,
}

impl Domains {
    /// node.toml's sites and the changes kept in `path`.
    pub fn load(config: &BTreeMap<SiteName, SiteConfig>, path: PathBuf) -> Result<Domains> {
        let changes = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{}: invalid domains file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ChangesFile::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Domains {
            config: config.clone(),
            changes,
            path,
        })
    }

    /// The site's aliases, in order.
    pub fn aliases(&self, site: &SiteName) -> Vec<HostName> {
        let mut out: BTreeSet<HostName> = self
            .config
            .get(site)
            .map(|c| c.aliases.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(ch) = self.changes.sites.get(site) {
            out.extend(ch.added.iter().cloned());
            out.retain(|n| !ch.removed.contains(n));
        }
        out.into_iter().collect()
    }

    /// Every site with an alias, and its aliases.
    pub fn all(&self) -> BTreeMap<SiteName, Vec<HostName>> {
        self.config
            .keys()
            .chain(self.changes.sites.keys())
            .map(|s| (s.clone(), self.aliases(s)))
            .filter(|(_, a)| !a.is_empty())
            .collect()
    }

    pub fn redirects(&self, site: &SiteName) -> bool {
        self.config
            .get(site)
            .is_none_or(SiteConfig::redirects_aliases)
    }

    pub fn hsts(&self, site: &SiteName) -> bool {
        self.config.get(site).is_some_and(|c| c.hsts)
    }

    /// Which site already answers `name`, among `sites` and every alias.
    pub fn owner<'a>(
        &self,
        name: &HostName,
        sites: impl IntoIterator<Item = &'a SiteName> + Clone,
    ) -> Option<(SiteName, bool)> {
        if let Some(s) = owner_among(name, sites.clone()) {
            return Some((s.clone(), false));
        }
        let all = self.all();
        all.into_iter()
            .find(|(_, aliases)| aliases.contains(name))
            .map(|(s, _)| (s, true))
    }

    /// Adds `name` to `site`, refusing a name another site (or this one)
    /// answers already. False: it was there.
    pub fn add<'a>(
        &mut self,
        site: &SiteName,
        name: &HostName,
        sites: impl IntoIterator<Item = &'a SiteName> + Clone,
    ) -> Result<bool> {
        match self.owner(name, sites) {
            Some((owner, true)) if &owner == site => return Ok(false),
            Some((owner, true)) => {
                bail!("{name} is already an alias of site {owner}; remove it there first")
            }
            Some((owner, false)) if &owner == site => {
                bail!("{name} is already a name of site {site} itself")
            }
            Some((owner, false)) => bail!("{name} is a name of site {owner}"),
            None => {}
        }
        let ch = self.changes.sites.entry(site.clone()).or_default();
        ch.removed.remove(name);
        ch.added.insert(name.clone());
        self.save()?;
        Ok(true)
    }

    /// Removes alias `name` of `site`; an error names what the site has.
    pub fn remove(&mut self, site: &SiteName, name: &HostName) -> Result<()> {
        let have = self.aliases(site);
        if !have.contains(name) {
            let list: Vec<&str> = have.iter().map(HostName::as_str).collect();
            bail!(
                "{name} is not an alias of {site} (its aliases: {})",
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                }
            );
        }
        let ch = self.changes.sites.entry(site.clone()).or_default();
        ch.added.remove(name);
        if self
            .config
            .get(site)
            .is_some_and(|c| c.aliases.contains(name))
        {
            ch.removed.insert(name.clone());
        }
        self.save()
    }

    /// Forgets a destroyed site's changes.
    pub fn forget(&mut self, site: &SiteName) -> Result<()> {
        if self.changes.sites.remove(site).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let text = toml::to_string(&self.changes).context("cannot serialise domains")?;
        crate::atomic::write(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> SiteName {
        SiteName::parse_full(s).unwrap()
    }
    fn host(s: &str) -> HostName {
        HostName::parse(s).unwrap()
    }

    #[test]
    fn a_sites_own_names_belong_to_it() {
        let sites = [site("blog.example.com"), site("shop.example.com")];
        for (n, owner) in [
            ("blog.example.com", Some("blog.example.com")),
            ("prev.blog.example.com", Some("blog.example.com")),
            ("12.shop.example.com", Some("shop.example.com")),
            ("www.blog.example.com", None),
            ("xblog.example.com", None),
        ] {
            assert_eq!(
                owner_among(&host(n), &sites).map(SiteName::as_str),
                owner,
                "{n}"
            );
        }
    }

    #[test]
    fn changes_add_and_remove_over_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let blog = site("blog.example.com");
        let shop = site("shop.example.com");
        let mut cfg = BTreeMap::new();
        cfg.insert(
            blog.clone(),
            SiteConfig {
                aliases: vec![host("www.blog.example.com")],
                ..Default::default()
            },
        );
        let path = dir.path().join("domains.toml");
        let mut d = Domains::load(&cfg, path.clone()).unwrap();
        let sites = [blog.clone(), shop.clone()];
        assert!(d.add(&blog, &host("blog.example.org"), &sites).unwrap());
        let e = d.add(&shop, &host("blog.example.org"), &sites).unwrap_err();
        assert!(
            e.to_string()
                .contains("already an alias of site blog.example.com"),
            "{e}"
        );
        let e = d
            .add(&blog, &host("prev.shop.example.com"), &sites)
            .unwrap_err();
        assert!(
            e.to_string().contains("is a name of site shop.example.com"),
            "{e}"
        );
        d.remove(&blog, &host("www.blog.example.com")).unwrap();
        let again = Domains::load(&cfg, path).unwrap();
        assert_eq!(again.aliases(&blog), [host("blog.example.org")]);
        let e = d.remove(&shop, &host("x.example.com")).unwrap_err();
        assert!(e.to_string().contains("its aliases: none"), "{e}");
    }
}
