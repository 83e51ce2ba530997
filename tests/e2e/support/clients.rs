//! The clients a user would run, each with a cleared environment: git and
//! ssh (this key only, no config, no prompts), curl (every HTTP answer the
//! tests look at is an `Answer`) and the laptop side of the CLI,
//! `toppcloud init` and `toppcloud serve`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    BIN, Node, Run, built_wheelhouse, clean_command, client_command, free_loopback_port,
    run_with_timeout, uv_cache, wait_for,
};

/// The ssh command git uses: this key only, no config, no prompts.
pub fn ssh_command(key: &Path) -> String {
    format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o BatchMode=yes \
         -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        key.display()
    )
}

/// git in `dir`, with a cleared environment: no system or global config,
/// no prompts, a fixed author.
pub fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = client_command("git");
    cmd.args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Tess Tester")
        .env("GIT_AUTHOR_EMAIL", "tess@example.com")
        .env("GIT_COMMITTER_NAME", "Tess Tester")
        .env("GIT_COMMITTER_EMAIL", "tess@example.com");
    cmd
}

/// A git command pushing (and fetching) with `key`.
pub fn git_cmd(dir: &Path, key: &Path, args: &[&str]) -> Command {
    let mut cmd = git_command(dir, args);
    cmd.env("GIT_SSH_COMMAND", ssh_command(key));
    cmd
}

/// Runs git under a deadline.
pub fn git(dir: &Path, key: &Path, args: &[&str]) -> Run {
    Run::from(
        format!("git {} (in {})", args.join(" "), dir.display()),
        run_with_timeout(git_cmd(dir, key, args), Duration::from_secs(240)),
    )
}

/// An HTTP answer as curl saw it: the one type every test looks at.
#[derive(Debug)]
pub struct Answer {
    /// 0 when nothing answered.
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

    /// Where a redirect points; empty when it is not one.
    pub fn location(&self) -> &str {
        self.header("location").unwrap_or_default()
    }

    /// The status and body, for comparing both at once.
    pub fn code_body(&self) -> (u16, &str) {
        (self.code, self.body.as_str())
    }

    /// The body as JSON, or a panic that shows it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.code, self.body))
    }
}

/// A request made with the real curl; the path goes as written (no `..`
/// squashing), a body goes as-is, and no 100-continue round trip is made.
pub struct Request {
    url: String,
    method: String,
    resolve: Option<String>,
    cacert: Option<PathBuf>,
    interface: Option<String>,
    headers: Vec<String>,
    body: Option<Vec<u8>>,
}

impl Request {
    pub fn get(url: &str) -> Request {
        Request {
            url: url.to_string(),
            method: "GET".into(),
            resolve: None,
            cacert: None,
            interface: None,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn method(mut self, method: &str) -> Request {
        self.method = method.to_string();
        self
    }

    /// curl's `--resolve HOST:PORT:ADDR`.
    pub fn resolve(mut self, resolve: &str) -> Request {
        self.resolve = Some(resolve.to_string());
        self
    }

    /// curl's `--cacert FILE`: the roots an https URL is checked against.
    pub fn cacert(mut self, file: &Path) -> Request {
        self.cacert = Some(file.to_path_buf());
        self
    }

    /// curl's `--interface ADDR`: the request comes from this local
    /// address (any of 127.0.0.0/8 is loopback: each is another client).
    pub fn interface(mut self, addr: &str) -> Request {
        self.interface = Some(addr.to_string());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push(format!("{name}: {value}"));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Request {
        self.body = Some(body.to_vec());
        self
    }

    pub fn send(self) -> Answer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let head = tmp.path().join("head");
        let out = tmp.path().join("body");
        let mut cmd = client_command("curl");
        cmd.args([
            "-sS",
            "--path-as-is",
            "--max-time",
            "30",
            "-w",
            "%{http_code}",
        ])
        .args(["-X", &self.method])
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&out)
        .args(["-H", "Expect:"]);
        for h in &self.headers {
            cmd.arg("-H").arg(h);
        }
        if let Some(b) = &self.body {
            let file = tmp.path().join("request");
            std::fs::write(&file, b).expect("write body");
            cmd.arg("--data-binary").arg(format!("@{}", file.display()));
        }
        if let Some(r) = &self.resolve {
            cmd.arg("--resolve").arg(r);
        }
        if let Some(c) = &self.cacert {
            cmd.arg("--cacert").arg(c);
        }
        if let Some(i) = &self.interface {
            cmd.arg("--interface").arg(i);
        }
        cmd.arg(&self.url);
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

/// GET `url` with curl; `resolve` is curl's `--resolve HOST:PORT:ADDR`.
pub fn curl(url: &str, resolve: Option<&str>) -> Answer {
    let r = Request::get(url);
    match resolve {
        Some(res) => r.resolve(res),
        None => r,
    }
    .send()
}

/// The toppcloud binary as a user on a laptop runs it, with a cleared
/// environment: its uv (and pip, when it falls back to it) take packages
/// from the wheelhouse only, with the suite's uv cache.
pub fn toppcloud_cmd() -> Command {
    let mut cmd = client_command(super::BIN);
    // uv reads no UV_NO_INDEX (0.13 still queries the index with it set):
    // offline, it takes what find-links and its cache hold, and nothing else.
    cmd.env("UV_CACHE_DIR", uv_cache())
        .env("UV_OFFLINE", "1")
        .env("PIP_NO_INDEX", "1")
        .env("PIP_NO_CACHE_DIR", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    if let Some(w) = built_wheelhouse() {
        cmd.env("UV_FIND_LINKS", &w).env("PIP_FIND_LINKS", &w);
    }
    cmd
}

/// `toppcloud ARGS...` run to completion under a deadline.
pub fn toppcloud(args: &[&OsStr]) -> Run {
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
        Serve::start_with_env(dir, &[])
    }

    /// `start`, with these variables added to serve's environment.
    pub fn start_with_env(dir: &Path, env: &[(&str, &OsStr)]) -> Serve {
        let logs = tempfile::tempdir().expect("tempdir");
        let log = logs.path().join("serve.log");
        let file = std::fs::File::create(&log).expect("log");
        let port = free_loopback_port();
        use std::os::unix::process::CommandExt;
        let child = toppcloud_cmd()
            .arg("serve")
            .arg(dir)
            .args(["--port", &port.to_string()])
            .envs(env.iter().copied())
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

    pub fn get(&self, path: &str) -> Answer {
        curl(&self.url(path), None)
    }

    /// Polls `path` until its body contains `text`; returns that answer.
    pub fn wait_for_body(&self, path: &str, text: &str) -> Answer {
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

// ---- A laptop and the node's SSH door ----

/// The ssh command a laptop's client config names for test nodes.
const LAPTOP_SSH: &str = "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
                   -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";

/// A laptop: a HOME whose client config names the node, reached with `key`.
pub struct Laptop {
    home: tempfile::TempDir,
}

impl Laptop {
    pub fn new(node: &Node, key: &Path) -> Laptop {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join(".config/toppcloud");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "default_node = \"dev\"\n[nodes.dev]\nurl = \"ssh://toppcloud@127.0.0.1:{}\"\nkey = {key:?}\nssh = \"{LAPTOP_SSH}\"\n",
                node.ssh_port
            ),
        )
        .expect("write config");
        Laptop { home }
    }

    /// `toppcloud ARGS...` on this laptop, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command(BIN, self.home.path());
        cmd.args(args).current_dir(self.home.path());
        cmd
    }

    pub fn toppcloud(&self, args: &[&str]) -> Run {
        let cmd = self.command(args);
        Run::from(
            format!("toppcloud {}", args.join(" ")),
            run_with_timeout(cmd, Duration::from_secs(240)),
        )
    }
}

/// A bare ssh to the node's door running `line`, as someone might by hand.
pub fn ssh(node: &Node, key: &Path, line: &str) -> Run {
    let mut cmd = client_command("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-p"])
        .arg(node.ssh_port.to_string())
        .arg("toppcloud@127.0.0.1")
        .arg(line);
    Run::from(
        format!("ssh {line}"),
        run_with_timeout(cmd, Duration::from_secs(240)),
    )
}

/// The deploy id a summary line names (`...; deploy ID`).
pub fn deploy_id(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.split("; deploy ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
        .next_back()
        .unwrap_or_else(|| panic!("no deploy id in:\n{text}"))
}

/// `s` as one query-string value (paths keep their slashes).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
