//! What gets deployed: apps written file by file, app bodies, the gate a
//! test holds an app's import at, and an upstream repository standing in
//! for a forge's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{git, git_command, run_with_timeout, wait_for};

/// A main.py whose import takes `secs` seconds, then answers `body`: for
/// tests about a slow app itself (a build that stays silent, a push that
/// outlasts a timeout). To act while a deploy is under way, use a `Gate`.
pub fn slow_main_py(secs: u32, body: &str) -> String {
    format!(
        "import time\ntime.sleep({secs})\n\
         def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [{body:?}.encode()]\n"
    )
}

/// A gate a test holds an app at while it acts: the app's import says it
/// got there (creates `reached`), then waits until the test opens the gate
/// (creates `open`). While an import waits at the gate, the deploy that
/// started it is checking its release and holds the site's turn.
pub struct Gate {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Gate {
    pub fn new() -> Gate {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("toppcloud-gate-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        // On a root node the app runs as its site's own account.
        let path = dir.path().join("gate");
        std::fs::create_dir(&path).expect("mkdir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Gate { _dir: dir, path }
    }

    /// The file an app creates when it reaches the gate.
    pub fn reached_file(&self) -> PathBuf {
        self.path.join("reached")
    }

    /// A main.py whose import waits at this gate (failing if it is not
    /// opened within 5 minutes), then answers `body`.
    pub fn main_py(&self, body: &str) -> String {
        let reached = self.reached_file().display().to_string();
        let open = self.path.join("open").display().to_string();
        format!(
            "import os, time\n\
             open({reached:?}, 'a').close()\n\
             _deadline = time.monotonic() + 300\n\
             while not os.path.exists({open:?}):\n    \
             if time.monotonic() > _deadline:\n        \
             raise RuntimeError('the test never opened the gate')\n    \
             time.sleep(0.05)\n\
             def application(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [{body:?}.encode()]\n"
        )
    }

    /// Waits until an app has reached the gate.
    pub fn wait_reached(&self, limit: Duration) {
        wait_for("an app to reach the gate", limit, || {
            self.reached_file().exists().then_some(())
        });
    }

    /// Lets every app waiting at the gate (and every later one) through.
    pub fn open(&self) {
        std::fs::write(self.path.join("open"), "").expect("open the gate");
    }
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

    /// An app (version 1) whose `main.py` is `main_py`.
    pub fn wsgi(name: &str, main_py: &str) -> App {
        let app = App::new();
        app.file(
            "app.ini",
            &format!("[production]\napp_name = {name}\nversion = 1\nrunner = main.py\n"),
        )
        .file("main.py", main_py);
        app
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
        let out = run_with_timeout(git_command(&self.path, args), Duration::from_secs(60));
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
