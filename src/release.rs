//! A release: an immutable directory holding the app's files (`app/`), its
//! environment (`venv`, a link to a shared venv) and `release.toml`, which
//! the WSGI shim reads to become the release and which records where it came
//! from.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::app_ini::Runner;

/// Names the original toppcloud never uploaded, plus local virtualenvs.
fn excluded(name: &str, is_dir: bool) -> bool {
    if is_dir {
        return matches!(
            name,
            ".git" | ".svn" | ".hg" | ".bzr" | "CVS" | "__pycache__" | ".venv"
        );
    }
    name.ends_with('~')
        || name.starts_with('#')
        || name.starts_with(".#")
        || name.starts_with(',')
        || name.ends_with('$')
        || name.starts_with("cvslog.")
        || name.starts_with(".del-")
        || matches!(name, "pip-log.txt" | ".make.state" | ".nse_depinfo")
        || [
            ".pyc", ".pyo", ".old", ".bak", ".BAK", ".orig", ".rej", ".elc",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

#[derive(Debug, Default)]
pub struct StageReport {
    pub files: usize,
    pub skipped_links: Vec<String>,
}

/// Copies the tree at `src` into `dest` (which must not exist), leaving out
/// VCS directories and editor leftovers. Files become world-readable (the
/// daemons run as www-data); symlinks survive only if they stay inside the
/// tree, so a release can never expose a file from elsewhere on the node.
pub fn stage(src: &Path, dest: &Path) -> Result<StageReport> {
    let mut report = StageReport::default();
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    copy_dir(src, src, dest, &mut report)?;
    Ok(report)
}

fn copy_dir(root: &Path, src: &Path, dest: &Path, report: &mut StageReport) -> Result<()> {
    let entries =
        std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", src.display()))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let from = entry.path();
        let to = dest.join(&name);
        let meta = std::fs::symlink_metadata(&from)
            .with_context(|| format!("cannot read {}", from.display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            if excluded(&name_str, true) {
                continue;
            }
            std::fs::create_dir(&to).with_context(|| format!("cannot create {}", to.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            copy_dir(root, &from, &to, report)?;
        } else if ft.is_file() {
            if excluded(&name_str, false) {
                continue;
            }
            std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
            // Kept so a later rsync upload sees unchanged files as unchanged.
            if let Ok(mtime) = meta.modified() {
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&to)
                    .and_then(|f| f.set_modified(mtime));
            }
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
            report.files += 1;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from)?;
            let rel = from
                .strip_prefix(root)
                .unwrap_or(&from)
                .display()
                .to_string();
            if link_stays_inside(root, &from, &target) {
                std::os::unix::fs::symlink(&target, &to)
                    .with_context(|| format!("cannot create {}", to.display()))?;
            } else {
                report.skipped_links.push(rel);
            }
        }
        // Sockets, fifos and devices have no place in an app.
    }
    Ok(())
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

/// Symlinks under `root` that point outside it, relative to `root`.
pub fn outward_symlinks(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_symlink() {
                let inside =
                    std::fs::read_link(&path).is_ok_and(|t| link_stays_inside(root, &path, &t));
                if !inside {
                    out.push(
                        path.strip_prefix(root)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                    );
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether a relative symlink at `link` resolves, lexically, inside `root`.
fn link_stays_inside(root: &Path, link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let Ok(rel_dir) = link.parent().unwrap_or(root).strip_prefix(root) else {
        return false;
    };
    let mut depth: i64 = rel_dir.components().count() as i64;
    for c in target.components() {
        match c {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// How the shim finds the app's WSGI callable (the shape tomllib reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RunnerSpec {
    Python {
        file: String,
        object: String,
    },
    Paste {
        file: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        section: Option<String>,
    },
    Static,
}

impl From<&Runner> for RunnerSpec {
    fn from(r: &Runner) -> RunnerSpec {
        match r {
            Runner::Python { file, object } => RunnerSpec::Python {
                file: file.clone(),
                object: object.clone(),
            },
            Runner::PasteDeploy { file, section } => RunnerSpec::Paste {
                file: file.clone(),
                section: section.clone(),
            },
            Runner::Static => RunnerSpec::Static,
        }
    }
}

/// `release.toml`: written once, before the release is loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseFile {
    pub id: u32,
    pub site: String,
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
    fn excludes_follow_the_original() {
        assert!(excluded("main.pyc", false));
        assert!(excluded("notes.txt~", false));
        assert!(excluded(".git", true));
        assert!(excluded(".venv", true));
        assert!(!excluded("main.py", false));
        assert!(!excluded("static", true));
    }

    #[test]
    fn symlinks_must_stay_inside() {
        let root = Path::new("/r");
        assert!(link_stays_inside(
            root,
            Path::new("/r/static/a"),
            Path::new("../b")
        ));
        assert!(!link_stays_inside(
            root,
            Path::new("/r/a"),
            Path::new("../etc/passwd")
        ));
        assert!(!link_stays_inside(
            root,
            Path::new("/r/a"),
            Path::new("/etc/passwd")
        ));
        assert!(!link_stays_inside(
            root,
            Path::new("/r/s/a"),
            Path::new("../../x")
        ));
    }

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
        let r = stage(src.path(), &out).unwrap();
        assert_eq!(r.files, 2);
        assert_eq!(r.skipped_links, vec!["static/p".to_string()]);
        assert!(out.join("static/b").exists());
        assert!(!out.join(".git").exists());
        assert!(!out.join("main.pyc").exists());
    }
}
