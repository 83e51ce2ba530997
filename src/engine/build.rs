//! Virtualenvs for releases, built with uv on the interpreter mod_wsgi
//! embeds, as the site's own account. A venv is keyed by the site and a hash
//! of its requirements and shared by the site's releases with the same ones,
//! so an unchanged set of requirements redeploys with no download and no
//! install at all. Once built it is sealed (owned by root, read-only to the
//! site) before any daemon imports from it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::accounts::Account;
use crate::config::BuildConfig;
use crate::dirs::create_dir;
use crate::layout::Layout;
use crate::names::SiteName;
use crate::process::{run_captured, run_streamed};
use crate::progress::Progress;

const COMPLETE: &str = ".toppcloud-complete";

pub struct Builder {
    cfg: BuildConfig,
    layout: Layout,
    /// One build per venv key at a time; different keys build in parallel.
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Keys held by deploys still in flight: never collected.
    leased: Arc<Mutex<HashMap<String, usize>>>,
}

/// Keeps a venv from being collected while the deploy that built it runs.
pub struct VenvLease {
    key: String,
    leased: Arc<Mutex<HashMap<String, usize>>>,
}

impl VenvLease {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for VenvLease {
    fn drop(&mut self) {
        let mut l = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = l.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                l.remove(&self.key);
            }
        }
    }
}

/// What the app asks to have installed.
#[derive(Debug, PartialEq, Eq)]
pub struct Requirements {
    /// requirements.txt, or pyproject.toml's [project] dependencies.
    pub text: String,
    pub source: &'static str,
    /// Refers to files (`-e .`, `./lib`, `-r other.txt`): the text alone
    /// does not say what gets installed, so the venv is never shared.
    pub local: bool,
}

impl Requirements {
    pub fn read(app_dir: &Path) -> Result<Requirements> {
        let req = app_dir.join("requirements.txt");
        if req.is_file() {
            let text = std::fs::read_to_string(&req).context("cannot read requirements.txt")?;
            let local = text.lines().map(str::trim).any(|l| {
                l.starts_with("-e")
                    || l.starts_with("--editable")
                    || l.starts_with('.')
                    || l.starts_with('/')
                    || l.starts_with("file:")
                    || l.starts_with("-r")
                    || l.starts_with("-c")
            });
            return Ok(Requirements {
                text,
                source: "requirements.txt",
                local,
            });
        }
        let py = app_dir.join("pyproject.toml");
        if py.is_file() {
            let text = std::fs::read_to_string(&py).context("cannot read pyproject.toml")?;
            let doc: toml::Table = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("pyproject.toml: {}", e.message()))?;
            let deps = doc
                .get("project")
                .and_then(|p| p.get("dependencies"))
                .and_then(|d| d.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .map(|s| format!("{s}\n"))
                        .collect::<String>()
                })
                .unwrap_or_default();
            return Ok(Requirements {
                text: deps,
                source: "pyproject.toml",
                local: false,
            });
        }
        Ok(Requirements {
            text: String::new(),
            source: "",
            local: false,
        })
    }

    /// The requirement lines, without blanks and comments.
    fn specs(&self) -> Vec<String> {
        self.text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.text
            .lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#'))
    }
}

/// Who a build runs as and where it keeps its files.
pub struct BuildFor<'a> {
    pub site: &'a SiteName,
    /// The site's account; None on a node that runs every site as itself.
    pub account: Option<&'a Account>,
}

/// Variables of the node's own environment that may steer uv (an index
/// mirror, a proxy): the node admin's settings, passed on by name.
const UV_PASSTHROUGH: &[&str] = &[
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_FIND_LINKS",
    "UV_OFFLINE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

impl Builder {
    pub fn new(cfg: BuildConfig, layout: Layout) -> Builder {
        Builder {
            cfg,
            layout,
            building: Mutex::new(HashMap::new()),
            leased: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// uv with a clean environment: nothing from the app's directory
    /// (`--no-config`: no uv.toml, no `[tool.uv]`) and nothing from the
    /// node's environment but the admin's index and proxy settings.
    fn uv(&self, home: Option<&Path>, cache: &Path) -> Command {
        let mut c = Command::new(&self.cfg.uv);
        crate::process::clean_env(&mut c)
            .env("UV_CACHE_DIR", cache)
            .env("UV_NO_CONFIG", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_NO_PROGRESS", "1")
            // Never share an inode between the site's cache and a sealed venv.
            .env("UV_LINK_MODE", "copy")
            .env("NO_COLOR", "1");
        if let Some(h) = home {
            c.env("HOME", h).env("TMPDIR", h.join("tmp"));
        }
        for name in UV_PASSTHROUGH {
            if let Some(v) = std::env::var_os(name) {
                c.env(name, v);
            }
        }
        c
    }

    fn check_tools(&self) -> Result<()> {
        if !self.cfg.python.is_file() {
            bail!(
                "{} not found: venvs are built on the Python mod_wsgi embeds\nhint: apt-get install python3",
                self.cfg.python.display()
            );
        }
        Ok(())
    }

    /// The empty venv every slot's interpreter starts from (the node's own,
    /// built as root from nothing a site controls).
    pub async fn ensure_base(&self) -> Result<()> {
        self.check_tools()?;
        let base = self.layout.base_venv();
        if base.join(COMPLETE).exists() {
            return freeze_at_start(&base);
        }
        let _ = std::fs::remove_dir_all(&base);
        let cache = self.node_cache();
        let mut c = self.uv(None, &cache);
        c.arg("venv")
            .arg("--python")
            .arg(&self.cfg.python)
            .arg(&base)
            .current_dir("/");
        run_captured(c, "uv venv").await.map_err(|e| {
            anyhow::anyhow!("{e}\nhint: install uv (provisioning/install-deps does)")
        })?;
        freeze_at_start(&base)?;
        std::fs::write(base.join(COMPLETE), b"")?;
        open_up(&base)?;
        Ok(())
    }

    fn node_cache(&self) -> PathBuf {
        self.cfg
            .uv_cache_dir
            .clone()
            .unwrap_or_else(|| self.layout.uv_cache())
    }

    /// Gives `release_dir/venv` the app's requirements and compiles the
    /// app's own code (the daemons cannot write `__pycache__` into a
    /// release). The app dir must be sealed already: the build runs as the
    /// site's account and may read it, never change it.
    pub async fn build(
        &self,
        app_dir: &Path,
        release_dir: &Path,
        who: &BuildFor<'_>,
        progress: &Progress,
    ) -> Result<VenvLease> {
        self.check_tools()?;
        let reqs = Requirements::read(app_dir)?;
        let key = self.key(&reqs, who.site, release_dir);
        let lease = self.lease(&key);
        let venvs = self.layout.site_venvs(who.site);
        let venv = venvs.join(&key);
        let lock = {
            let mut b = self.building.lock().unwrap_or_else(|e| e.into_inner());
            b.entry(key.clone()).or_default().clone()
        };
        {
            let _building = lock.lock().await;
            if is_complete(&venv, who.account.is_some()) {
                if reqs.is_empty() {
                    progress.say("-----> no requirements: using an empty environment");
                } else {
                    progress.say(format!(
                        "-----> {} unchanged: reusing environment {}",
                        reqs.source,
                        &key[..12]
                    ));
                }
            } else {
                self.create(&venv, &reqs, app_dir, who, progress).await?;
            }
        }
        std::os::unix::fs::symlink(&venv, release_dir.join("venv"))
            .context("cannot link the release's venv")?;
        Ok(lease)
    }

    /// Compiles the app's own files as the node: `-I` keeps the app's
    /// directory (and every PYTHON* variable) off the compiler's path, and
    /// compiling runs none of the app's code.
    pub async fn compile_app(&self, app_dir: &Path, progress: &Progress) {
        let mut c = Command::new(&self.cfg.python);
        // Sequential: worker processes cost more than they save here.
        crate::process::clean_env(c.args(["-I", "-m", "compileall", "-q"]).arg(app_dir))
            .current_dir("/");
        if let Err(e) = run_captured(c, "python3 -m compileall").await {
            // A file that does not compile only matters if the app imports
            // it, and then the check reports the real error.
            progress.say(format!("warning: some files do not compile: {e}"));
        }
    }

    async fn create(
        &self,
        venv: &Path,
        reqs: &Requirements,
        app_dir: &Path,
        who: &BuildFor<'_>,
        progress: &Progress,
    ) -> Result<()> {
        let _ = std::fs::remove_dir_all(venv);
        let venvs = venv.parent().context("a venv has no parent")?;
        create_dir(venvs, 0o751, None)?;
        let home = self.layout.site_home(who.site);
        let owner = who.account.map(|a| (a.uid, a.gid));
        create_dir(&home, 0o700, owner)?;
        create_dir(&home.join("tmp"), 0o700, owner)?;
        let cache = match who.account {
            Some(_) => {
                let c = home.join("cache");
                create_dir(&c, 0o700, owner)?;
                c
            }
            None => self.node_cache(),
        };
        // The site's account builds into a directory it owns; the node
        // seals it before any daemon imports from it.
        create_dir(venv, 0o700, owner)?;
        let result = async {
            let mut c = self.uv(Some(&home), &cache);
            c.arg("venv")
                .arg("--allow-existing")
                .arg("--python")
                .arg(&self.cfg.python)
                .arg(venv)
                .current_dir(app_dir);
            if let Some(a) = who.account {
                a.apply(&mut c);
            }
            run_streamed(c, "uv venv", "       ", progress).await?;
            if !reqs.is_empty() {
                progress.say(format!("-----> installing {}", reqs.source));
                let mut c = self.uv(Some(&home), &cache);
                c.args(["pip", "install", "--compile-bytecode", "--python"])
                    .arg(venv.join("bin/python"));
                self.package_sources(&mut c);
                if reqs.source == "requirements.txt" {
                    c.arg("-r").arg(app_dir.join("requirements.txt"));
                } else {
                    // pyproject's dependencies, one per argument: no file
                    // the site's account could swap mid-build.
                    c.arg("--").args(reqs.specs());
                }
                c.current_dir(app_dir);
                if let Some(a) = who.account {
                    a.apply(&mut c);
                }
                run_streamed(c, "uv pip install", "       ", progress)
                    .await
                    .with_context(|| format!("installing {} failed", reqs.source))?;
            }
            crate::engine::tree::seal(
                venv,
                who.account.map(|a| a.gid),
                crate::engine::tree::Seal::Private,
            )?;
            if who.account.is_none() {
                open_up(venv)?;
            }
            std::fs::write(venv.join(COMPLETE), b"")?;
            anyhow::Ok(())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(venv);
        }
        result
    }

    /// Where `uv pip install` may take packages from, as the node's config
    /// says (`[build] find_links`, `no_index`); never from the app.
    fn package_sources(&self, c: &mut Command) {
        for dir in &self.cfg.find_links {
            c.arg("--find-links").arg(dir);
        }
        if self.cfg.no_index {
            c.arg("--no-index");
        }
    }

    /// A venv is shared by the releases of one site whose requirements are
    /// the same; never by two sites (each builds its own, as its own
    /// account, so no site can decide what another imports).
    fn key(&self, reqs: &Requirements, site: &SiteName, release_dir: &Path) -> String {
        let mut h = Sha256::new();
        h.update(b"toppcloud venv v2\n");
        h.update(site.as_str().as_bytes());
        h.update(b"\n");
        h.update(self.cfg.python.as_os_str().as_encoded_bytes());
        h.update(b"\n");
        for name in UV_PASSTHROUGH {
            if let Some(v) = std::env::var_os(name) {
                h.update(name.as_bytes());
                h.update(v.as_encoded_bytes());
                h.update(b"\n");
            }
        }
        for dir in &self.cfg.find_links {
            h.update(b"--find-links ");
            h.update(dir.as_os_str().as_encoded_bytes());
            h.update(b"\n");
        }
        if self.cfg.no_index {
            h.update(b"--no-index\n");
        }
        h.update(reqs.text.as_bytes());
        if reqs.local {
            h.update(release_dir.as_os_str().as_encoded_bytes());
        }
        hex::encode(h.finalize())[..32].to_string()
    }

    fn lease(&self, key: &str) -> VenvLease {
        *self
            .leased
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default() += 1;
        VenvLease {
            key: key.to_string(),
            leased: self.leased.clone(),
        }
    }

    /// Deletes the site's venvs that no release links to and no deploy in
    /// flight holds.
    pub fn collect(&self, site: &SiteName, referenced: &HashSet<String>) {
        let leased = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(entries) = std::fs::read_dir(self.layout.site_venvs(site)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if referenced.contains(&name) || leased.contains_key(&name) {
                continue;
            }
            let lock = self
                .building
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned();
            if lock.as_ref().is_some_and(|l| l.try_lock().is_err()) {
                continue;
            }
            tracing::info!(site = %site, venv = %name, "removing unused environment");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A venv is complete once the node marked it, after sealing it; on a root
/// node the marker counts only if root wrote it (the site's account could
/// otherwise fake one in a directory it once owned).
fn is_complete(venv: &Path, isolating: bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(dir), Ok(mark)) = (
        std::fs::symlink_metadata(venv),
        std::fs::symlink_metadata(venv.join(COMPLETE)),
    ) else {
        return false;
    };
    !isolating || (dir.uid() == 0 && mark.uid() == 0 && dir.is_dir())
}

/// Makes a node-built tree readable by everyone (the base venv every
/// daemon starts from; a venv on a node that runs sites as itself).
fn open_up(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walk(root) {
        let meta = std::fs::symlink_metadata(&entry)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        let add = if meta.is_dir() || mode & 0o100 != 0 {
            0o055
        } else {
            0o044
        };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode | add))?;
    }
    Ok(())
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        i += 1;
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
            && let Ok(entries) = std::fs::read_dir(&p)
        {
            out.extend(entries.flatten().map(|e| e.path()));
        }
    }
    out
}

/// The venv key a release links to, read back from its `venv` symlink.
pub fn venv_key_of(release_dir: &Path) -> Option<String> {
    let target: PathBuf = std::fs::read_link(release_dir.join("venv")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// A `.pth` line in the base venv, run once as Python starts in Apache's
/// parent (`WSGILazyInitialization Off`): every object made so far moves
/// out of the collector's sight, so a daemon's first collection does not
/// write to (and copy) pages it shares with the parent and every other
/// daemon. Written at each start, so an older base venv gets it too.
fn freeze_at_start(base: &Path) -> Result<()> {
    const LINE: &[u8] = b"import gc; gc.freeze()\n";
    let lib = base.join("lib");
    let entries =
        std::fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?;
    for e in entries.flatten() {
        let site = e.path().join("site-packages");
        if !site.is_dir() {
            continue;
        }
        let pth = site.join("_toppcloud_freeze.pth");
        if std::fs::read(&pth).is_ok_and(|b| b == LINE) {
            continue;
        }
        crate::atomic::write_mode(&pth, LINE, 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_references_are_detected() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("requirements.txt"), "flask\n-e ./lib\n").unwrap();
        let r = Requirements::read(d.path()).unwrap();
        assert!(r.local);
        std::fs::write(d.path().join("requirements.txt"), "flask==3.1\n# x\n").unwrap();
        assert!(!Requirements::read(d.path()).unwrap().local);
    }

    #[test]
    fn pyproject_dependencies_are_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("pyproject.toml"),
            "[project]\nname = \"x\"\ndependencies = [\"flask>=3\", \"requests\"]\n",
        )
        .unwrap();
        let r = Requirements::read(d.path()).unwrap();
        assert_eq!(r.text, "flask>=3\nrequests\n");
        assert_eq!(r.source, "pyproject.toml");
    }

    #[test]
    fn the_venv_key_follows_the_package_sources() {
        let site = SiteName::parse("blog", &crate::names::Domain::localhost()).unwrap();
        let reqs = Requirements {
            text: "flask\n".into(),
            source: "requirements.txt",
            local: false,
        };
        let key = |cfg: BuildConfig| {
            Builder::new(cfg, Layout::new("/nonexistent".into())).key(&reqs, &site, Path::new("/r"))
        };
        let plain = key(BuildConfig::default());
        let wheels = key(BuildConfig {
            find_links: vec!["/srv/wheels".into()],
            ..BuildConfig::default()
        });
        let offline = key(BuildConfig {
            find_links: vec!["/srv/wheels".into()],
            no_index: true,
            ..BuildConfig::default()
        });
        assert_ne!(plain, wheels);
        assert_ne!(wheels, offline);
        assert_ne!(plain, offline);
        assert_eq!(plain, key(BuildConfig::default()), "a key is stable");
    }

    #[test]
    fn no_requirements_is_empty() {
        let d = tempfile::tempdir().unwrap();
        assert!(Requirements::read(d.path()).unwrap().is_empty());
    }
}
