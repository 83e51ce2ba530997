//! The node's configuration: `node.toml` plus command-line overrides, with
//! the built-in defaults that make `toppcloud node run --dev` work with no
//! file at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// A bare site name ("blog") becomes "blog.<domain>".
    pub domain: String,
    pub http: HttpConfig,
    pub apache: ApacheConfig,
    pub build: BuildConfig,
    pub ssh: SshConfig,
    /// Per-site settings, keyed by site name.
    pub sites: BTreeMap<String, SiteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Port 0 picks a free port; the bound address is written to `node.ready`.
    pub listen: SocketAddr,
    /// OpenSSH format; default `<data_dir>/authorized_keys`.
    pub authorized_keys: Option<PathBuf>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            authorized_keys: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// The branch whose pushes deploy; default: the repository's HEAD
    /// (`main`, or `master` for a repository that pushed only that).
    pub branch: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Port 0 picks a free port; the bound address is written to `node.ready`.
    pub listen: SocketAddr,
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
    /// mod_wsgi daemon slots in the pool; each site takes three (live,
    /// previous, spare). The pool grows by itself, at the cost of a graceful
    /// restart, when a new site finds it full.
    pub slots: usize,
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
    pub keep_releases: usize,
    /// The interpreter mod_wsgi embeds; every venv is built on it.
    pub python: PathBuf,
    pub uv: PathBuf,
    /// uv's download cache; on the data dir's filesystem so uv can hardlink.
    pub uv_cache_dir: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("/var/lib/toppcloud"),
            domain: "localhost".into(),
            http: HttpConfig::default(),
            apache: ApacheConfig::default(),
            build: BuildConfig::default(),
            ssh: SshConfig::default(),
            sites: BTreeMap::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8022)),
        }
    }
}

impl Default for ApacheConfig {
    fn default() -> Self {
        ApacheConfig {
            mode: ApacheMode::Private,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            slots: 12,
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
            python: "/usr/bin/python3".into(),
            uv: "uv".into(),
            uv_cache_dir: None,
        }
    }
}

/// Where `--dev` keeps its data when no `--data-dir` is given.
pub fn dev_data_dir() -> Result<PathBuf> {
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
    pub fn site_branch(&self, site: &str) -> Option<&str> {
        self.sites.get(site).and_then(|s| s.branch.as_deref())
    }

    pub fn from_file(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let cfg: NodeConfig =
            toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(cfg)
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
        if cfg.apache.slots < 3 {
            bail!("[apache] slots must be at least 3 (one site takes three)");
        }
        Ok(cfg)
    }
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
        assert_eq!(cfg.domain, "example.com");
        assert_eq!(cfg.apache.mode, ApacheMode::System);
        assert_eq!(cfg.build.keep_releases, 5);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<NodeConfig>("domian = \"x\"").unwrap_err();
        assert!(err.to_string().contains("domian"), "{err}");
    }
}
