//! A node on loopback: the real binary with its own data dir, config, HOME
//! and private Apache, started with a cleared environment and stopped (with
//! its Apache) when the test drops it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Answer, App, BIN, Request, Run, built_wheelhouse, clean_command, run_with_timeout, uv_cache,
    wait_for,
};

/// A node on loopback with its own data dir; stopped (with its Apache) on drop.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    /// The node's HOME: empty, the test's own.
    home: PathBuf,
    child: Option<Child>,
    pub apache_port: u16,
    pub http: String,
    pub ssh_port: u16,
    /// Runs the node and its commands as this (uid, gid) instead of ours.
    run_as: Option<(u32, u32)>,
}

/// Where every test node takes Python packages from: the wheelhouse when
/// there is one, and never an index (a test that needs packages fails
/// without a wheelhouse, saying so: see `require_wheelhouse`).
fn package_sources() -> String {
    let links = built_wheelhouse()
        .map(|w| format!("find_links = [{w:?}]\n"))
        .unwrap_or_default();
    format!("[build]\nno_index = true\n{links}")
}

impl Node {
    pub fn start() -> Node {
        Node::start_with("")
    }

    /// Starts a node whose config gets `extra` TOML appended.
    pub fn start_with(extra: &str) -> Node {
        Node::start_as(None, extra)
    }

    /// Starts a node as another user (the tests run as root in CI; this is
    /// how the unprivileged path is exercised there).
    pub fn start_as(run_as: Option<(u32, u32)>, extra: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("toppcloud-test-")
            .tempdir()
            .expect("tempdir");
        // Apache serves as www-data when the tests run as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let data = dir.path().join("data");
        let config = dir.path().join("node.toml");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("mkdir home");
        let base = format!(
            "data_dir = {data:?}\ndomain = \"localhost\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [ssh]\nlisten = \"127.0.0.1:0\"\n[apache]\nlisten = \"127.0.0.1:0\"\ncells = 2\nrequest_timeout = 10\n\
             [build]\nuv_cache_dir = {cache:?}\n",
            // Another user cannot share the suite's cache.
            cache = if run_as.is_some() {
                dir.path().join("uv-cache")
            } else {
                uv_cache()
            }
        );
        let base = merge_toml(&base, &package_sources());
        write_private(&config, &merge_toml(&base, extra));
        if let Some((uid, gid)) = run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let mut node = Node {
            dir,
            data,
            config,
            home,
            child: None,
            apache_port: 0,
            http: String::new(),
            ssh_port: 0,
            run_as,
        };
        node.spawn();
        node
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// Starts the node process and waits until it says it is ready.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let child = self
            .command()
            .args(["node", "run", "--config"])
            .arg(&self.config)
            .env("TOPPCLOUD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn node");
        let pid = child.id();
        self.child = Some(child);
        let ready = self.data.join("node.ready");
        let (apache, http, ssh) = wait_for("the node to be ready", Duration::from_secs(90), || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("node exited early ({status}):\n{}", self.log());
            }
            let text = std::fs::read_to_string(&ready).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            (v["pid"].as_u64()? == u64::from(pid)).then(|| {
                (
                    v["apache"].as_str().unwrap_or_default().to_string(),
                    v["http"].as_str().unwrap_or_default().to_string(),
                    v["ssh"].as_str().unwrap_or_default().to_string(),
                )
            })
        });
        self.apache_port = apache
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        self.http = http;
        self.ssh_port = ssh
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("ssh port");
    }

    /// `toppcloud node ARGS... --config FILE` against this node, as an
    /// operator on the node's machine runs it.
    pub fn node_cmd(&self, args: &[&str]) -> Run {
        let mut cmd = self.command();
        cmd.arg("node").args(args).arg("--config").arg(&self.config);
        Run::from(
            format!("toppcloud node {}", args.join(" ")),
            run_with_timeout(cmd, Duration::from_secs(240)),
        )
    }

    /// A key pair authorized for `site` alone (`keys add --sites`);
    /// returns the private key.
    pub fn limited_key(&self, name: &str, site: &str) -> PathBuf {
        let key = self.keygen(name);
        let public = format!("{}.pub", key.display());
        self.keys(&["add", name, &public, "--sites", site])
            .success();
        key
    }

    /// Makes an ed25519 key pair in the test dir; returns the private key.
    pub fn keygen(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("key-{name}"));
        let mut cmd = super::client_command("ssh-keygen");
        cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path);
        let out = run_with_timeout(cmd, Duration::from_secs(30));
        assert!(out.status.success(), "ssh-keygen: {out:?}");
        path
    }

    /// `toppcloud node keys ARGS...` against this node.
    pub fn keys(&self, args: &[&str]) -> Run {
        let mut cmd = self.command();
        cmd.args(["node", "keys"])
            .args(args)
            .arg("--config")
            .arg(&self.config);
        Run::from(
            format!("toppcloud node keys {}", args.join(" ")),
            run_with_timeout(cmd, Duration::from_secs(30)),
        )
    }

    /// A key pair that may push to every site.
    pub fn authorized_key(&self, name: &str) -> PathBuf {
        let key = self.keygen(name);
        let public = format!("{}.pub", key.display());
        self.keys(&["add", name, &public]).success();
        key
    }

    pub fn ssh_url(&self, path: &str) -> String {
        format!("ssh://toppcloud@127.0.0.1:{}/{path}", self.ssh_port)
    }

    /// The toppcloud binary as the node's user, with the node's cleared
    /// environment and HOME.
    pub fn command(&self) -> Command {
        match self.run_as {
            None => clean_command(BIN, &self.home),
            Some((uid, gid)) => {
                let mut c = clean_command("setpriv", &self.home);
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(BIN);
                c
            }
        }
    }

    /// `toppcloud node config ARGS...` against this node.
    pub fn config_cmd(&self, args: &[&str]) -> Run {
        let mut cmd = self.command();
        cmd.args(["node", "config"])
            .args(args)
            .arg("--config")
            .arg(&self.config);
        Run::from(
            format!("toppcloud node config {}", args.join(" ")),
            run_with_timeout(cmd, Duration::from_secs(240)),
        )
    }

    /// Waits (10 s at most) for the node's log to say `text`: a line the
    /// node writes as it acts, which may follow what the client saw by a
    /// moment.
    pub fn wait_logged(&self, text: &str) {
        crate::support::wait_for(
            &format!("the node to log {text:?}"),
            std::time::Duration::from_secs(10),
            || self.log().contains(text).then_some(()),
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: the node gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn deploy(&self, site: &str, app: &App) -> Run {
        self.deploy_dir(site, &app.path)
    }

    /// `toppcloud node deploy SITE DIR` against this node, not run yet.
    pub fn deploy_command(&self, site: &str, dir: &Path) -> Command {
        let mut cmd = self.command();
        cmd.args(["node", "deploy", site])
            .arg(dir)
            .arg("--config")
            .arg(&self.config);
        cmd
    }

    pub fn deploy_dir(&self, site: &str, dir: &Path) -> Run {
        Run::from(
            format!("toppcloud node deploy {site} {}", dir.display()),
            run_with_timeout(self.deploy_command(site, dir), Duration::from_secs(240)),
        )
    }

    /// `host` on the node's Apache, resolved to loopback: a request to
    /// send with `.send()` (after adding headers, if any).
    pub fn site(&self, host: &str, path: &str) -> Request {
        Request::get(&format!("http://{host}:{}{path}", self.apache_port))
            .resolve(&format!("{host}:{}:127.0.0.1", self.apache_port))
    }

    /// GET through the real curl, with the host resolved to loopback.
    pub fn get(&self, host: &str, path: &str) -> Answer {
        self.site(host, path).send()
    }

    /// The body served at `host`, asserting a 200.
    pub fn body(&self, host: &str) -> String {
        let a = self.get(host, "/");
        assert_eq!(
            a.code,
            200,
            "GET http://{host}/ answered {}: {}\nnode log:\n{}",
            a.code,
            a.body,
            self.log()
        );
        a.body
    }

    /// A request to the node's HTTP server (webhooks, API) with the real
    /// curl; `body` goes as-is.
    pub fn http_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let mut r = Request::get(&format!("http://{}{path}", self.http)).method(method);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        r.send()
    }

    pub fn releases(&self, site: &str) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(self.data.join("sites").join(site).join("releases"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
        v.sort();
        v
    }

    /// Asks the node to stop (SIGTERM), without waiting.
    pub fn signal_stop(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Stops the node as a user would (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        self.signal_stop();
        self.wait_exit();
    }

    /// Waits (30 s at most, then kills it) for the node to exit.
    pub fn wait_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- node log ----\n{}", self.log());
            let apaches =
                std::iter::once(self.data.join("apache")).chain(grown_apaches(&self.data));
            for dir in apaches {
                let err = std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default();
                let tail: Vec<&str> = err.lines().rev().take(40).collect();
                eprintln!(
                    "---- {} error.log (last lines, newest first) ----\n{}",
                    dir.strip_prefix(&self.data).unwrap_or(&dir).display(),
                    tail.join("\n")
                );
            }
        }
        self.stop();
        // A node killed with -9 leaves its Apache (its TLS front, and the
        // Apaches that hold a grown pool's cells) running; a mod_wsgi
        // daemon that missed the stop signal outlives Apache: killed too.
        let mut pid_files = vec![
            self.data.join("apache/run/httpd.pid"),
            self.data.join("apache/front/run/httpd.pid"),
        ];
        pid_files.extend(grown_apaches(&self.data).map(|d| d.join("run/httpd.pid")));
        for pid_file in pid_files {
            let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let children = children_of(pid);
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // A daemon's command line names its Apache's config (the TLS
            // front runs no daemon).
            let root = pid_file
                .parent()
                .and_then(Path::parent)
                .expect("apache dir");
            let conf = root.join("httpd.conf");
            for child in children {
                // Still this node's daemon (not a recycled pid)?
                let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
                let ours = cmdline.starts_with(b"(wsgi:")
                    && String::from_utf8_lossy(&cmdline).contains(&*conf.to_string_lossy());
                if ours {
                    unsafe { libc::kill(child, libc::SIGKILL) };
                }
            }
        }
    }
}

/// The directories of the Apaches a grown pool added (`apache/shard-K`).
pub fn grown_apaches(data: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(data.join("apache"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shard-"))
        .map(|e| e.path())
}

/// The pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// Writes a node config as an admin would: readable by its owner only
/// (a node refuses a config with secrets that others can read).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write config");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod config");
}

/// Runs `node run` on a loopback config with `extra` merged in, expecting it
/// to refuse to start (exit 1); returns what it said on stderr.
pub fn node_run_refused(extra: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("mkdir home");
    let base = format!(
        "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[ssh]\nlisten = \"127.0.0.1:0\"\n\
         [apache]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("data")
    );
    let base = merge_toml(&base, &package_sources());
    // Written as it comes (mode 0644 here): some tests are about the mode.
    std::fs::write(&config, merge_toml(&base, extra)).expect("write config");
    let mut cmd = clean_command(BIN, &home);
    cmd.args(["node", "run", "--config"]).arg(&config);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected the node to refuse to start:\n{err}"
    );
    err
}

/// Appends `extra` to `base`, merging tables `extra` repeats (TOML forbids
/// a table twice).
fn merge_toml(base: &str, extra: &str) -> String {
    let mut doc: toml::Table = toml::from_str(base).expect("base toml");
    let more: toml::Table = toml::from_str(extra).expect("extra toml");
    for (k, v) in more {
        match (doc.get_mut(&k), v) {
            (Some(toml::Value::Table(t)), toml::Value::Table(m)) => t.extend(m),
            (_, v) => {
                doc.insert(k, v);
            }
        }
    }
    toml::to_string(&doc).expect("toml")
}
