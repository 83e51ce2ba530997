//! What the processes the tests start see: never the developer's
//! environment. Each gets a cleared environment with PATH, LANG and a HOME
//! in the test's own temporary directories (so no `~/.gitconfig`, `~/.curlrc`,
//! uv or pip setting, proxy or index of the developer's reaches them), and
//! Python packages come from a local wheelhouse, never from an index.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where provisioning/run-tests says the wheelhouse is.
const WHEELHOUSE_VAR: &str = "TOPPCLOUD_TEST_WHEELHOUSE";

/// `program` with a cleared environment: the caller's PATH (where git, uv
/// and curl are), LANG=C.UTF-8 and `home` as HOME.
pub fn clean_command(program: impl AsRef<OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("LANG", "C.UTF-8")
        .env("HOME", home);
    cmd
}

/// An empty HOME for the clients (git, ssh, rsync, curl, the CLI), made
/// afresh once per run under the test target's own temporary directory.
pub fn client_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("client-home");
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).expect("client home");
        home
    })
}

/// A client program (git, ssh, curl...) with a cleared environment and the
/// clients' empty HOME.
pub fn client_command(program: impl AsRef<OsStr>) -> Command {
    clean_command(program, client_home())
}

/// uv's cache for the venvs the suite builds as root or as the caller
/// (a root node's sites each keep their own).
pub fn uv_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("uv-cache")
}

/// The wheelhouse provisioning/run-tests built, if the environment names
/// one: a directory of wheels every node (`[build] find_links`) and the CLI
/// (`UV_FIND_LINKS`) install from, with no index reached.
pub fn built_wheelhouse() -> Option<PathBuf> {
    let dir = std::env::var_os(WHEELHOUSE_VAR)?;
    std::fs::canonicalize(dir).ok().filter(|d| d.is_dir())
}

/// The wheelhouse, for a test that installs Python packages: without one it
/// fails at once, saying how to get one (rather than failing later with an
/// installer's "not found").
pub fn require_wheelhouse() -> PathBuf {
    built_wheelhouse().unwrap_or_else(|| {
        let set = std::env::var(WHEELHOUSE_VAR)
            .map(|v| format!(" ({WHEELHOUSE_VAR}={v} is not a directory)"))
            .unwrap_or_default();
        panic!(
            "this test installs Python packages, which come from a local wheelhouse, \
             never from an index{set}: run provisioning/run-tests, which builds \
             target/wheelhouse and exports {WHEELHOUSE_VAR}, or export \
             {WHEELHOUSE_VAR}=<a directory of wheels> yourself"
        )
    })
}
