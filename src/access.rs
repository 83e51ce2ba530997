//! Who may push where. The node's `authorized_keys` file (OpenSSH format)
//! names each key (its comment) and may limit it to some sites with a
//! `sites="blog.example.com,*.example.org"` option. The file is read at
//! every authentication, so `toppcloud node keys` changes take effect at
//! once. An identity comes only from a key whose signature was verified.

use std::path::Path;

use anyhow::{Context, Result, bail};
use russh::keys::{HashAlg, PublicKey};

use crate::names::SiteName;

/// One line of authorized_keys that the node understands.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub name: String,
    pub key: PublicKey,
    /// None: every site. Patterns are full names or `*.domain`.
    pub sites: Option<Vec<String>>,
}

/// The user behind an authenticated SSH connection.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub fingerprint: String,
    sites: Option<Vec<String>>,
}

impl Identity {
    pub fn may_use(&self, site: &SiteName) -> bool {
        match &self.sites {
            None => true,
            Some(patterns) => patterns.iter().any(|p| site_matches(p, site.as_str())),
        }
    }
}

fn site_matches(pattern: &str, site: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => site
            .strip_suffix(domain)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == site,
    }
}

/// Reads the file; a missing file is an empty list, a line we cannot parse
/// is skipped with a warning (one bad line must not lock everyone out).
pub fn load(path: &Path) -> Result<Vec<AuthorizedKey>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(k) => keys.push(k),
            Err(e) => tracing::warn!("{}:{}: {e:#} (line ignored)", path.display(), i + 1),
        }
    }
    Ok(keys)
}

/// Finds the identity of a key whose ownership was verified.
pub fn identify(path: &Path, key: &PublicKey) -> Option<Identity> {
    let keys = match load(path) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("{e:#}");
            return None;
        }
    };
    keys.into_iter()
        .find(|k| k.key.key_data() == key.key_data())
        .map(|k| Identity {
            name: k.name,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            sites: k.sites,
        })
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-") || word.starts_with("sk-")
}

/// Splits off the options field, honouring double quotes.
fn split_options(line: &str) -> (Option<&str>, &str) {
    let first = line.split_whitespace().next().unwrap_or_default();
    if is_key_type(first) {
        return (None, line);
    }
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (Some(&line[..i]), line[i..].trim_start()),
            _ => {}
        }
    }
    (Some(line), "")
}

pub fn parse_line(line: &str) -> Result<AuthorizedKey> {
    let (options, rest) = split_options(line);
    let key =
        PublicKey::from_openssh(rest).map_err(|e| anyhow::anyhow!("not a public key: {e}"))?;
    let name = key.comment().to_string();
    let mut sites = None;
    if let Some(opts) = options {
        for opt in split_commas(opts) {
            if let Some(v) = opt.strip_prefix("sites=") {
                let v = v.trim_matches('"');
                sites = Some(v.split(',').map(|s| s.trim().to_string()).collect());
            }
        }
    }
    Ok(AuthorizedKey {
        name: if name.is_empty() {
            "unnamed".into()
        } else {
            name
        },
        key,
        sites,
    })
}

fn split_commas(opts: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in opts.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&opts[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&opts[start..]);
    out
}

/// Validates site patterns given on the command line: a site name (bare
/// names get the domain) or `*.domain`.
pub fn parse_patterns(list: &str, domain: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(d) = p.strip_prefix("*.") {
            let d = SiteName::parse(d, domain).map_err(|e| anyhow::anyhow!("--sites {p}: {e}"))?;
            out.push(format!("*.{d}"));
        } else {
            out.push(SiteName::parse(p, domain)?.to_string());
        }
    }
    if out.is_empty() {
        bail!("--sites needs at least one site");
    }
    Ok(out)
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if !ok {
        bail!("invalid key name {name:?}: use letters, digits, '.', '_', '@' and '-'");
    }
    Ok(())
}

/// The line `keys add` writes.
pub fn render_line(name: &str, key: &PublicKey, sites: Option<&[String]>) -> Result<String> {
    let mut key = key.clone();
    key.set_comment(name);
    let text = key.to_openssh().context("cannot encode the key")?;
    Ok(match sites {
        Some(s) => format!("sites=\"{}\" {text}", s.join(",")),
        None => text,
    })
}

/// `toppcloud node keys add`: appends a named key, refusing duplicates.
pub fn add(path: &Path, name: &str, key_text: &str, sites: Option<&[String]>) -> Result<String> {
    validate_name(name)?;
    let text = key_text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .context("no public key in the input")?;
    let key = parse_line(text).map(|k| k.key).map_err(|e| {
        anyhow::anyhow!("{e:#} (expected a line like `ssh-ed25519 AAAA... comment`)")
    })?;
    let existing = load(path)?;
    if existing.iter().any(|k| k.name == name) {
        bail!("a key named {name:?} exists already; remove it first");
    }
    if let Some(k) = existing.iter().find(|k| k.key.key_data() == key.key_data()) {
        bail!("this key is authorized already, as {:?}", k.name);
    }
    let mut out = std::fs::read_to_string(path).unwrap_or_default();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&render_line(name, &key, sites)?);
    out.push('\n');
    write_private(path, &out)?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

/// `toppcloud node keys remove`: drops every line whose key has that name.
pub fn remove(path: &Path, name: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut removed = false;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let named = parse_line(line.trim()).is_ok_and(|k| k.name == name);
            removed |= named;
            !named
        })
        .collect();
    if !removed {
        bail!("no key named {name:?}");
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    write_private(path, &out)
}

/// `toppcloud node keys list`: name, fingerprint, sites.
pub fn list(path: &Path) -> Result<Vec<(String, String, String)>> {
    Ok(load(path)?
        .into_iter()
        .map(|k| {
            let sites = k
                .sites
                .map(|s| s.join(","))
                .unwrap_or_else(|| "all sites".into());
            (
                k.name,
                k.key.fingerprint(HashAlg::Sha256).to_string(),
                sites,
            )
        })
        .collect())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::atomic::write(path, text.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDCO5zfppmYtqu6BYvmPzcAIytcOfewhJksAo6ohm5AL laptop";

    #[test]
    fn parses_plain_and_restricted_lines() {
        let k = parse_line(KEY).unwrap();
        assert_eq!(k.name, "laptop");
        assert!(k.sites.is_none());
        let k = parse_line(&format!(
            "no-pty,sites=\"blog.example.com,*.example.org\" {KEY}"
        ))
        .unwrap();
        assert_eq!(
            k.sites.unwrap(),
            vec!["blog.example.com".to_string(), "*.example.org".to_string()]
        );
    }

    #[test]
    fn patterns_match_sites() {
        assert!(site_matches("blog.example.com", "blog.example.com"));
        assert!(site_matches("*.example.org", "a.example.org"));
        assert!(!site_matches("*.example.org", "example.org"));
        assert!(!site_matches("*.example.org", "aexample.org"));
        assert!(!site_matches("blog.example.com", "blog.example.com.evil"));
    }

    #[test]
    fn cli_patterns_are_validated() {
        assert_eq!(
            parse_patterns("blog,*.example.org", "localhost").unwrap(),
            vec!["blog.localhost", "*.example.org"]
        );
        assert!(parse_patterns("../x", "localhost").is_err());
    }

    #[test]
    fn render_round_trips() {
        let k = parse_line(KEY).unwrap();
        let line = render_line("work", &k.key, Some(&["blog.localhost".into()])).unwrap();
        let back = parse_line(&line).unwrap();
        assert_eq!(back.name, "work");
        assert_eq!(back.sites.unwrap(), vec!["blog.localhost"]);
    }
}
