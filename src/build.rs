//! Virtualenvs for releases, built with uv on the interpreter mod_wsgi
//! embeds. A venv is keyed by a hash of the app's requirements and shared by
//! every release with the same ones, so an unchanged set of requirements
//! redeploys with no download and no install at all.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::config::BuildConfig;
use crate::layout::Layout;
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

    fn is_empty(&self) -> bool {
        self.text
            .lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#'))
    }
}

impl Builder {
    pub fn new(cfg: BuildConfig, layout: Layout) -> Builder {
        Builder {
            cfg,
            layout,
            building: Mutex::new(HashMap::new()),
            leased: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn uv(&self) -> Command {
        let mut c = Command::new(&self.cfg.uv);
        let cache = self
            .cfg
            .uv_cache_dir
            .clone()
            .unwrap_or_else(|| self.layout.uv_cache());
        c.env("UV_CACHE_DIR", cache)
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_NO_PROGRESS", "1")
            .env("NO_COLOR", "1");
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

    /// The empty venv every slot's interpreter starts from.
    pub async fn ensure_base(&self) -> Result<()> {
        self.check_tools()?;
        let base = self.layout.base_venv();
        if base.join(COMPLETE).exists() {
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&base);
        let mut c = self.uv();
        c.arg("venv")
            .arg("--python")
            .arg(&self.cfg.python)
            .arg(&base);
        run_captured(c, "uv venv").await.map_err(|e| {
            anyhow::anyhow!("{e}\nhint: install uv (provisioning/install-deps does)")
        })?;
        std::fs::write(base.join(COMPLETE), b"")?;
        Ok(())
    }

    /// Gives `release_dir/venv` the app's requirements and compiles the
    /// app's own code (the daemons cannot write `__pycache__` into a release).
    pub async fn build(
        &self,
        app_dir: &Path,
        release_dir: &Path,
        progress: &Progress,
    ) -> Result<VenvLease> {
        self.check_tools()?;
        let reqs = Requirements::read(app_dir)?;
        let key = self.key(&reqs, release_dir);
        let lease = self.lease(&key);
        let venv = self.layout.venvs_dir().join(&key);
        let lock = {
            let mut b = self.building.lock().unwrap_or_else(|e| e.into_inner());
            b.entry(key.clone()).or_default().clone()
        };
        {
            let _building = lock.lock().await;
            if venv.join(COMPLETE).exists() {
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
                self.create(&venv, &reqs, app_dir, progress).await?;
            }
        }
        std::os::unix::fs::symlink(&venv, release_dir.join("venv"))
            .context("cannot link the release's venv")?;
        let mut c = Command::new(&self.cfg.python);
        // Sequential: worker processes cost more than they save here.
        c.args(["-m", "compileall", "-q"]).arg(app_dir);
        if let Err(e) = run_captured(c, "python3 -m compileall").await {
            // A file that does not compile only matters if the app imports
            // it, and then the check reports the real error.
            progress.say(format!("warning: some files do not compile: {e}"));
        }
        Ok(lease)
    }

    async fn create(
        &self,
        venv: &Path,
        reqs: &Requirements,
        app_dir: &Path,
        progress: &Progress,
    ) -> Result<()> {
        let _ = std::fs::remove_dir_all(venv);
        std::fs::create_dir_all(self.layout.venvs_dir())?;
        let result = async {
            let mut c = self.uv();
            c.arg("venv")
                .arg("--python")
                .arg(&self.cfg.python)
                .arg(venv)
                .current_dir(app_dir);
            run_streamed(c, "uv venv", "       ", progress).await?;
            if !reqs.is_empty() {
                progress.say(format!("-----> installing {}", reqs.source));
                let file = venv.join("toppcloud-requirements.txt");
                std::fs::write(&file, &reqs.text)?;
                let mut c = self.uv();
                c.args(["pip", "install", "--compile-bytecode", "--python"])
                    .arg(venv.join("bin/python"))
                    .arg("-r")
                    .arg(if reqs.source == "requirements.txt" {
                        app_dir.join("requirements.txt")
                    } else {
                        file
                    })
                    .current_dir(app_dir);
                run_streamed(c, "uv pip install", "       ", progress)
                    .await
                    .with_context(|| format!("installing {} failed", reqs.source))?;
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

    fn key(&self, reqs: &Requirements, release_dir: &Path) -> String {
        let mut h = Sha256::new();
        h.update(b"toppcloud venv v1\n");
        h.update(self.cfg.python.as_os_str().as_encoded_bytes());
        h.update(b"\n");
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

    /// Deletes venvs no release links to and no deploy in flight holds.
    pub fn collect(&self, referenced: &HashSet<String>) {
        let leased = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(entries) = std::fs::read_dir(self.layout.venvs_dir()) else {
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
            tracing::info!(venv = %name, "removing unused environment");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The venv key a release links to, read back from its `venv` symlink.
pub fn venv_key_of(release_dir: &Path) -> Option<String> {
    let target: PathBuf = std::fs::read_link(release_dir.join("venv")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
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
    fn no_requirements_is_empty() {
        let d = tempfile::tempdir().unwrap();
        assert!(Requirements::read(d.path()).unwrap().is_empty());
    }
}
