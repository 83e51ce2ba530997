//! A site's own settings, kept by the node and never in its code: its
//! config vars (`toppcloud config SITE set K=V`) and its secret
//! (`CONFIG_SECRET`, made at the first deploy and stable after). Both live
//! in the node's secrets directory, readable by root alone; they reach the
//! app only through its release's environment. Values never go into a log,
//! a deploy record or an answer of the API; names may.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::names::SiteName;

/// Names the node sets itself: a config var may not shadow them.
const RESERVED: &[&str] = &[
    "SITE",
    "CANONICAL_HOST",
    "TOPPCLOUD",
    "TEMP",
    "TMPDIR",
    "HOME",
    "PATH",
];

/// What a `config` command asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set(Vec<(String, String)>),
    Unset(Vec<String>),
}

impl ConfigChange {
    /// The names it touches, for records and logs (never the values).
    pub fn names(&self) -> Vec<&str> {
        match self {
            ConfigChange::Set(pairs) => pairs.iter().map(|(k, _)| k.as_str()).collect(),
            ConfigChange::Unset(names) => names.iter().map(String::as_str).collect(),
        }
    }

    /// Parses `set K=V...` / `unset K...` words (after the site).
    pub fn parse(words: &[String]) -> Result<ConfigChange, String> {
        let (verb, rest) = words
            .split_first()
            .ok_or_else(|| "config: say set K=V... or unset K...".to_string())?;
        if rest.is_empty() {
            return Err(format!("config {verb}: name at least one variable"));
        }
        match verb.as_str() {
            "set" => {
                let mut pairs = Vec::new();
                for w in rest {
                    let (k, v) = w.split_once('=').ok_or_else(|| {
                        format!("config set: {k:?} is not NAME=VALUE", k = shorten(w))
                    })?;
                    check_name(k)?;
                    if v.contains('\0') {
                        return Err(format!("config set: the value of {k} contains a NUL byte"));
                    }
                    pairs.push((k.to_string(), v.to_string()));
                }
                Ok(ConfigChange::Set(pairs))
            }
            "unset" => {
                for k in rest {
                    check_name(k)?;
                }
                Ok(ConfigChange::Unset(rest.to_vec()))
            }
            other => Err(format!(
                "config: {:?} is not a config command (set, unset)",
                shorten(other)
            )),
        }
    }

    /// `vars` with this change applied.
    pub fn apply(&self, vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = vars.clone();
        match self {
            ConfigChange::Set(pairs) => {
                for (k, v) in pairs {
                    out.insert(k.clone(), v.clone());
                }
            }
            ConfigChange::Unset(names) => {
                for k in names {
                    out.remove(k);
                }
            }
        }
        out
    }
}

/// Config vars as `config SITE` shows them: a name a line, or `NAME=VALUE`
/// when the values were asked for.
pub fn listing(vars: &BTreeMap<String, String>, values: bool) -> String {
    vars.iter()
        .map(|(k, v)| {
            if values {
                format!("{k}={v}\n")
            } else {
                format!("{k}\n")
            }
        })
        .collect()
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A config var's name: an environment variable name of the usual shape,
/// not one the node sets itself.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(format!(
            "{:?} is not a config var name (capital letters, digits and _, not starting with a digit)",
            shorten(name)
        ));
    }
    if RESERVED.contains(&name) || name.starts_with("CONFIG_") || name.starts_with("TOPPCLOUD_") {
        return Err(format!(
            "{name} is set by the node itself (SITE, CANONICAL_HOST, TEMP, CONFIG_*, ...)"
        ));
    }
    Ok(())
}

/// Where a site's settings are kept.
pub struct Settings {
    dir: PathBuf,
}

impl Settings {
    pub fn new(secrets_dir: &Path) -> Settings {
        Settings {
            dir: secrets_dir.to_path_buf(),
        }
    }

    fn vars_file(&self, site: &SiteName) -> PathBuf {
        self.dir.join(format!("{site}.config.toml"))
    }

    fn secret_file(&self, site: &SiteName) -> PathBuf {
        self.dir.join(format!("{site}.secret"))
    }

    fn ensure_dir(&self) -> Result<()> {
        crate::dirs::create_dir(&self.dir, 0o700, None)
    }

    /// The site's config vars (none yet: empty).
    pub fn vars(&self, site: &SiteName) -> Result<BTreeMap<String, String>> {
        let path = self.vars_file(site);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("{}: invalid", path.display()))
    }

    pub fn save_vars(&self, site: &SiteName, vars: &BTreeMap<String, String>) -> Result<()> {
        self.ensure_dir()?;
        let text = toml::to_string(vars).context("cannot serialise config vars")?;
        crate::atomic::write_mode(&self.vars_file(site), text.as_bytes(), 0o600)
    }

    /// Removes the site's config vars and secret (`destroy --data`).
    pub fn forget(&self, site: &SiteName) -> Result<()> {
        for path in [self.vars_file(site), self.secret_file(site)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
            }
        }
        Ok(())
    }

    /// The site's secret, made at its first deploy.
    pub fn secret(&self, site: &SiteName) -> Result<String> {
        let path = self.secret_file(site);
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
            Ok(_) => bail!(
                "{} is empty; remove it to make a new secret",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        self.ensure_dir()?;
        let secret = hex::encode(rand::random::<[u8; 32]>());
        crate::atomic::write_mode(&path, secret.as_bytes(), 0o600)?;
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn changes_parse_and_refuse_with_the_reason() {
        assert_eq!(
            ConfigChange::parse(&words("set DEBUG=0 SENTRY_DSN=https://x@y/1")).unwrap(),
            ConfigChange::Set(vec![
                ("DEBUG".into(), "0".into()),
                ("SENTRY_DSN".into(), "https://x@y/1".into())
            ])
        );
        assert_eq!(
            ConfigChange::parse(&words("set EMPTY=")).unwrap(),
            ConfigChange::Set(vec![("EMPTY".into(), String::new())])
        );
        assert_eq!(
            ConfigChange::parse(&words("unset DEBUG")).unwrap(),
            ConfigChange::Unset(vec!["DEBUG".into()])
        );
        for (line, why) in [
            ("set DEBUG", "not NAME=VALUE"),
            ("set debug=1", "not a config var name"),
            ("set 1X=1", "not a config var name"),
            ("set SITE=x", "set by the node"),
            ("set CONFIG_PG_PASSWORD=x", "set by the node"),
            ("unset", "name at least one"),
            ("drop X", "not a config command"),
        ] {
            let e = ConfigChange::parse(&words(line)).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn vars_and_secret_are_kept_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let s = Settings::new(&d.path().join("secrets"));
        let site = SiteName::parse_full("blog.example.com").unwrap();
        assert!(s.vars(&site).unwrap().is_empty());
        let vars = ConfigChange::parse(&words("set A=1 B=two"))
            .unwrap()
            .apply(&BTreeMap::new());
        s.save_vars(&site, &vars).unwrap();
        assert_eq!(s.vars(&site).unwrap(), vars);
        assert_eq!(listing(&vars, false), "A\nB\n");
        assert_eq!(listing(&vars, true), "A=1\nB=two\n");
        let secret = s.secret(&site).unwrap();
        assert_eq!(secret.len(), 64);
        assert_eq!(s.secret(&site).unwrap(), secret, "stable");
        for f in ["blog.example.com.config.toml", "blog.example.com.secret"] {
            let mode = std::fs::metadata(d.path().join("secrets").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
