//! `toppcloud serve`: runs an app on the laptop the way a node runs it, and
//! restarts it whenever one of its files changes.
//!
//! The runner comes from app.ini, checked by the same code as on the node; the
//! app is loaded by the node's own `runner.py`, inside a small threaded WSGI
//! server (`devserver.py`, stdlib only) that serves `static/` first with the
//! rules of the node's Apache configuration. The app sees `SITE`,
//! `CANONICAL_HOST` (the host:port served on) and `TOPPCLOUD=devel/VERSION`,
//! and what `services` gives it under the node's names (`CONFIG_SECRET`,
//! `TEMP`, `CONFIG_FILES`, `CONFIG_PG_*`...). It runs on the app's
//! `.venv/bin/python` if there is one, else on /usr/bin/python3.
//!
//! This process binds the port and hands the listening socket to each Python
//! process it starts, so a port in use is reported here, and requests made
//! during a restart wait for the new process instead of being refused.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::app_ini::AppIni;
use crate::app_ini::{RunnerSpec, excluded};
use crate::laptop::init::SYSTEM_PYTHON;
use crate::laptop::services::{Provider, ServiceEnv, is_contract_name};

const DEVSERVER: &str = include_str!("../../server-files/devserver.py");
const RUNNER: &str = include_str!("../../server-files/runner.py");

/// What apps see in `TOPPCLOUD` when they run under `serve`.
pub const DEVEL_VERSION: &str = concat!("devel/", env!("CARGO_PKG_VERSION"));

/// How often the app's files are checked for changes.
const POLL: Duration = Duration::from_millis(250);
/// How long a burst of writes (an editor saving, a git checkout) may take to
/// become one restart.
const SETTLE: Duration = Duration::from_millis(100);
/// How long the Python process gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

pub struct ServeOptions {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
}

pub async fn run(opts: ServeOptions) -> Result<()> {
    let root = opts
        .dir
        .canonicalize()
        .with_context(|| format!("cannot find the app directory {}", opts.dir.display()))?;
    if !root.is_dir() {
        bail!("{} is not a directory", opts.dir.display());
    }
    if root.join("app.ini").symlink_metadata().is_err() {
        bail!(
            "no app.ini in {dir}: not an app directory\nhint: toppcloud init {dir} creates one",
            dir = opts.dir.display()
        );
    }
    let mut provider = Provider::default();
    let loaded = load(&root, &mut provider)?;
    let mut skip = loaded.env.files_link.clone();
    let listener = bind(&opts.host, opts.port)?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let host_port = host_port(&opts.host, addr);
    check_python(&root)?;
    let files = ServerFiles::write()?;

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let app = AppProcess {
        root: root.clone(),
        script: files.devserver(),
        fd: listener.as_raw_fd(),
        host_port: host_port.clone(),
    };
    println!(
        "serving {} at http://{host_port}/ (Ctrl-C to stop)",
        opts.dir.display()
    );
    let mut snapshot = take_snapshot(root.clone(), skip.clone()).await;
    let mut child = Some(app.spawn(Ok(loaded))?);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            status = wait(&mut child) => {
                child = None;
                let signalled = status.as_ref().is_ok_and(|s| s.signal().is_some());
                if signalled {
                    // Ctrl-C or a signal sent to the whole process group
                    // reached the app first; ours is on its way.
                    tokio::select! {
                        _ = sigint.recv() => break,
                        _ = sigterm.recv() => break,
                        _ = sighup.recv() => break,
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    }
                }
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("cannot wait for it: {e}"),
                };
                eprintln!("the app stopped ({how}); it restarts when a file changes");
            }
            _ = tick.tick() => {
                let now = take_snapshot(root.clone(), skip.clone()).await;
                let Some(what) = describe_change(&snapshot, &now) else {
                    continue;
                };
                tokio::time::sleep(SETTLE).await;
                snapshot = take_snapshot(root.clone(), skip.clone()).await;
                println!("{what} changed: restarting");
                if what == "requirements.txt" {
                    println!(
                        "hint: serve does not install packages; to update .venv: \
                         uv pip install --python .venv/bin/python -r requirements.txt"
                    );
                }
                if let Some(mut c) = child.take() {
                    stop(&mut c).await;
                }
                let loaded = load(&root, &mut provider);
                match &loaded {
                    Err(e) => eprintln!("toppcloud: error: {e:#}"),
                    Ok(l) if l.env.files_link != skip => {
                        // app.ini moved the app's files: what is written
                        // there from now on is no change of the app.
                        skip = l.env.files_link.clone();
                        snapshot = take_snapshot(root.clone(), skip.clone()).await;
                    }
                    Ok(_) => {}
                }
                child = Some(app.spawn(loaded)?);
            }
        }
    }
    if let Some(mut c) = child.take() {
        stop(&mut c).await;
    }
    drop(listener);
    Ok(())
}

/// What one start of the app needs from app.ini.
struct Loaded {
    runner: RunnerSpec,
    env: ServiceEnv,
}

/// The runner and services app.ini names, checked as the node checks them
/// (warnings are printed, what the node refuses is refused here), then the
/// services as the laptop gives them.
fn load(root: &Path, provider: &mut Provider) -> Result<Loaded> {
    let (ini, warnings) = AppIni::load(root).map_err(anyhow::Error::new)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let services = ini.services().map_err(anyhow::Error::new)?;
    let env = provider.env(root, &ini.app_name, &services)?;
    Ok(Loaded {
        runner: RunnerSpec::from(&ini.runner),
        env,
    })
}

fn bind(host: &str, port: u16) -> Result<TcpListener> {
    TcpListener::bind((host, port)).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "port {port} on {host} is already in use (another toppcloud serve?)\n\
             hint: pick another with --port, e.g. --port {}",
            port.wrapping_add(1).max(1024)
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "not allowed to listen on {host}:{port}\nhint: ports below 1024 need root; try --port 8000"
        ),
        _ => anyhow::anyhow!("cannot listen on {host}:{port}: {e}"),
    })
}

/// "host:port" as a browser would write it (IPv6 literals in brackets).
fn host_port(host: &str, addr: SocketAddr) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    }
}

/// The app's own virtualenv, if it has one.
fn venv_python(root: &Path) -> Option<PathBuf> {
    let python = root.join(".venv/bin/python");
    python.exists().then_some(python)
}

/// Checks there is a Python to run the app on, and says which.
fn check_python(root: &Path) -> Result<()> {
    if venv_python(root).is_some() {
        return Ok(());
    }
    if !Path::new(SYSTEM_PYTHON).exists() {
        bail!(
            "{SYSTEM_PYTHON} not found, and the app has no .venv\n\
             hint: apt-get install python3, or make one: uv venv .venv"
        );
    }
    println!(
        "note: no .venv in the app: running on {SYSTEM_PYTHON}, without requirements.txt's packages"
    );
    Ok(())
}

/// devserver.py and runner.py, in a private temporary directory that goes
/// away with this value.
struct ServerFiles {
    dir: PathBuf,
}

impl ServerFiles {
    fn write() -> Result<ServerFiles> {
        use std::os::unix::fs::DirBuilderExt;
        remove_stale(&std::env::temp_dir());
        let dir = std::env::temp_dir().join(format!(
            "{SERVER_FILES_PREFIX}{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let files = ServerFiles { dir };
        for (name, text) in [("devserver.py", DEVSERVER), ("runner.py", RUNNER)] {
            let path = files.dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(files)
    }

    fn devserver(&self) -> PathBuf {
        self.dir.join("devserver.py")
    }
}

const SERVER_FILES_PREFIX: &str = "toppcloud-serve-";

/// Removes the server files of `serve` processes that were killed (SIGKILL
/// leaves them behind): the directory name carries the pid.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SERVER_FILES_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let mine = std::fs::symlink_metadata(entry.path()).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: getuid(2) cannot fail.
            m.is_dir() && m.uid() == unsafe { libc::getuid() }
        });
        if mine && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for ServerFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How to start the Python side.
struct AppProcess {
    root: PathBuf,
    script: PathBuf,
    /// The listening socket, inherited by every process started.
    fd: i32,
    host_port: String,
}

impl AppProcess {
    /// Starts the dev server on the app, or, when app.ini is wrong, one
    /// that still serves static/ and answers the error for everything else.
    fn spawn(&self, loaded: Result<Loaded>) -> Result<Child> {
        // Looked up at every start: a .venv made while serving is used.
        let venv = venv_python(&self.root);
        let python = venv.clone().unwrap_or_else(|| PathBuf::from(SYSTEM_PYTHON));
        let mut cmd = Command::new(&python);
        cmd.arg(&self.script)
            .arg("--app-dir")
            .arg(&self.root)
            .arg("--fd")
            .arg(self.fd.to_string())
            .arg("--parent")
            .arg(std::process::id().to_string());
        // The laptop's own values of the contract's names are not the app's.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(is_contract_name) {
                cmd.env_remove(name);
            }
        }
        match loaded {
            Ok(loaded) => {
                let json =
                    serde_json::to_string(&loaded.runner).context("cannot encode the runner")?;
                cmd.arg(format!("--runner={json}"));
                cmd.envs(loaded.env.vars);
            }
            Err(e) => {
                cmd.arg(format!("--error={e:#}\n"));
            }
        }
        cmd.current_dir(&self.root)
            .env("SITE", &self.host_port)
            .env("CANONICAL_HOST", &self.host_port)
            .env("TOPPCLOUD", DEVEL_VERSION)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(bin) = venv.as_deref().and_then(Path::parent)
            && let Some(venv) = bin.parent()
        {
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            let mut dirs = vec![bin.to_path_buf()];
            dirs.extend(std::env::split_paths(&path));
            cmd.env("VIRTUAL_ENV", venv);
            if let Ok(joined) = std::env::join_paths(dirs) {
                cmd.env("PATH", joined);
            }
        }
        let fd = self.fd;
        // SAFETY: between fork and exec the closure only calls fcntl, which
        // is async-signal-safe, on a descriptor this process keeps open.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
            .with_context(|| format!("cannot run {}", python.display()))
    }
}

/// Waits for the app process to end; never returns while there is none.
async fn wait(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// SIGTERM, then SIGKILL if the process is still there after a grace period.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Size and modification time of every file of the app, by relative path.
type Snapshot = BTreeMap<PathBuf, (u64, Option<SystemTime>)>;

/// `skip` (relative to `root`) is the app's files directory, left out.
async fn take_snapshot(root: PathBuf, skip: Option<PathBuf>) -> Snapshot {
    tokio::task::spawn_blocking(move || {
        let mut out = Snapshot::new();
        walk(&root, &root, skip.as_deref(), &mut out);
        out
    })
    .await
    .unwrap_or_default()
}

fn walk(root: &Path, dir: &Path, skip: Option<&Path>, out: &mut Snapshot) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if skip.is_some_and(|s| path.strip_prefix(root).is_ok_and(|rel| rel == s)) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            // Symlinked directories are not followed (no loops).
            if !excluded(&name, true) {
                walk(root, &path, skip, out);
            }
            continue;
        }
        if excluded(&name, false) {
            continue;
        }
        // A symlink counts by what it points at.
        let meta = std::fs::metadata(&path).unwrap_or(meta);
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        out.insert(rel, (meta.len(), meta.modified().ok()));
    }
}

/// The first file that differs between two snapshots ("main.py", "main.py
/// and 2 more"), or None.
fn describe_change(before: &Snapshot, after: &Snapshot) -> Option<String> {
    let mut changed = before
        .iter()
        .filter(|(path, stamp)| after.get(*path) != Some(stamp))
        .map(|(path, _)| path)
        .chain(after.keys().filter(|path| !before.contains_key(*path)));
    let first = changed.next()?.display().to_string();
    let more = changed.count();
    Some(match more {
        0 => first,
        n => format!("{first} and {n} more"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(entries: &[(&str, u64)]) -> Snapshot {
        entries
            .iter()
            .map(|(p, len)| (PathBuf::from(p), (*len, None)))
            .collect()
    }

    #[test]
    fn changes_are_named() {
        let a = snap(&[("main.py", 1), ("static/a.css", 2)]);
        assert_eq!(describe_change(&a, &a.clone()), None);
        let b = snap(&[("main.py", 5), ("static/a.css", 2)]);
        assert_eq!(describe_change(&a, &b).as_deref(), Some("main.py"));
        let c = snap(&[("main.py", 1)]);
        assert_eq!(describe_change(&a, &c).as_deref(), Some("static/a.css"));
        let d = snap(&[("main.py", 2), ("new.py", 1), ("static/a.css", 2)]);
        assert_eq!(
            describe_change(&a, &d).as_deref(),
            Some("main.py and 1 more")
        );
    }

    #[test]
    fn the_walk_skips_environments_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in [
            "main.py",
            "static/x.txt",
            ".venv/lib/site.py",
            "__pycache__/main.cpython-311.pyc",
            "pkg/__pycache__/m.pyc",
            ".git/HEAD",
            "main.py~",
            ".main.py.swp",
        ] {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        let mut out = Snapshot::new();
        walk(root, root, None, &mut out);
        let names: Vec<String> = out.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, vec!["main.py", "static/x.txt"]);
    }

    #[test]
    fn the_walk_skips_the_apps_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in [
            "main.py",
            "data/uploads/a.jpg",
            "data/seed.json",
            "instance/db",
        ] {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        let names = |skip: Option<&str>| {
            let mut out = Snapshot::new();
            walk(root, root, skip.map(Path::new), &mut out);
            out.keys()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Some("data/uploads")),
            vec!["data/seed.json", "instance/db", "main.py"]
        );
        assert_eq!(
            names(Some("instance")),
            vec!["data/seed.json", "data/uploads/a.jpg", "main.py"]
        );
        // A link to a directory elsewhere is skipped too, not taken for a file.
        std::fs::remove_dir_all(root.join("instance")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.join("instance")).unwrap();
        assert_eq!(
            names(Some("instance")),
            vec!["data/seed.json", "data/uploads/a.jpg", "main.py"]
        );
    }

    #[test]
    fn urls_bracket_ipv6() {
        let v4: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(host_port("127.0.0.1", v4), "127.0.0.1:8000");
        assert_eq!(host_port("localhost", v4), "localhost:8000");
        let v6: SocketAddr = "[::1]:8000".parse().unwrap();
        assert_eq!(host_port("::1", v6), "[::1]:8000");
    }
}
