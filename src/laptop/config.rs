//! The laptop side's configuration: named nodes and a default one, in
//! `~/.config/toppcloud/config.toml`, and how to reach a node (its ssh URL,
//! the key to use, the ssh command). `--node` and `TOPPCLOUD_NODE` name a
//! configured node or give a URL directly. `[devel]` holds what
//! `toppcloud serve` needs from the laptop: the database it gives apps that
//! ask for PostgreSQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_node: Option<String>,
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devel: Option<DevelConfig>,
}

/// `[devel]`: the laptop's side of the services `toppcloud serve` gives.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevelConfig {
    /// `postgresql://USER:PASSWORD@HOST:PORT/DBNAME`: the database an app
    /// asking for `service.postgresql` (or `service.postgis`) gets under
    /// `serve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// `ssh://USER@HOST:PORT`; the port defaults to 2222, the node's.
    pub url: String,
    /// The private key to use; default: the user's usual ssh keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The ssh command (a program and its options, split on spaces);
    /// default "ssh".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
}

/// A node as the commands use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub key: Option<PathBuf>,
    pub ssh: Vec<String>,
}

impl Node {
    pub fn parse_url(url: &str) -> Result<Node> {
        let rest = url.strip_prefix("ssh://").unwrap_or(url);
        let rest = rest.trim_end_matches('/');
        let (user, hostport) = match rest.split_once('@') {
            Some((u, h)) => (u.to_string(), h),
            None => ("toppcloud".to_string(), rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("invalid port {p:?} in node URL {url:?}"))?,
            ),
            None => (hostport, 2222),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !valid(host) || !valid(&user) {
            bail!("invalid node URL {url:?}: expected ssh://USER@HOST:PORT");
        }
        Ok(Node {
            user,
            host: host.to_string(),
            port,
            key: None,
            ssh: vec!["ssh".into()],
        })
    }

    pub fn url(&self) -> String {
        format!("ssh://{}@{}:{}", self.user, self.host, self.port)
    }

    /// The ssh command line rsync runs (`-e`), port and key included.
    pub fn ssh_command(&self) -> String {
        shell_words::join(self.ssh_argv())
    }

    /// The ssh program and its options, port and key included (the
    /// destination and the remote command not yet).
    pub fn ssh_argv(&self) -> Vec<String> {
        let mut parts = self.ssh.clone();
        parts.push("-p".into());
        parts.push(self.port.to_string());
        if let Some(k) = &self.key {
            parts.push("-i".into());
            parts.push(k.display().to_string());
            parts.push("-o".into());
            parts.push("IdentitiesOnly=yes".into());
        }
        parts
    }
}

pub fn config_path() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("toppcloud/config.toml"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config/toppcloud/config.toml")),
        None => bail!("cannot find the config directory: HOME is not set"),
    }
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let text = toml::to_string(self).context("cannot write the config")?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The node a command talks to: `--node`, else TOPPCLOUD_NODE, else
    /// the default node. Each may be a configured name or a URL.
    pub fn node(&self, flag: Option<&str>) -> Result<Node> {
        let env = std::env::var("TOPPCLOUD_NODE")
            .ok()
            .filter(|s| !s.is_empty());
        let Some(choice) = flag
            .map(str::to_string)
            .or(env)
            .or(self.default_node.clone())
        else {
            bail!(
                "no node configured\nhint: toppcloud default-node ssh://toppcloud@NODE:2222 (or pass --node)"
            );
        };
        match self.nodes.get(&choice) {
            Some(entry) => {
                let mut node = Node::parse_url(&entry.url)?;
                node.key = entry.key.clone();
                if let Some(ssh) = &entry.ssh {
                    node.ssh = shell_words::split(ssh)
                        .with_context(|| format!("invalid ssh command {ssh:?}"))?;
                }
                Ok(node)
            }
            None if choice.contains("://") || choice.contains('@') || choice.contains(':') => {
                Node::parse_url(&choice)
            }
            None => bail!(
                "no node named {choice:?} in {}\nhint: toppcloud default-node ssh://toppcloud@{choice}:2222",
                config_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }
}

/// `toppcloud default-node`: records a node (a URL, named by `name` or its
/// host) or picks a configured one, and makes it the default.
pub fn set_default(target: &str, name: Option<&str>) -> Result<String> {
    let path = config_path()?;
    let mut cfg = ClientConfig::load(&path)?;
    let chosen = if cfg.nodes.contains_key(target) && name.is_none() {
        target.to_string()
    } else {
        let node = Node::parse_url(target)?;
        let n = name
            .map(str::to_string)
            .unwrap_or_else(|| node.host.clone());
        let entry = cfg.nodes.entry(n.clone()).or_insert(NodeEntry {
            url: String::new(),
            key: None,
            ssh: None,
        });
        entry.url = node.url();
        n
    };
    cfg.default_node = Some(chosen.clone());
    cfg.save(&path)?;
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults() {
        let n = Node::parse_url("ssh://deploy@node.example.com:2200").unwrap();
        assert_eq!(
            (n.user.as_str(), n.host.as_str(), n.port),
            ("deploy", "node.example.com", 2200)
        );
        let n = Node::parse_url("node.example.com").unwrap();
        assert_eq!((n.user.as_str(), n.port), ("toppcloud", 2222));
        assert!(Node::parse_url("ssh://-oProxyCommand=x@h").is_err());
        assert!(Node::parse_url("ssh://u@h:notaport").is_err());
    }

    #[test]
    fn the_devel_section_is_kept_when_the_config_is_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        std::fs::write(
            &path,
            "default_node = \"dev\"\n[devel]\npostgresql = \"postgresql://me:pw@localhost/blog\"\n",
        )
        .unwrap();
        let cfg = ClientConfig::load(&path).unwrap();
        cfg.save(&path).unwrap();
        let again = ClientConfig::load(&path).unwrap();
        assert_eq!(
            again.devel.and_then(|d| d.postgresql).as_deref(),
            Some("postgresql://me:pw@localhost/blog")
        );
        std::fs::write(&path, "[devel]\nmysql = \"x\"\n").unwrap();
        assert!(ClientConfig::load(&path).is_err());
        // Without the section, none is written.
        ClientConfig::default().save(&path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("devel"));
    }

    #[test]
    fn ssh_command_quotes_its_parts() {
        let mut n = Node::parse_url("ssh://u@h:2201").unwrap();
        n.key = Some("/home/me/my keys/id".into());
        assert_eq!(
            n.ssh_command(),
            "ssh -p 2201 -i '/home/me/my keys/id' -o 'IdentitiesOnly=yes'"
        );
    }
}
