//! The sites' bare repositories: created on first push with the hook shim
//! that calls back into the node, and read with git2 to export a pushed
//! commit into a fresh directory (including from git's quarantine, while a
//! pre-receive hook still decides whether the push is accepted).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use git2::{Oid, Repository, RepositoryInitOptions};

const PRE_RECEIVE: &str = include_str!("../../hooks/pre-receive");

/// Creates the bare repository if needed (HEAD on `main`) and (re)installs
/// the hook shim, so an upgraded node never runs an old hook.
pub fn ensure_repo(path: &Path) -> Result<()> {
    if !path.join("HEAD").exists() {
        let mut opts = RepositoryInitOptions::new();
        opts.bare(true).initial_head("main").mkpath(true);
        Repository::init_opts(path, &opts)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let repo = Repository::open_bare(path)?;
        let mut cfg = repo.config()?;
        cfg.set_bool("core.logAllRefUpdates", true)?;
        // Shallow pushes reach the hook, which refuses them with a hint.
        cfg.set_bool("receive.shallowUpdate", true)?;
    }
    let hook = path.join("hooks/pre-receive");
    std::fs::create_dir_all(path.join("hooks"))?;
    if std::fs::read_to_string(&hook).ok().as_deref() != Some(PRE_RECEIVE) {
        crate::atomic::write(&hook, PRE_RECEIVE.as_bytes())?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The branch HEAD names ("main", "master").
pub fn head_branch(path: &Path) -> Result<String> {
    let repo = Repository::open_bare(path)?;
    let head = repo.find_reference("HEAD")?;
    let target = head
        .symbolic_target()
        .ok()
        .flatten()
        .ok_or_else(|| anyhow!("HEAD of {} is not a branch", path.display()))?;
    Ok(target.trim_start_matches("refs/heads/").to_string())
}

pub fn set_head(path: &Path, branch: &str) -> Result<()> {
    let repo = Repository::open_bare(path)?;
    repo.set_head(&format!("refs/heads/{branch}"))?;
    Ok(())
}

/// Whether any branch exists yet.
pub fn has_branches(path: &Path) -> Result<bool> {
    let repo = Repository::open_bare(path)?;
    let mut refs = repo.references_glob("refs/heads/*")?;
    Ok(refs.next().is_some())
}

/// Opens the repository seeing the objects of a push still in quarantine.
fn open_with(path: &Path, quarantine: Option<&Path>) -> Result<Repository> {
    let repo = Repository::open_bare(path)?;
    if let Some(q) = quarantine {
        let objects = path.join("objects").canonicalize()?;
        let q = q
            .canonicalize()
            .with_context(|| format!("quarantine {} not found", q.display()))?;
        if !q.starts_with(&objects) {
            bail!("quarantine {} is outside the repository", q.display());
        }
        repo.odb()?.add_disk_alternate(&q.to_string_lossy())?;
    }
    Ok(repo)
}

/// True when the commit's history is incomplete: a shallow clone pushed.
pub fn is_shallow(path: &Path, quarantine: Option<&Path>, sha: &str) -> Result<bool> {
    let repo = open_with(path, quarantine)?;
    let mut walk = repo.revwalk()?;
    walk.push(Oid::from_str(sha)?)?;
    for step in walk {
        if step.is_err() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes the tree of commit `sha` into `dest` (absolute; created).
pub fn export(path: &Path, quarantine: Option<&Path>, sha: &str, dest: &Path) -> Result<()> {
    let repo = open_with(path, quarantine)?;
    let commit = repo
        .find_commit(Oid::from_str(sha)?)
        .with_context(|| format!("commit {sha} not found"))?;
    let dest: PathBuf = if dest.is_absolute() {
        dest.to_path_buf()
    } else {
        std::env::current_dir()?.join(dest)
    };
    let mut cb = git2::build::CheckoutBuilder::new();
    // force: write every file into the empty dir; no index: never touch
    // the bare repository's own state.
    cb.force().update_index(false).target_dir(&dest);
    repo.checkout_tree(commit.as_object(), Some(&mut cb))
        .with_context(|| format!("cannot export {sha}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            // The repo's pre-receive shim calls back into a node; here
            // there is none, so it runs `true` and lets the push through.
            .env("TOPPCLOUD_BIN", "true")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn export_writes_the_tree_and_leaves_the_repo_alone() {
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("main.py"), "x = 1\n").unwrap();
        std::fs::create_dir(work.join("static")).unwrap();
        std::fs::write(work.join("static/a.txt"), "a").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "one"]);
        let bare = t.path().join("site.git");
        ensure_repo(&bare).unwrap();
        assert_eq!(head_branch(&bare).unwrap(), "main");
        assert!(!has_branches(&bare).unwrap());
        // The hook calls back into a node; there is none here.
        std::fs::remove_file(bare.join("hooks/pre-receive")).unwrap();
        git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        let sha = String::from_utf8(
            Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(&work)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let dest = t.path().join("out");
        export(&bare, None, sha.trim(), &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("static/a.txt")).unwrap(),
            "a"
        );
        assert!(!bare.join("index").exists());
        assert!(!is_shallow(&bare, None, sha.trim()).unwrap());
    }
}
