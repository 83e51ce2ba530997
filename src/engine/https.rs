//! Several names per site and HTTPS: aliases in the route map, the names
//! mod_md gets certificates for, `toppcloud domains`, and the one watcher
//! that batches the graceful restarts mod_md needs.
//!
//! Which names get a certificate: a site's own name, `prev.` of it and its
//! aliases, once the site has been deployed. Not the `N.host` names: they
//! come and go with app.ini's version, and each change would cost a
//! certificate order and a graceful restart of every site during a deploy,
//! which the slot pool exists to avoid; they stay on plain HTTP (the node's
//! own checks use them there).
//!
//! Restarts: mod_md reads its domains only at a (graceful) restart, and
//! puts a new certificate in use only at the next one. mod_md runs in the
//! TLS front (`apache::front`), the only Apache restarted for
//! certificates: the sites' Apache, whose mod_wsgi daemons a restart would
//! stop, learns which names redirect to HTTPS from `https.map`, which
//! mod_rewrite re-reads when it changes. The watcher checks
//! four times a second while a name waits for its certificate (every 30 s
//! when every name has one) whether the names changed or mod_md holds a
//! finished certificate not yet in use; it waits a moment for more names
//! (a deploy and a `domains add` together), or for the certificates still
//! being obtained, and restarts Apache once for all of them; a certificate
//! is restarted for at most once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Engine;
use super::state::SiteState;
use crate::apache::front::Front;
use crate::apache::md;
use crate::apache::routes::Route;
use crate::domains::Domains;
use crate::names::{HostName, SiteName};

/// How long the watcher waits for more work once it has some: a site
/// given three names at once gets one restart.
const BATCH: Duration = Duration::from_millis(500);

/// The route of each alias of a deployed site: its live slot, a 301 to the
/// site's name, or the maintenance page.
pub fn alias_routes(site: &SiteName, st: &SiteState, domains: &Domains) -> Vec<(String, Route)> {
    let Some(live) = &st.live else {
        return Vec::new();
    };
    let route = if st.disabled {
        Route::Disabled
    } else if domains.redirects(site) {
        Route::Redirect(site.clone())
    } else {
        Route::Slot(live.slot)
    };
    domains
        .aliases(site)
        .into_iter()
        .map(|a| (a.as_str().to_string(), route.clone()))
        .collect()
}

/// What the watcher knows between its rounds, and the TLS front.
pub struct Watch {
    inner: Mutex<WatchState>,
    wake: tokio::sync::Notify,
    front: Front,
}

#[derive(Default)]
struct WatchState {
    /// The names the running Apache was given.
    applied: BTreeSet<String>,
    /// Certificates (name, valid from) a restart was made for.
    restarted_for: BTreeSet<(String, String)>,
    /// The last error logged per name, so each is logged once.
    errors: BTreeMap<String, String>,
    /// Tracks the TLS port chosen for a private Apache told port 0.
    tls_listen: Option<std::net::SocketAddr>,
    /// Since when a certificate waits for its restart (the restart waits
    /// for the names still being obtained, up to `MAX_WAIT`).
    owed_since: Option<std::time::Instant>,
}

/// How often the watcher looks while a name waits for its certificate.
const BUSY_TICK: Duration = Duration::from_millis(250);

/// The longest a finished certificate waits for others still being
/// obtained before a restart puts it in use alone.
const MAX_WAIT: Duration = Duration::from_secs(20);

impl Watch {
    pub fn new(cfg: &crate::config::ApacheConfig, layout: crate::layout::Layout) -> Watch {
        Watch {
            inner: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            front: Front::new(cfg, layout),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut WatchState) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Engine {
    pub fn https_enabled(&self) -> bool {
        self.cfg.https.enabled
    }

    /// Every name that gets a certificate, with its site's HSTS setting.
    fn certified_names(&self) -> BTreeMap<String, bool> {
        let st = self.state();
        let mut names = BTreeMap::new();
        for (site, s) in &st.sites {
            if s.live.is_none() {
                continue;
            }
            let hsts = st.domains.hsts(site);
            names.insert(site.as_str().to_string(), hsts);
            names.insert(site.prev_host(), hsts);
            for a in st.domains.aliases(site) {
                names.entry(a.as_str().to_string()).or_insert(hsts);
            }
        }
        names
    }

    /// HTTPS as Apache's next (re)start should write it; None when off.
    pub(super) fn https_plan(&self) -> Result<Option<md::Plan>> {
        if !self.cfg.https.enabled {
            return Ok(None);
        }
        let want = self.cfg.https.listen;
        let listen = match (want.port(), self.cfg.apache.mode) {
            (0, crate::config::ApacheMode::Private) => {
                let chosen = self.https.with(|w| w.tls_listen);
                match chosen {
                    Some(a) => a,
                    None => {
                        let l =
                            std::net::TcpListener::bind(std::net::SocketAddr::new(want.ip(), 0))?;
                        let a = l.local_addr()?;
                        self.https.with(|w| w.tls_listen = Some(a));
                        a
                    }
                }
            }
            _ => want,
        };
        let names = self.certified_names();
        let store = self.layout.md_store();
        let certified = names
            .keys()
            .filter(|n| md::has_certificate(&store, n))
            .cloned()
            .collect();
        Ok(Some(md::Plan {
            cfg: self.cfg.https.clone(),
            listen,
            names,
            certified,
        }))
    }

    /// `https://host/` once the name's certificate is in use.
    pub(super) fn https_url(&self, host: &str) -> Option<String> {
        if !self.cfg.https.enabled {
            return None;
        }
        if !self.https.front.running() {
            return None;
        }
        let store = self.layout.md_store();
        if !store
            .join("domains")
            .join(host)
            .join("pubcert.pem")
            .is_file()
        {
            return None;
        }
        let suffix = match self.https_listen()?.port() {
            443 => String::new(),
            p => format!(":{p}"),
        };
        Some(format!("https://{host}{suffix}/"))
    }

    /// Where HTTPS is served, once Apache runs with it.
    pub fn https_listen(&self) -> Option<std::net::SocketAddr> {
        self.https
            .with(|w| w.tls_listen)
            .or_else(|| self.cfg.https.enabled.then_some(self.cfg.https.listen))
    }

    /// Gives Apache the current plan before a (re)start, and remembers
    /// which names it was given.
    pub(super) fn prepare_https(&self) -> Result<()> {
        let plan = self.https_plan()?;
        if let Some(p) = &plan {
            let names = p.names.keys().cloned().collect();
            self.https.with(|w| w.applied = names);
        }
        self.apache.set_https(plan);
        Ok(())
    }

    /// Starts the TLS front with the current names and certificates, or
    /// restarts it gracefully; then plain HTTP redirects the names it
    /// serves with a certificate. A front that fails leaves every name on
    /// HTTP, the error in the log and in `domains`.
    pub(super) async fn apply_front(&self) -> Result<()> {
        let Some(plan) = self.https_plan()? else {
            return Ok(());
        };
        let names = plan.names.keys().cloned().collect();
        self.https.with(|w| w.applied = names);
        let r = self
            .https
            .front
            .apply(&plan, self.apache.backend_addr(), self.apache.front_token())
            .await;
        let certified = if r.is_ok() {
            plan.certified.clone()
        } else {
            BTreeSet::new()
        };
        crate::atomic::write_mode(
            &self.layout.https_map(),
            md::render_map(&certified).as_bytes(),
            0o644,
        )?;
        r.context("the TLS front did not start: every name stays on HTTP")
    }

    /// Stops the TLS front (the node stops).
    pub(super) async fn stop_front(&self) {
        if let Err(e) = self.https.front.stop().await {
            tracing::warn!("stopping the TLS front: {e:#}");
        }
    }

    /// One graceful restart of the TLS front with the current names and
    /// certificates.
    async fn restart_for_https(&self) -> Result<()> {
        self.apply_front().await
    }

    /// Wakes the watcher: the names may have changed.
    pub fn https_changed(&self) {
        self.https.wake.notify_one();
    }

    /// The watcher (see the module's comment); runs for the node's life.
    pub async fn watch_certificates(self: Arc<Self>) {
        if !self.cfg.https.enabled {
            return;
        }
        let mut idle_rounds = 0u32;
        loop {
            let tick = if idle_rounds == 0 {
                BUSY_TICK
            } else {
                Duration::from_secs(1)
            };
            let _ = tokio::time::timeout(tick, self.https.wake.notified()).await;
            match self.https_round(idle_rounds == 0).await {
                Ok(busy) => idle_rounds = if busy { 0 } else { (idle_rounds + 1) % 30 },
                Err(e) => {
                    tracing::error!("https: {e:#}");
                    idle_rounds = 0;
                }
            }
        }
    }

    /// One round: restarts if needed; true while some name has no
    /// certificate in use yet (the watcher keeps looking often).
    async fn https_round(&self, ask_md: bool) -> Result<bool> {
        let names: BTreeSet<String> = self.certified_names().into_keys().collect();
        let store = self.layout.md_store();
        // A name the CA refused is retried by mod_md on its own schedule;
        // the watcher looks at it with the rest, every 30 s.
        let failing = self.https.with(|w| w.errors.clone());
        let pending = names.iter().any(|n| {
            !failing.contains_key(n) && !store.join("domains").join(n).join("pubcert.pem").is_file()
        });
        let renamed = self.https.with(|w| w.applied != names);
        let mut restart = renamed;
        if pending || ask_md || restart || self.https.with(|w| w.owed_since.is_some()) {
            match self.https.front.md_status().await {
                Ok(status) => {
                    // mod_md obtains one name after another, and a restart
                    // starts its work over: so the restart that puts a
                    // certificate in use waits for the names still in
                    // progress (not those failing), up to MAX_WAIT.
                    let mut in_progress = false;
                    for d in &status.domains {
                        self.note_error(d);
                        if d.waiting_for_restart() {
                            let key = (
                                d.name.clone(),
                                d.renewal
                                    .as_ref()
                                    .and_then(|j| j.valid_from.clone())
                                    .unwrap_or_default(),
                            );
                            if self.https.with(|w| w.restarted_for.insert(key)) {
                                tracing::info!(name = %d.name, "https: certificate obtained");
                                self.https.with(|w| {
                                    w.owed_since.get_or_insert_with(std::time::Instant::now);
                                });
                            }
                        } else if d.expires().is_none()
                            && d.error().is_none()
                            && !failing.contains_key(&d.name)
                        {
                            in_progress = true;
                        }
                    }
                    let owed = self.https.with(|w| w.owed_since);
                    if owed.is_some_and(|t| !in_progress || t.elapsed() > MAX_WAIT) {
                        restart = true;
                    }
                }
                Err(e) => tracing::debug!("https: no status from mod_md: {e:#}"),
            }
        }
        if restart {
            self.https.with(|w| w.owed_since = None);
            if renamed {
                tokio::time::sleep(BATCH).await;
            }
            let started = std::time::Instant::now();
            self.restart_for_https().await?;
            tracing::info!(
                "https: the TLS front restarted gracefully for new names or certificates in {:?}",
                started.elapsed()
            );
        }
        Ok(pending || restart)
    }

    /// Logs a name's ACME error once (until it changes).
    fn note_error(&self, d: &md::DomainStatus) {
        let Some(e) = d.error() else {
            // A restart clears mod_md's record of a failed try: the error
            // is kept (and shown by `domains`) until the name has a
            // certificate.
            if d.expires().is_some() {
                self.https.with(|w| w.errors.remove(&d.name));
            }
            return;
        };
        let new = self
            .https
            .with(|w| w.errors.insert(d.name.clone(), e.clone()) != Some(e.clone()));
        if new {
            tracing::warn!(name = %d.name, "https: no certificate: {e}; the name is served over HTTP meanwhile");
        }
    }

    /// A new site may not take a name another site has as an alias.
    pub(super) fn check_not_an_alias(&self, site: &SiteName) -> Result<()> {
        let st = self.state();
        if st.sites.get(site).is_some_and(|s| s.live.is_some()) {
            return Ok(());
        }
        let Ok(name) = HostName::parse(site.as_str()) else {
            return Ok(());
        };
        if let Some((owner, true)) = st.domains.owner(&name, std::iter::empty()) {
            bail!(
                "{site} is an alias of site {owner}: nothing was deployed\nhint: toppcloud domains {owner} remove {site}"
            );
        }
        Ok(())
    }

    fn known_site(&self, site: &SiteName) -> Result<()> {
        if self.state().sites.contains_key(site) || self.cfg.sites.contains_key(site) {
            return Ok(());
        }
        bail!("site {site} not found: deploy it first")
    }

    /// `domains SITE add NAME`.
    pub async fn add_domain(&self, site: &SiteName, name: &HostName) -> Result<String> {
        self.known_site(site)?;
        let added = {
            let mut st = self.state();
            let mut sites: Vec<SiteName> = st.sites.keys().cloned().collect();
            sites.extend(self.cfg.sites.keys().cloned());
            let added = st.domains.add(site, name, &sites)?;
            crate::apache::routes::write(&self.layout.routes_map(), &st.routes())?;
            added
        };
        self.https_changed();
        let mut text = if added {
            format!("{name} added to {site}")
        } else {
            format!("{name} is already an alias of {site}")
        };
        if self.cfg.https.enabled {
            text.push_str("; its certificate is being obtained (`toppcloud domains` shows it)");
        }
        Ok(text)
    }

    /// `domains SITE remove NAME`.
    pub async fn remove_domain(&self, site: &SiteName, name: &HostName) -> Result<String> {
        self.known_site(site)?;
        {
            let mut st = self.state();
            st.domains.remove(site, name)?;
            crate::apache::routes::write(&self.layout.routes_map(), &st.routes())?;
        }
        self.https_changed();
        Ok(format!("{name} removed from {site}"))
    }

    /// `domains SITE`: each name, what it serves, and its certificate.
    pub async fn domains_report(&self, site: &SiteName) -> Result<String> {
        self.known_site(site)?;
        let (aliases, redirects, versions, deployed) = {
            let st = self.state();
            let s = st.sites.get(site);
            (
                st.domains.aliases(site),
                st.domains.redirects(site),
                s.map(|s| s.versions().keys().copied().collect::<Vec<_>>())
                    .unwrap_or_default(),
                s.is_some_and(|s| s.live.is_some()),
            )
        };
        let status = if self.cfg.https.enabled {
            self.https.front.md_status().await.ok()
        } else {
            None
        };
        let store = self.layout.md_store();
        // Apache's words come on several lines; a listing row holds one.
        let front_error = self.https.front.error().map(|e| {
            e.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        });
        let cert = |name: &str| -> String {
            if !self.cfg.https.enabled {
                return "HTTP only (HTTPS is off on this node)".to_string();
            }
            if !deployed {
                return "no certificate until the site is deployed".to_string();
            }
            if let Some(e) = &front_error {
                return format!("HTTP only: the TLS front does not run: {e}");
            }
            let s = status
                .as_ref()
                .and_then(|s| s.domains.iter().find(|d| d.name == name));
            let in_use = store
                .join("domains")
                .join(name)
                .join("pubcert.pem")
                .is_file();
            let last_error = self.https.with(|w| w.errors.get(name).cloned());
            md::describe(s, in_use, last_error)
        };
        let mut rows: Vec<(String, String, String)> = Vec::new();
        rows.push((site.to_string(), "site".into(), cert(site.as_str())));
        rows.push((
            site.prev_host(),
            "previous release".into(),
            cert(&site.prev_host()),
        ));
        for a in &aliases {
            let what = if redirects {
                format!("alias, 301 to {site}")
            } else {
                "alias".to_string()
            };
            rows.push((a.to_string(), what, cert(a.as_str())));
        }
        for v in versions {
            rows.push((
                site.version_host(v),
                format!("version {v}"),
                "HTTP only (versioned names get no certificate)".to_string(),
            ));
        }
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let what_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (n, what, c) in rows {
            out.push_str(&format!("{n:width$}  {what:what_width$}  {c}\n"));
        }
        Ok(out)
    }
}
