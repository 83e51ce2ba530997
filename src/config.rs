//! The node's configuration: `node.toml` plus command-line overrides, with
//! the built-in defaults that make `toppcloud node run --dev` work with no
//! file at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::names::{Domain, HostName, SiteName};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// A bare site name ("blog") becomes "blog.<domain>".
    pub domain: Domain,
    pub http: HttpConfig,
    pub apache: ApacheConfig,
    pub build: BuildConfig,
    pub ssh: SshConfig,
    /// What sites may ask for besides serving: `[services.postgresql]`.
    pub services: ServicesConfig,
    /// Certificates from an ACME CA through Apache's mod_md: `[https]`.
    pub https: HttpsConfig,
    /// Per-site settings as written (`[sites.blog]`, `[sites."blog.example.com"]`).
    #[serde(rename = "sites")]
    site_settings: BTreeMap<String, SiteConfig>,
    /// The same, by full site name (read once from `site_settings`).
    #[serde(skip)]
    pub sites: BTreeMap<SiteName, SiteConfig>,
    /// Seconds a stopping node waits for the deploys in flight before it
    /// abandons them.
    pub stop_timeout: u64,
    /// The file this config was read from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Port 0 picks a free port; the bound address is written to `node.ready`.
    pub listen: SocketAddr,
    /// OpenSSH format; default `<data_dir>/authorized_keys`.
    pub authorized_keys: Option<PathBuf>,
    /// Seconds a connection has to authenticate before it is closed.
    pub auth_timeout: u64,
    /// Connections not yet authenticated, in all; more are closed at once.
    pub max_unauthenticated: usize,
    /// Connections not yet authenticated from one address (an IPv6 /64);
    /// more are closed at once, so one client cannot use up the total.
    pub max_unauthenticated_per_address: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            authorized_keys: None,
            auth_timeout: 30,
            max_unauthenticated: 64,
            max_unauthenticated_per_address: 16,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// The branch whose pushes deploy; default: the repository's HEAD
    /// (`main`, or `master` for a repository that pushed only that).
    pub branch: Option<String>,
    /// Where webhooks and `POST /sites/{site}/deploy` fetch the branch
    /// from: any URL the git CLI can fetch (https, ssh, file://).
    pub upstream: Option<String>,
    /// The secret the forge signs webhooks with; without one (or with an
    /// empty one) the site accepts no webhook.
    pub webhook_secret: Option<Secret>,
    /// More names the site answers (`www.blog.example.com`); `toppcloud
    /// domains SITE add|remove` changes them on a running node.
    pub aliases: Vec<HostName>,
    /// Aliases answer 301 to the site's own name (the default); false
    /// serves them directly.
    pub redirect_aliases: Option<bool>,
    /// HTTPS answers carry Strict-Transport-Security.
    pub hsts: bool,
}

/// The ACME CA everyone trusts; `[https] ca` replaces it (a test CA, a
/// staging directory).
pub const DEFAULT_ACME_CA: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[https]`: with `enabled`, every site's names get certificates from
/// `ca` through Apache's mod_md, and plain HTTP answers 301 to HTTPS for
/// the names that have one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsConfig {
    pub enabled: bool,
    /// The CA's contact for the account (expiry warnings, revocations).
    pub email: Option<String>,
    /// The ACME directory URL.
    pub ca: String,
    /// The roots the CA's own TLS certificate is checked against (a test
    /// CA's); default: the system's.
    pub ca_root: Option<PathBuf>,
    /// Where the TLS front serves HTTPS. In private mode port 0 picks a
    /// free port.
    pub listen: SocketAddr,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        HttpsConfig {
            enabled: false,
            email: None,
            ca: DEFAULT_ACME_CA.to_string(),
            ca_root: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 443)),
        }
    }
}

impl HttpsConfig {
    /// Refuses what mod_md would refuse later, or worse, pass to a shell
    /// line of Apache's config, naming the key.
    fn check(&self) -> Result<()> {
        if !(self.ca.starts_with("https://") || self.ca.starts_with("http://"))
            || self
                .ca
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
        {
            bail!(
                "[https] ca must be an ACME directory URL (https://...), not {:?}",
                self.ca
            );
        }
        if let Some(email) = &self.email {
            let ok = email.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty()
                    && HostName::parse(host).is_ok()
                    && user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
            });
            if !ok {
                bail!("[https] email {email:?} is not an e-mail address the CA accepts");
            }
        }
        if let Some(root) = &self.ca_root {
            let text = root.display().to_string();
            if root.is_relative() || text.contains('"') || text.chars().any(char::is_control) {
                bail!("[https] ca_root must be an absolute path, not {text:?}");
            }
        }
        if self.enabled && self.email.is_none() {
            bail!(
                "[https] enabled needs email = \"you@example.com\": the CA's contact for certificate notices"
            );
        }
        Ok(())
    }
}

impl SiteConfig {
    /// Aliases answer 301 to the site's own name unless told otherwise.
    pub fn redirects_aliases(&self) -> bool {
        self.redirect_aliases.unwrap_or(true)
    }
    /// The webhook secret, when there is a usable one.
    pub fn secret(&self) -> Option<&Secret> {
        self.webhook_secret.as_ref().filter(|s| !s.is_empty())
    }
}

/// A credential from the config. Its Debug form hides it, so a config
/// printed for diagnosis never leaks it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    pub postgresql: PostgresConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostgresMode {
    /// A cluster of the node's own under `<data_dir>/postgresql`, started
    /// and stopped with the node.
    Private,
    /// Debian's cluster (`main`, port 5432), run by the system; the node
    /// administers it as the `postgres` account.
    System,
}

/// Where the sites' databases live. Without `url`, on a cluster the node
/// administers as the `postgres` account (`mode`); with `url`, on an
/// existing cluster reached as an admin role whose password is in
/// `password_file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `private` (the default) or `system`.
    pub mode: Option<PostgresMode>,
    /// The cluster's port. Private: 0 (the default) picks a free port once
    /// and keeps it; system: Debian's 5432 unless set.
    pub port: Option<u16>,
    /// An existing cluster: `postgresql://ADMIN@HOST[:PORT][/DB][?sslmode=...]`
    /// (no password here). The admin role needs CREATEROLE and CREATEDB
    /// (and to be a superuser for `postgis`, unless the extension is there).
    pub url: Option<String>,
    /// The admin's password, alone in a file only its owner can read.
    pub password_file: Option<PathBuf>,
}

impl PostgresConfig {
    pub fn mode(&self) -> PostgresMode {
        self.mode.unwrap_or(PostgresMode::Private)
    }

    /// Refuses settings that contradict each other, naming the key.
    fn check(&self) -> Result<()> {
        let here = "[services.postgresql]";
        match &self.url {
            Some(url) => {
                crate::engine::services::postgres::AdminUrl::parse(url)
                    .with_context(|| format!("{here} url"))?;
                if self.mode.is_some() || self.port.is_some() {
                    bail!(
                        "{here}: url names an existing cluster; mode and port are for a cluster \
                         the node administers itself, so leave them out"
                    );
                }
                match &self.password_file {
                    None => bail!(
                        "{here}: url needs password_file = \"/path\": a file (mode 600) holding \
                         the admin's password, which never goes in the config"
                    ),
                    Some(p) if p.is_relative() => {
                        bail!("{here}: password_file must be an absolute path")
                    }
                    Some(_) => {}
                }
            }
            None => {
                if self.password_file.is_some() {
                    bail!(
                        "{here}: password_file is the password of the admin role in url, \
                         and url is not set"
                    );
                }
            }
        }
        Ok(())
    }
}

/// The default webhook body limit: GitHub's own cap on a payload.
pub const DEFAULT_MAX_BODY: usize = 25 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Port 0 picks a free port; the bound address is written to `node.ready`.
    pub listen: SocketAddr,
    /// The bearer token of the HTTP API (`Authorization: Bearer ...`).
    /// Without one the API answers 403 (webhooks and /healthz still work).
    pub admin_token: Option<Secret>,
    /// The largest webhook body accepted, in bytes; larger ones get 413.
    pub max_body: usize,
    /// Seconds a client has to send a request's headers (and the longest
    /// an idle keep-alive connection stays open).
    pub header_timeout: u64,
    /// Seconds a client has to send a request's body; slower ones get 408.
    pub body_timeout: u64,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl HttpConfig {
    pub fn admin_token(&self) -> Option<&Secret> {
        self.admin_token.as_ref().filter(|s| !s.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApacheMode {
    /// The node writes its own ServerRoot and runs its own Apache.
    Private,
    /// The node writes into Debian's /etc/apache2 and drives apache2ctl.
    System,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApacheConfig {
    pub mode: ApacheMode,
    /// Where sites are served. In private mode port 0 picks a free port.
    pub listen: SocketAddr,
    /// Cells in the pool when it starts, and the least it grows by. A site
    /// takes a cell for its life; the pool grows by itself (by half its
    /// size, at least `cells`) when a new site finds no free cell, into
    /// another Apache of its own (see `apache::shards`), so no site's
    /// daemon restarts; the sites of a grown part take one more hop
    /// through the first Apache, so a node meant for N sites should still
    /// start with `cells` = N.
    pub cells: usize,
    /// mod_wsgi daemons per cell (at least 3): the site's live and previous
    /// releases and its spares. More spares let back-to-back deploys skip
    /// waiting for Apache to re-fork the daemon the last deploy retired.
    pub cell_size: usize,
    /// On a node run as root, each cell's daemons and builds run as their
    /// own account: this prefix and the cell's number (`tc-c0003`).
    pub account_prefix: String,
    /// Longest request an app may legitimately run, in seconds: a retired
    /// slot gets this long to finish in-flight requests.
    pub request_timeout: u64,
    /// Seconds without a request after which a loaded slot drops back to an
    /// empty interpreter (it reloads on the next request).
    pub idle_timeout: u64,
    pub apache2: PathBuf,
    pub modules_dir: PathBuf,
    /// System mode: Debian's configuration directory and control command.
    pub config_dir: PathBuf,
    pub apachectl: PathBuf,
    pub pid_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildConfig {
    /// Releases kept per site (live and previous are never pruned).
    pub keep_releases: usize,
    /// A deploy refuses to start when the data dir's filesystem has less
    /// free space than this, in MiB: a full disk mid-build helps nobody.
    pub min_free_mb: u64,
    /// The interpreter mod_wsgi embeds; every venv is built on it.
    pub python: PathBuf,
    pub uv: PathBuf,
    /// uv's download cache; on the data dir's filesystem so uv can hardlink.
    pub uv_cache_dir: Option<PathBuf>,
    /// Directories of wheels uv may install from (`uv pip install
    /// --find-links DIR`), besides the index. Absolute paths: a relative one
    /// would be read from the app's directory.
    pub find_links: Vec<PathBuf>,
    /// Never reach a package index (`--no-index`): packages come only from
    /// `find_links` (and what the requirements name by path or URL).
    pub no_index: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("/var/lib/toppcloud"),
            domain: Domain::localhost(),
            http: HttpConfig::default(),
            apache: ApacheConfig::default(),
            build: BuildConfig::default(),
            ssh: SshConfig::default(),
            services: ServicesConfig::default(),
            https: HttpsConfig::default(),
            site_settings: BTreeMap::new(),
            sites: BTreeMap::new(),
            stop_timeout: 30,
            source: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8022)),
            admin_token: None,
            max_body: DEFAULT_MAX_BODY,
            header_timeout: 10,
            body_timeout: 60,
            max_connections: 256,
        }
    }
}

impl Default for ApacheConfig {
    fn default() -> Self {
        ApacheConfig {
            mode: ApacheMode::Private,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cells: 4,
            cell_size: 3,
            account_prefix: "tc-c".into(),
            request_timeout: 60,
            idle_timeout: 600,
            apache2: "/usr/sbin/apache2".into(),
            modules_dir: "/usr/lib/apache2/modules".into(),
            config_dir: "/etc/apache2".into(),
            apachectl: "/usr/sbin/apache2ctl".into(),
            pid_file: "/var/run/apache2/apache2.pid".into(),
        }
    }
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            keep_releases: 5,
            min_free_mb: 64,
            python: "/usr/bin/python3".into(),
            uv: "uv".into(),
            uv_cache_dir: None,
            find_links: Vec::new(),
            no_index: false,
        }
    }
}

/// Whether a node runs on `data_dir`: its ready file names a live process.
pub fn node_running(data_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("node.ready")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v["pid"]
        .as_u64()
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Where `--dev` keeps its data when no `--data-dir` is given: the user's
/// data directory, except for root, whose home is private while Apache
/// serves the apps as www-data.
pub fn dev_data_dir() -> Result<PathBuf> {
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/toppcloud-dev"));
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("toppcloud"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/toppcloud")),
        None => bail!("cannot find a data directory: HOME is not set; pass --data-dir"),
    }
}

impl NodeConfig {
    pub fn authorized_keys(&self) -> PathBuf {
        self.ssh
            .authorized_keys
            .clone()
            .unwrap_or_else(|| self.data_dir.join("authorized_keys"))
    }

    /// The configured deploy branch of a site, if any.
    pub fn site_branch(&self, site: &SiteName) -> Option<&str> {
        self.sites.get(site).and_then(|s| s.branch.as_deref())
    }

    pub fn from_file(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let cfg: NodeConfig =
            toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(cfg)
    }

    /// `resolve`, for a command that talks to a running node (`node keys`,
    /// `node deploy`, ...): with no flag naming one, when no node runs on
    /// the default data dir (and it has no config) but a dev node runs, the
    /// dev node is the one meant, and stderr says so. The README's first
    /// command starts a dev node; its next ones need not repeat `--dev`.
    pub fn resolve_running(
        config: Option<&Path>,
        data_dir: Option<&Path>,
        dev: bool,
    ) -> Result<NodeConfig> {
        if config.is_none() && data_dir.is_none() && !dev {
            let default = NodeConfig::default().data_dir;
            if !default.join("node.toml").is_file()
                && !node_running(&default)
                && let Ok(dev_dir) = dev_data_dir()
                && node_running(&dev_dir)
            {
                eprintln!(
                    "toppcloud: no node runs on {}; using the dev node on {} (--dev, --data-dir or --config choose)",
                    default.display(),
                    dev_dir.display()
                );
                return NodeConfig::resolve(None, Some(&dev_dir), true);
            }
        }
        NodeConfig::resolve(config, data_dir, dev)
    }

    /// Resolves the flags every `node` subcommand shares. Precedence:
    /// `--data-dir` over the file's `data_dir`; a file named by `--config`,
    /// else `<data-dir>/node.toml` when it exists, else built-in defaults.
    pub fn resolve(
        config: Option<&Path>,
        data_dir: Option<&Path>,
        dev: bool,
    ) -> Result<NodeConfig> {
        let mut cfg = match config {
            Some(path) => NodeConfig::from_file(path)?,
            None => {
                let dir = match data_dir {
                    Some(d) => d.to_path_buf(),
                    None if dev => dev_data_dir()?,
                    None => NodeConfig::default().data_dir,
                };
                let file = dir.join("node.toml");
                let mut cfg = if file.is_file() {
                    NodeConfig::from_file(&file)?
                } else {
                    NodeConfig::default()
                };
                cfg.data_dir = dir;
                cfg
            }
        };
        if let Some(d) = data_dir {
            cfg.data_dir = d.to_path_buf();
        }
        if cfg.data_dir.is_relative() {
            cfg.data_dir = std::env::current_dir()
                .context("cannot read the current directory")?
                .join(&cfg.data_dir);
        }
        if cfg.ssh.authorized_keys.is_none() {
            cfg.ssh.authorized_keys = Some(cfg.data_dir.join("authorized_keys"));
        }
        if cfg.apache.cell_size < 3 {
            bail!(
                "[apache] cell_size must be at least 3 (a site's live, previous and spare daemons)"
            );
        }
        if cfg.apache.cells == 0 {
            bail!("[apache] cells must be at least 1");
        }
        crate::accounts::check_prefix(&cfg.apache.account_prefix)
            .context("[apache] account_prefix")?;
        if let Some(dir) = cfg.build.find_links.iter().find(|d| d.is_relative()) {
            bail!(
                "[build] find_links: {} is not an absolute path",
                dir.display()
            );
        }
        cfg.source = config.map(Path::to_path_buf).or_else(|| {
            let file = cfg.data_dir.join("node.toml");
            file.is_file().then_some(file)
        });
        cfg.check_limits()?;
        cfg.services.postgresql.check()?;
        cfg.https.check()?;
        cfg.sites = normalise_sites(std::mem::take(&mut cfg.site_settings), &cfg.domain)?;
        check_names(&cfg.sites)?;
        Ok(cfg)
    }

    /// Whether the config holds a credential (the admin token, a webhook
    /// secret): then its file must be readable by its owner alone.
    pub fn holds_secrets(&self) -> bool {
        self.http.admin_token().is_some() || self.sites.values().any(|s| s.secret().is_some())
    }

    /// Refuses a config file that holds secrets and that other users can
    /// read, saying how to fix it.
    pub fn check_file_mode(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let Some(path) = &self.source else {
            return Ok(());
        };
        if !self.holds_secrets() {
            return Ok(());
        }
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} holds secrets (admin_token, webhook_secret) and other users can read it (mode {:o})\nhint: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
        Ok(())
    }

    /// Limits of 0 would shut every client out (or, for a timeout, cut
    /// every connection at once): refused, with the key that says so.
    fn check_limits(&self) -> Result<()> {
        let positive = [
            ("[ssh] auth_timeout", self.ssh.auth_timeout as usize),
            ("[ssh] max_unauthenticated", self.ssh.max_unauthenticated),
            (
                "[ssh] max_unauthenticated_per_address",
                self.ssh.max_unauthenticated_per_address,
            ),
            ("[http] header_timeout", self.http.header_timeout as usize),
            ("[http] body_timeout", self.http.body_timeout as usize),
            ("[http] max_connections", self.http.max_connections),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        Ok(())
    }

    /// What the node should warn about at start: settings that leave a
    /// door shut the user probably meant open.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (name, site) in &self.sites {
            if site.upstream.is_some() && site.secret().is_none() {
                let what = if site.webhook_secret.is_some() {
                    "an empty webhook_secret"
                } else {
                    "no webhook_secret"
                };
                w.push(format!(
                    "[sites.\"{name}\"] has {what}: it accepts no webhook \
                     (POST /sites/{name}/deploy with the admin token still works)"
                ));
            }
        }
        if self.http.admin_token().is_none() {
            w.push(
                "[http] admin_token is not set: the HTTP API (/sites, /deploys) answers 403 \
                 until it is"
                    .to_string(),
            );
        }
        w
    }
}

/// Re-keys `[sites]` by their full names ("blog" -> "blog.<domain>"), so
/// lookups by a parsed `SiteName` find them, and checks each entry.
fn normalise_sites(
    sites: BTreeMap<String, SiteConfig>,
    domain: &Domain,
) -> Result<BTreeMap<SiteName, SiteConfig>> {
    let mut out = BTreeMap::new();
    for (key, site) in sites {
        let name = SiteName::parse(&key, domain).with_context(|| format!("[sites.\"{key}\"]"))?;
        let here = || format!("[sites.\"{key}\"]");
        if let Some(b) = &site.branch {
            check_branch(b).with_context(here)?;
        }
        if let Some(u) = &site.upstream {
            check_upstream(u).with_context(here)?;
        }
        if site.webhook_secret.is_some() && site.upstream.is_none() {
            bail!(
                "{}: webhook_secret is set but upstream is not; a webhook makes the node \
                 fetch the upstream, so set upstream = \"<git URL>\"",
                here()
            );
        }
        if out.insert(name.clone(), site).is_some() {
            bail!("{}: {name} is configured twice", here());
        }
    }
    Ok(out)
}

/// No name is claimed twice: an alias is no other site's name (nor its
/// `prev.` or `N.` name) and belongs to one site only.
fn check_names(sites: &BTreeMap<SiteName, SiteConfig>) -> Result<()> {
    let mut claimed: BTreeMap<&HostName, &SiteName> = BTreeMap::new();
    for (site, cfg) in sites {
        for alias in &cfg.aliases {
            if let Some(owner) = crate::domains::owner_among(alias, sites.keys()) {
                bail!(
                    "[sites.\"{site}\"] aliases: {alias} is a name of site {owner}{}",
                    if owner == site { " itself" } else { "" }
                );
            }
            if let Some(other) = claimed.insert(alias, site) {
                bail!("[sites.\"{site}\"] aliases: {alias} is already an alias of site {other}");
            }
        }
    }
    Ok(())
}

/// A branch name git accepts, that cannot be mistaken for an option.
fn check_branch(branch: &str) -> Result<()> {
    if branch.starts_with('-') || !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
        bail!("branch {branch:?} is not a valid git branch name");
    }
    Ok(())
}

/// An upstream the git CLI will take as a repository, never as an option
/// or a second argument.
fn check_upstream(url: &str) -> Result<()> {
    if url.trim().is_empty() {
        bail!("upstream is empty");
    }
    if url.starts_with('-') {
        bail!("upstream {url:?} may not start with '-'");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!("upstream {url:?} may not contain spaces or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_keys_parse() {
        let cfg: NodeConfig = toml::from_str(
            r#"
            data_dir = "/var/lib/toppcloud"
            domain = "example.com"
            [http]
            listen = "127.0.0.1:8022"
            [apache]
            mode = "system"
            listen = "127.0.0.1:8080"
            [build]
            keep_releases = 5
            "#,
        )
        .unwrap();
        assert_eq!(cfg.domain.as_str(), "example.com");
        assert_eq!(cfg.apache.mode, ApacheMode::System);
        assert_eq!(cfg.build.keep_releases, 5);
    }

    fn resolved(text: &str) -> Result<NodeConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        NodeConfig::resolve(Some(&path), None, false)
    }

    #[test]
    fn site_keys_become_full_names() {
        let cfg = resolved(
            r#"
            domain = "example.com"
            [sites.blog]
            upstream = "file:///srv/blog.git"
            webhook_secret = "s3cret"
            [sites."Shop.Example.org"]
            branch = "release/1"
            "#,
        )
        .unwrap();
        let keys: Vec<&str> = cfg.sites.keys().map(SiteName::as_str).collect();
        assert_eq!(keys, ["blog.example.com", "shop.example.org"]);
        let name = |n: &str| SiteName::parse_full(n).unwrap();
        assert_eq!(
            cfg.site_branch(&name("shop.example.org")),
            Some("release/1")
        );
        let blog = &cfg.sites[&name("blog.example.com")];
        assert_eq!(blog.secret().map(Secret::expose), Some("s3cret"));
    }

    #[test]
    fn bad_site_settings_fail_with_the_key() {
        let err = resolved("[sites.\"bl og\"]\nbranch = \"main\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("[sites.\"bl og\"]"), "{text}");
        assert!(text.contains("invalid site name"), "{text}");

        let err = resolved("[sites.blog]\nbranch = \"a..b\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("not a valid git branch name"),
            "{err:#}"
        );

        let err = resolved("[sites.blog]\nupstream = \"--upload-pack=x\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("may not start with '-'"),
            "{err:#}"
        );

        let err = resolved("[sites.blog]\nwebhook_secret = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("upstream is not"), "{err:#}");

        let err = resolved("[sites.blog]\n[sites.\"blog.localhost\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("configured twice"), "{err:#}");
    }

    #[test]
    fn missing_secrets_and_token_are_warned_about() {
        let cfg = resolved(
            r#"
            [sites.a]
            upstream = "file:///a"
            [sites.b]
            upstream = "file:///b"
            webhook_secret = ""
            [sites.c]
            upstream = "file:///c"
            webhook_secret = "ok"
            "#,
        )
        .unwrap();
        let w = cfg.warnings().join("\n");
        assert!(
            w.contains("[sites.\"a.localhost\"] has no webhook_secret"),
            "{w}"
        );
        assert!(
            w.contains("[sites.\"b.localhost\"] has an empty webhook_secret"),
            "{w}"
        );
        assert!(!w.contains("c.localhost"), "{w}");
        assert!(w.contains("admin_token is not set"), "{w}");
        assert!(
            cfg.sites[&SiteName::parse_full("b.localhost").unwrap()]
                .secret()
                .is_none()
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let cfg = resolved(
            "[http]\nadmin_token = \"tok-123\"\n[sites.a]\nupstream = \"file:///a\"\nwebhook_secret = \"hush-456\"\n",
        )
        .unwrap();
        let text = format!("{cfg:?}");
        assert!(
            !text.contains("tok-123") && !text.contains("hush-456"),
            "{text}"
        );
        assert_eq!(cfg.http.admin_token().map(Secret::expose), Some("tok-123"));
    }

    #[test]
    fn limits_have_defaults_and_can_be_set() {
        let cfg = resolved("").unwrap();
        assert_eq!(cfg.ssh.auth_timeout, 30);
        assert_eq!(cfg.ssh.max_unauthenticated, 64);
        assert_eq!(cfg.ssh.max_unauthenticated_per_address, 16);
        assert_eq!(cfg.http.header_timeout, 10);
        assert_eq!(cfg.http.body_timeout, 60);
        assert_eq!(cfg.http.max_connections, 256);

        let cfg = resolved(
            r#"
            [ssh]
            auth_timeout = 2
            max_unauthenticated = 8
            max_unauthenticated_per_address = 4
            [http]
            header_timeout = 3
            body_timeout = 5
            max_connections = 7
            "#,
        )
        .unwrap();
        assert_eq!(cfg.ssh.auth_timeout, 2);
        assert_eq!(cfg.ssh.max_unauthenticated, 8);
        assert_eq!(cfg.ssh.max_unauthenticated_per_address, 4);
        assert_eq!(cfg.http.header_timeout, 3);
        assert_eq!(cfg.http.body_timeout, 5);
        assert_eq!(cfg.http.max_connections, 7);
    }

    #[test]
    fn zero_limits_are_refused_with_their_key() {
        for (table, key) in [
            ("ssh", "auth_timeout"),
            ("ssh", "max_unauthenticated"),
            ("ssh", "max_unauthenticated_per_address"),
            ("http", "header_timeout"),
            ("http", "body_timeout"),
            ("http", "max_connections"),
        ] {
            let err = resolved(&format!("[{table}]\n{key} = 0\n")).unwrap_err();
            assert!(
                format!("{err:#}").contains(&format!("[{table}] {key} must be at least 1")),
                "{err:#}"
            );
        }
    }

    #[test]
    fn find_links_and_no_index_are_read_and_default_to_off() {
        let cfg = resolved("").unwrap();
        assert!(cfg.build.find_links.is_empty());
        assert!(!cfg.build.no_index);

        let cfg = resolved(
            r#"
            [build]
            find_links = ["/srv/wheels", "/opt/more wheels"]
            no_index = true
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.build.find_links,
            [
                PathBuf::from("/srv/wheels"),
                PathBuf::from("/opt/more wheels")
            ]
        );
        assert!(cfg.build.no_index);

        let err = resolved("[build]\nfind_links = [\"wheels\"]\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("[build] find_links: wheels is not an absolute path"),
            "{err:#}"
        );
    }

    #[test]
    fn postgresql_defaults_to_a_private_cluster_on_a_free_port() {
        let cfg = resolved("").unwrap();
        let pg = &cfg.services.postgresql;
        assert_eq!(pg.mode(), PostgresMode::Private);
        assert_eq!(pg.port, None);
        assert!(pg.url.is_none() && pg.password_file.is_none());

        let cfg = resolved("[services.postgresql]\nmode = \"system\"\nport = 5433\n").unwrap();
        assert_eq!(cfg.services.postgresql.mode(), PostgresMode::System);
        assert_eq!(cfg.services.postgresql.port, Some(5433));
    }

    #[test]
    fn postgresql_keys_for_an_existing_cluster() {
        let cfg = resolved(
            r#"
            [services.postgresql]
            url = "postgresql://toppcloud@db.example.com:5433/"
            password_file = "/etc/toppcloud/postgresql-password"
            "#,
        )
        .unwrap();
        let pg = &cfg.services.postgresql;
        assert_eq!(
            pg.url.as_deref(),
            Some("postgresql://toppcloud@db.example.com:5433/")
        );
        assert_eq!(
            pg.password_file.as_deref(),
            Some(Path::new("/etc/toppcloud/postgresql-password"))
        );
    }

    #[test]
    fn contradictory_postgresql_keys_are_refused() {
        let cases = [
            (
                "url = \"postgresql://admin@db:5432/\"\n",
                "url needs password_file",
            ),
            (
                "url = \"postgresql://admin@db/\"\npassword_file = \"pw\"\n",
                "password_file must be an absolute path",
            ),
            (
                "url = \"postgresql://admin:hunter2@db/\"\npassword_file = \"/pw\"\n",
                "put it in password_file",
            ),
            (
                "url = \"mysql://admin@db/\"\npassword_file = \"/pw\"\n",
                "postgresql://",
            ),
            (
                "url = \"postgresql://admin@db/\"\npassword_file = \"/pw\"\nport = 5433\n",
                "mode and port are for a cluster",
            ),
            ("password_file = \"/pw\"\n", "url is not set"),
            ("mode = \"elsewhere\"\n", "unknown variant"),
            ("pasword_file = \"/pw\"\n", "pasword_file"),
        ];
        for (body, expected) in cases {
            let err = resolved(&format!("[services.postgresql]\n{body}")).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains(expected), "{body}: {text}");
        }
    }

    #[test]
    fn a_running_node_is_known_by_its_ready_file() {
        let d = tempfile::tempdir().unwrap();
        assert!(!node_running(d.path()), "no ready file");
        std::fs::write(
            d.path().join("node.ready"),
            format!("{{\"pid\": {}}}", std::process::id()),
        )
        .unwrap();
        assert!(node_running(d.path()), "this process is alive");
        // A pid above the kernel's limit is never alive.
        std::fs::write(d.path().join("node.ready"), "{\"pid\": 4294967295}").unwrap();
        assert!(!node_running(d.path()));
        std::fs::write(d.path().join("node.ready"), "garbage").unwrap();
        assert!(!node_running(d.path()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<NodeConfig>("domian = \"x\"").unwrap_err();
        assert!(err.to_string().contains("domian"), "{err}");
    }

    #[test]
    fn https_and_alias_keys_parse_with_defaults() {
        let cfg = resolved("").unwrap();
        assert!(!cfg.https.enabled);
        assert_eq!(cfg.https.ca, DEFAULT_ACME_CA);
        let cfg = resolved(
            r#"
            [https]
            enabled = true
            email = "ops@example.com"
            ca = "https://127.0.0.1:14000/dir"
            ca_root = "/etc/ssl/pebble.pem"
            listen = "127.0.0.1:8443"
            [sites.blog]
            aliases = ["WWW.blog.example.com"]
            redirect_aliases = false
            hsts = true
            [sites.shop]
            "#,
        )
        .unwrap();
        assert!(cfg.https.enabled);
        assert_eq!(cfg.https.listen.port(), 8443);
        let blog = &cfg.sites[&SiteName::parse_full("blog.localhost").unwrap()];
        assert_eq!(blog.aliases[0].as_str(), "www.blog.example.com");
        assert!(!blog.redirects_aliases() && blog.hsts);
        let shop = &cfg.sites[&SiteName::parse_full("shop.localhost").unwrap()];
        assert!(shop.redirects_aliases() && !shop.hsts);
    }
}
