//! The test harness: a real node (the built binary) with its own data dir and
//! private Apache on free loopback ports, driven by the real `curl`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_toppcloud");

/// Polls `f` until it returns Some, or panics with `what` at the deadline.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command with a hard time limit; kills it if it overruns.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ssh command git uses: this key only, no config, no prompts.
pub fn ssh_command(key: &Path) -> String {
    format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o BatchMode=yes \
         -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        key.display()
    )
}

/// A git command with a scrubbed environment, pushing with `key`.
pub fn git_cmd(dir: &Path, key: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .env("GIT_SSH_COMMAND", ssh_command(key))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Tess Tester")
        .env("GIT_AUTHOR_EMAIL", "tess@example.com")
        .env("GIT_COMMITTER_NAME", "Tess Tester")
        .env("GIT_COMMITTER_EMAIL", "tess@example.com");
    cmd
}

/// Runs git under a deadline.
pub fn git(dir: &Path, key: &Path, args: &[&str]) -> Run {
    Run::from(
        format!("git {} (in {})", args.join(" "), dir.display()),
        run_with_timeout(git_cmd(dir, key, args), Duration::from_secs(240)),
    )
}

/// What a command printed and how it ended, with assertions that show all
/// of it when they fail.
pub struct Run {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(what: String, out: Output) -> Run {
        Run {
            what,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }

    pub fn success(&self) -> &Run {
        assert_eq!(self.code, Some(0), "expected success:\n{}", self.describe());
        self
    }

    pub fn failure(&self) -> &Run {
        assert_eq!(self.code, Some(1), "expected exit 1:\n{}", self.describe());
        self
    }

    pub fn stdout_lacks(&self, text: &str) -> &Run {
        assert!(
            !self.stdout.contains(text),
            "stdout has {text:?}:\n{}",
            self.describe()
        );
        self
    }

    pub fn stdout_has(&self, text: &str) -> &Run {
        assert!(
            self.stdout.contains(text),
            "stdout lacks {text:?}:\n{}",
            self.describe()
        );
        self
    }

    pub fn fails(&self) -> &Run {
        assert_ne!(
            self.code,
            Some(0),
            "expected a failure:\n{}",
            self.describe()
        );
        self
    }

    pub fn stderr_lacks(&self, text: &str) -> &Run {
        assert!(
            !self.stderr.contains(text),
            "stderr has {text:?}:\n{}",
            self.describe()
        );
        self
    }

    pub fn stderr_has(&self, text: &str) -> &Run {
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}:\n{}",
            self.describe()
        );
        self
    }
}

/// A main.py whose import takes `secs` seconds, then answers `body`.
pub fn slow_main_py(secs: u32, body: &str) -> String {
    format!(
        "import time\ntime.sleep({secs})\n\
         def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [{body:?}.encode()]\n"
    )
}

/// A directory holding an app, written file by file.
pub struct App {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl App {
    pub fn new() -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app");
        std::fs::create_dir(&path).expect("mkdir");
        App { _dir: dir, path }
    }

    pub fn file(&self, name: &str, text: &str) -> &App {
        let p = self.path.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
        self
    }

    /// Makes the app dir a git repository on `main` with one commit.
    pub fn git_init(&self, key: &Path) -> &App {
        git(&self.path, key, &["init", "-q", "-b", "main"]).success();
        self.commit(key, "first")
    }

    pub fn commit(&self, key: &Path, message: &str) -> &App {
        git(&self.path, key, &["add", "-A"]).success();
        git(
            &self.path,
            key,
            &["commit", "-q", "--allow-empty", "-m", message],
        )
        .success();
        self
    }

    pub fn head(&self, key: &Path) -> String {
        git(&self.path, key, &["rev-parse", "HEAD"])
            .success()
            .stdout
            .trim()
            .to_string()
    }

    pub fn remove(&self, name: &str) -> &App {
        std::fs::remove_file(self.path.join(name)).expect("remove");
        self
    }

    /// A plain WSGI app answering `body` at every path.
    pub fn plain(name: &str, version: u32, body: &str) -> App {
        let app = App::new();
        app.set_plain(name, version, body);
        app
    }

    pub fn set_plain(&self, name: &str, version: u32, body: &str) -> &App {
        self.file(
            "app.ini",
            &format!("[production]\napp_name = {name}\nversion = {version}\nrunner = main.py\n"),
        )
        .file(
            "main.py",
            &format!(
                "def application(environ, start_response):\n    \
                 start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
                 return [{body:?}.encode()]\n"
            ),
        )
    }
}

/// A node on loopback with its own data dir; stopped (with its Apache) on drop.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    pub apache_port: u16,
    pub http: String,
    pub ssh_port: u16,
    /// Runs the node and its commands as this (uid, gid) instead of ours.
    run_as: Option<(u32, u32)>,
}

fn uv_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("uv-cache")
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

    /// Makes an ed25519 key pair in the test dir; returns the private key.
    pub fn keygen(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("key-{name}"));
        let mut cmd = Command::new("ssh-keygen");
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

    /// The toppcloud binary, as the node's user.
    pub fn command(&self) -> Command {
        match self.run_as {
            None => Command::new(BIN),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(BIN);
                c
            }
        }
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

    pub fn deploy_dir(&self, site: &str, dir: &Path) -> Run {
        let mut cmd = self.command();
        cmd.args(["node", "deploy", site])
            .arg(dir)
            .arg("--config")
            .arg(&self.config);
        Run::from(
            format!("toppcloud node deploy {site} {}", dir.display()),
            run_with_timeout(cmd, Duration::from_secs(240)),
        )
    }

    /// GET through the real curl, with the host resolved to loopback.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        let url = format!("http://{host}:{}{path}", self.apache_port);
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--resolve")
            .arg(format!("{host}:{}:127.0.0.1", self.apache_port))
            .arg(&url);
        let out = run_with_timeout(cmd, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The body served at `host`, asserting a 200.
    pub fn body(&self, host: &str) -> String {
        let (code, body) = self.get(host, "/");
        assert_eq!(
            code,
            200,
            "GET http://{host}/ answered {code}: {body}\nnode log:\n{}",
            self.log()
        );
        body
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

    fn apache_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("apache/run/httpd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the node as a user would (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
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
            let err = std::fs::read_to_string(self.data.join("apache/logs/error.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(40).collect();
            eprintln!(
                "---- apache error.log (last lines, newest first) ----\n{}",
                tail.join("\n")
            );
        }
        self.stop();
        // A node killed with -9 leaves its Apache running.
        if let Some(pid) = self.apache_pid() {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
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
    let base = format!(
        "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[ssh]\nlisten = \"127.0.0.1:0\"\n\
         [apache]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("data")
    );
    std::fs::write(&config, merge_toml(&base, extra)).expect("write config");
    let mut cmd = Command::new(BIN);
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

// ---- The laptop side: `toppcloud init` and `toppcloud serve` ----

/// A loopback port that was free a moment ago (bound to port 0, released).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The toppcloud binary with the suite's uv cache, so venvs made by `init`
/// reuse what the other tests downloaded.
pub fn toppcloud_cmd() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("UV_CACHE_DIR", uv_cache());
    cmd
}

/// `toppcloud ARGS...` run to completion under a deadline.
pub fn toppcloud(args: &[&std::ffi::OsStr]) -> Run {
    let mut cmd = toppcloud_cmd();
    cmd.args(args);
    let what = format!(
        "toppcloud {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Run::from(what, run_with_timeout(cmd, Duration::from_secs(240)))
}

/// One answer fetched with the real curl.
#[derive(Debug)]
pub struct Http {
    /// 0 when nothing answered.
    pub code: u16,
    pub body: String,
    /// Where a redirect points (curl's %{redirect_url}), else empty.
    pub location: String,
}

/// GET `url` with curl, the path sent as written (no `..` squashing);
/// `resolve` is curl's `--resolve HOST:PORT:ADDR`.
pub fn curl(url: &str, resolve: Option<&str>) -> Http {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--path-as-is",
        "--max-time",
        "20",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{redirect_url}",
    ]);
    if let Some(r) = resolve {
        cmd.arg("--resolve").arg(r);
    }
    cmd.arg(url);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", "0 "));
    let (code, location) = last.split_once(' ').unwrap_or((last, ""));
    Http {
        code: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        location: location.trim().to_string(),
    }
}

/// `toppcloud serve DIR --port P` in its own process group, its output in a
/// log file; the whole group (the Python server too) is killed on drop.
pub struct Serve {
    child: Child,
    pub port: u16,
    _logs: tempfile::TempDir,
    log: PathBuf,
}

impl Serve {
    /// Starts serving `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Serve {
        let logs = tempfile::tempdir().expect("tempdir");
        let log = logs.path().join("serve.log");
        let file = std::fs::File::create(&log).expect("log");
        let port = free_loopback_port();
        use std::os::unix::process::CommandExt;
        let child = toppcloud_cmd()
            .arg("serve")
            .arg(dir)
            .args(["--port", &port.to_string()])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn toppcloud serve");
        let mut serve = Serve {
            child,
            port,
            _logs: logs,
            log,
        };
        wait_for("toppcloud serve to answer", Duration::from_secs(60), || {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("toppcloud serve exited early ({status}):\n{}", serve.log());
            }
            (serve.get("/robots.txt").code != 0).then_some(())
        });
        serve
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn get(&self, path: &str) -> Http {
        curl(&self.url(path), None)
    }

    /// Polls `path` until its body contains `text`; returns that answer.
    pub fn wait_for_body(&self, path: &str, text: &str) -> Http {
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        loop {
            let answer = self.get(path);
            if answer.body.contains(text) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {} to contain {text:?}; last answer: {answer:?}",
                self.url(path)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for serve to exit by itself (after a signal the test sent).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("toppcloud serve to exit", limit, || {
            child.try_wait().expect("wait")
        })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- toppcloud serve log ----\n{}", self.log());
        }
        let group = -(self.child.id() as i32);
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group, the Python server included.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository standing in for a forge's (GitHub, GitLab...): commits are
/// made with the real git, and the node fetches it over `file://`.
pub struct Upstream {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Upstream {
    pub fn new() -> Upstream {
        let dir = tempfile::Builder::new()
            .prefix("toppcloud-upstream-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("repo");
        std::fs::create_dir(&path).expect("mkdir");
        let up = Upstream { _dir: dir, path };
        up.git(&["init", "-q", "-b", "main"]);
        up
    }

    /// What the node's config names as the site's upstream.
    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Runs git in the repository, asserting success; returns stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(&self.path)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com");
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes a file into the working tree (not committed yet).
    pub fn file(&self, name: &str, text: &str) -> &Upstream {
        let p = self.path.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
        self
    }

    /// Commits everything on the current branch; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Commits a plain WSGI app answering `body` (see `App::set_plain`).
    pub fn commit_plain(&self, name: &str, version: u32, body: &str) -> String {
        let app = App::plain(name, version, body);
        for f in ["app.ini", "main.py"] {
            let text = std::fs::read_to_string(app.path.join(f)).expect("read");
            self.file(f, &text);
        }
        self.commit(body.trim())
    }
}

/// An HTTP answer as curl saw it.
pub struct Answer {
    pub code: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or a panic that shows it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.code, self.body))
    }
}

impl Node {
    /// A request to the node's HTTP server (webhooks, API) with the real
    /// curl; `body` goes as-is (`--data-binary @file`).
    pub fn http_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let head = tmp.path().join("head");
        let out = tmp.path().join("body");
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "30",
            "-X",
            method,
            "-w",
            "%{http_code}",
        ])
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&out)
        // No 100-continue round trip: the node answers big bodies too.
        .args(["-H", "Expect:"]);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        if let Some(b) = body {
            let file = tmp.path().join("request");
            std::fs::write(&file, b).expect("write body");
            cmd.arg("--data-binary").arg(format!("@{}", file.display()));
        }
        cmd.arg(format!("http://{}{path}", self.http));
        let done = run_with_timeout(cmd, Duration::from_secs(40));
        let code = String::from_utf8_lossy(&done.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let headers = std::fs::read_to_string(&head)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let body = std::fs::read_to_string(&out).unwrap_or_default();
        Answer {
            code,
            headers,
            body,
        }
    }
}
