//! The test harness: a real node (the built binary) with its own data dir and
//! private Apache on free loopback ports, driven by the real clients.
//!
//! - `env`: what every process the tests start sees (a cleared environment
//!   and a HOME of the test's own) and the wheelhouse Python packages come
//!   from;
//! - `node`: a node and its configuration;
//! - `clients`: git, ssh, curl (and the one HTTP answer type) and the
//!   laptop side of the CLI (`toppcloud init`, `toppcloud serve`);
//! - `apps`: apps to deploy, the gate a test holds an app's import at, and
//!   an upstream repository standing in for a forge's;
//! - `load`: a load generator counting the requests that fail;
//! - here: waiting on conditions, and running commands under deadlines.

mod apps;
mod clients;
mod env;
mod load;
mod node;

pub use apps::*;
pub use clients::*;
pub use env::*;
pub use load::*;
pub use node::*;

use std::path::PathBuf;
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

/// A command left running while the test does something else: in its own
/// process group, its output in files the test can watch as it comes.
/// Killed, with its whole group, if dropped before it finished.
pub struct Background {
    what: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    pub fn start(what: impl Into<String>, mut cmd: Command) -> Background {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn");
        Background {
            what: what.into(),
            child: Some(child),
            _dir: dir,
            out,
            err,
        }
    }

    fn output(&self) -> (String, String) {
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        (read(&self.out), read(&self.err))
    }

    /// Waits until the command has printed `text` (on stdout or stderr).
    pub fn wait_printed(&mut self, text: &str, limit: Duration) {
        wait_for(&format!("{} to print {text:?}", self.what), limit, || {
            let (out, err) = self.output();
            if out.contains(text) || err.contains(text) {
                return Some(());
            }
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} ended ({status}) without printing {text:?}\nstdout:\n{out}\nstderr:\n{err}",
                    self.what
                );
            }
            None
        });
    }

    /// Waits for the command to end by itself; what it printed.
    pub fn finish(mut self, limit: Duration) -> Run {
        let mut child = self.child.take().expect("running");
        let status = wait_for(&format!("{} to finish", self.what), limit, || {
            child.try_wait().expect("wait")
        });
        let (stdout, stderr) = self.output();
        Run {
            what: self.what.clone(),
            code: status.code(),
            stdout,
            stderr,
        }
    }

    /// SIGKILL to the whole group: the command and everything it started
    /// vanish at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The processes whose parent is `pid` (zombies included: a child is gone
/// only once its parent has reaped it).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// A loopback port that was free a moment ago (bound to port 0, released).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether the tests run as root (CI does): a root node runs each site as
/// its own account, which some tests are about.
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Skips (loudly) where the node cannot create accounts: the test is about
/// what a root node lets a site do.
macro_rules! root_only {
    () => {
        if !crate::support::is_root() {
            eprintln!(
                "skipped: needs root (a node run by a normal user runs every site as itself)"
            );
            return;
        }
    };
}
