//! A release: an immutable directory holding the app's files (`app/`), its
//! environment (`venv`, a link to one of its site's venvs) and `release.toml`, which
//! the WSGI shim reads to become the release and which records where it came
//! from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::app_ini::{RunnerSpec, excluded};
use crate::names::SiteName;

/// Copies the tree at `src` into `dest` (which must not exist), leaving out
/// VCS directories and editor leftovers, without following any link (the
/// source may be an upload area its site can still change). Returns the
/// number of files; links are kept as links, for `tree::outward_links` to
/// judge on the copy.
pub fn stage(src: &Path, dest: &Path) -> Result<usize> {
    let keep = |name: &str, is_dir: bool| !excluded(name, is_dir);
    Ok(crate::engine::tree::copy_untrusted(src, dest, &keep)?.files)
}

/// Fills `dest` with hard links to the files of `src` (a release's app dir),
/// so an rsync upload starts from the live release and sends only what
/// changed, at the cost of a link per file. Safe because the receiver is
/// never given options that change a file in place (no perms, owners,
/// `--inplace`): rsync replaces a changed file with a new inode, leaving the
/// release's untouched. Falls back to copying across filesystems.
pub fn seed(src: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let entries =
        std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", src.display()))?;
        let (from, to) = (entry.path(), dest.join(entry.file_name()));
        let ft = entry.file_type()?;
        if ft.is_dir() {
            seed(&from, &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_file() && std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
            if let Ok(mtime) = entry.metadata().and_then(|m| m.modified()) {
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&to)
                    .and_then(|f| f.set_modified(mtime));
            }
        }
    }
    Ok(())
}

/// `release.toml`: written once, before the release is loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseFile {
    pub id: u32,
    pub site: SiteName,
    pub app_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub created: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    pub venv: String,
    pub runner: RunnerSpec,
    /// The app's environment (SITE, CANONICAL_HOST, TOPPCLOUD, CONFIG_*).
    pub env: std::collections::BTreeMap<String, String>,
}

impl ReleaseFile {
    pub fn write(&self, release_dir: &Path) -> Result<()> {
        let text = toml::to_string(self).context("cannot serialise release.toml")?;
        let path = release_dir.join("release.toml");
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

pub fn app_dir(release_dir: &Path) -> PathBuf {
    release_dir.join("app")
}

/// Now, as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_copies_and_filters() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join(".git/objects")).unwrap();
        std::fs::create_dir_all(src.path().join("static")).unwrap();
        std::fs::write(src.path().join("main.py"), "x").unwrap();
        std::fs::write(src.path().join("main.pyc"), "x").unwrap();
        std::fs::write(src.path().join("static/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("static/p")).unwrap();
        std::os::unix::fs::symlink("a.txt", src.path().join("static/b")).unwrap();
        let out = dst.path().join("app");
        assert_eq!(stage(src.path(), &out).unwrap(), 2);
        let outward: Vec<String> = crate::engine::tree::outward_links(&out)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(outward, vec!["static/p".to_string()]);
        assert!(out.join("static/b").exists());
        assert!(!out.join(".git").exists());
        assert!(!out.join("main.pyc").exists());
    }
}
