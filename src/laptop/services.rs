//! What `toppcloud serve` gives an app besides its code, under the names a
//! node uses (README, "Services"):
//!
//! - every app: `CONFIG_SECRET`, made once per app and kept, and `TEMP` and
//!   `TMPDIR`, a directory of its own emptied at each start of `serve`;
//! - `service.files`: `CONFIG_FILES`, a directory of the laptop's own for
//!   the app, or with `service.files = PATH` the app's own `PATH` (on a node
//!   that path is a link to the site's persistent directory);
//! - `service.postgresql` and `service.postgis`: `CONFIG_PG_*` and
//!   `DATABASE_URL`, for the database `[devel] postgresql` names in the
//!   laptop's config.
//!
//! What is kept lives in `$XDG_DATA_HOME/toppcloud/serve/<app_name>`
//! (default `~/.local/share/...`), readable by its owner only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::app_ini::Services;
use crate::database::Database;
use crate::laptop::config::{ClientConfig, config_path};

/// The variables an app sees for its services, and the directory inside it
/// that is the app's data rather than its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEnv {
    pub vars: Vec<(&'static str, String)>,
    /// `service.files = PATH`, relative to the app: what the app writes
    /// there is no change of the app, so `serve` does not watch it.
    pub files_link: Option<PathBuf>,
}

/// The names of the contract, so that the laptop's own values of them (a
/// `DATABASE_URL` exported in a shell) never reach an app that was not
/// given them, as on a node.
pub fn is_contract_name(name: &str) -> bool {
    name.starts_with("CONFIG_") || name == "DATABASE_URL"
}

/// What `serve` keeps across the restarts of one run.
#[derive(Debug, Default)]
pub struct Provider {
    /// The apps whose temporary directory this run has emptied.
    emptied: BTreeSet<String>,
}

impl Provider {
    /// The environment of the app `app_name` at `root` for `services`.
    /// Checks come before anything is made: a missing database refuses the
    /// app without touching its directory.
    pub fn env(&mut self, root: &Path, app_name: &str, services: &Services) -> Result<ServiceEnv> {
        let mut vars = Vec::new();
        if let Some(postgis) = services.postgres {
            vars.extend(postgres_env(postgis)?);
        }
        let data = AppData::open(&serve_data_dir()?, app_name)?;
        let mut files_link = None;
        match &services.files {
            None => {}
            Some(None) => vars.push(("CONFIG_FILES", display(&data.files_dir()?))),
            Some(Some(link)) => {
                vars.push(("CONFIG_FILES", display(&linked_files_dir(root, link)?)));
                files_link = Some(PathBuf::from(link));
            }
        }
        vars.push(("CONFIG_SECRET", data.secret()?));
        let empty = self.emptied.insert(app_name.to_owned());
        let temp = display(&data.temp_dir(empty)?);
        vars.push(("TEMP", temp.clone()));
        vars.push(("TMPDIR", temp));
        Ok(ServiceEnv { vars, files_link })
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// `$XDG_DATA_HOME/toppcloud/serve`, else `~/.local/share/toppcloud/serve`.
pub fn serve_data_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("toppcloud/serve"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/toppcloud/serve")),
        None => bail!("cannot find a data directory for toppcloud serve: HOME is not set"),
    }
}

/// `service.files = PATH`: the app's own `PATH`, made if missing. On a node
/// it is a link to the site's persistent directory; here the app simply
/// writes next to its code.
fn linked_files_dir(root: &Path, link: &str) -> Result<PathBuf> {
    let dir = root.join(link);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => bail!(
            "service.files = {link}: {} is not a directory\n\
             hint: on a node that path is a link to the site's files directory; \
             move the file away or name another path in app.ini",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir).with_context(|| {
                format!("service.files = {link}: cannot create {}", dir.display())
            })?;
            Ok(dir)
        }
        Err(e) => Err(e).with_context(|| format!("service.files = {link}: {}", dir.display())),
    }
}

/// One app's directory of kept data: `files/`, `tmp/` and `secret`.
pub struct AppData {
    dir: PathBuf,
}

impl AppData {
    /// `base/<app_name>`, made if missing (0700). `app_name` is app.ini's,
    /// which is checked to be a plain name.
    pub fn open(base: &Path, app_name: &str) -> Result<AppData> {
        std::fs::create_dir_all(base)
            .with_context(|| format!("cannot create {}", base.display()))?;
        let dir = base.join(app_name);
        crate::dirs::create_dir(&dir, 0o700, None)?;
        Ok(AppData { dir })
    }

    /// The app's `CONFIG_FILES` without a link path: kept across runs.
    pub fn files_dir(&self) -> Result<PathBuf> {
        let dir = self.dir.join("files");
        crate::dirs::create_dir(&dir, 0o700, None)?;
        Ok(dir)
    }

    /// `TEMP`: emptied first when `empty`.
    pub fn temp_dir(&self, empty: bool) -> Result<PathBuf> {
        let dir = self.dir.join("tmp");
        if empty {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot empty {}", dir.display())),
            }
        }
        crate::dirs::create_dir(&dir, 0o700, None)?;
        Ok(dir)
    }

    /// `CONFIG_SECRET`: 64 hex digits made at the first run and kept in
    /// `secret` (0600). Two runs starting at once agree: the file appears
    /// whole, once (a hard link that never replaces one already there).
    pub fn secret(&self) -> Result<String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join("secret");
        if let Some(s) = read_secret(&path)? {
            return Ok(s);
        }
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let tmp = self.dir.join(format!(
            ".secret-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{secret}\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => Ok(secret),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                read_secret(&path)?.with_context(|| format!("{} appeared empty", path.display()))
            }
            Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
        }
    }
}

fn read_secret(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let s = text.trim();
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!(
                    "{} does not hold a secret (one line, no spaces)\n\
                     hint: remove it and toppcloud serve makes a new one",
                    path.display()
                );
            }
            Ok(Some(s.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The `CONFIG_PG_*` variables and `DATABASE_URL` of the database the
/// laptop's config names, or why there is none.
fn postgres_env(postgis: bool) -> Result<Vec<(&'static str, String)>> {
    let service = if postgis { "postgis" } else { "postgresql" };
    let path = config_path()?;
    let config = ClientConfig::load(&path)?;
    let Some(url) = config.devel.as_ref().and_then(|d| d.postgresql.as_deref()) else {
        let why = if path.exists() {
            "has no [devel] postgresql"
        } else {
            "does not exist"
        };
        bail!(
            "app.ini asks for service.{service}, and toppcloud serve has no database to give it: \
             {path} {why}\n\
             hint: add a database of yours to {path}:\n\
             [devel]\n\
             postgresql = \"postgresql://USER:PASSWORD@localhost:5432/DBNAME\"",
            path = path.display()
        );
    };
    let url =
        Database::parse(url).with_context(|| format!("{}: [devel] postgresql", path.display()))?;
    Ok(url.env())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::{percent_decode, percent_encode};

    fn parse(url: &str) -> Database {
        Database::parse(url).unwrap_or_else(|e| panic!("{url}: {e:#}"))
    }

    fn refused(url: &str) -> String {
        match Database::parse(url) {
            Ok(u) => panic!("{url} parsed: {u:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_full_url_is_decoded() {
        let u = parse("postgresql://u:p%40ss@127.0.0.1:5999/db");
        assert_eq!(
            u,
            Database {
                user: "u".into(),
                password: "p@ss".into(),
                host: "127.0.0.1".into(),
                port: 5999,
                dbname: "db".into(),
            }
        );
        assert_eq!(u.url("postgres"), "postgres://u:p%40ss@127.0.0.1:5999/db");
        assert_eq!(
            u.url("postgresql"),
            "postgresql://u:p%40ss@127.0.0.1:5999/db"
        );
        let u = parse("postgres://me%20too:a%3Ab%2Fc%C3%A9@db.example/my%20db");
        assert_eq!(
            (u.user.as_str(), u.password.as_str(), u.dbname.as_str()),
            ("me too", "a:b/cé", "my db")
        );
        assert_eq!(
            u.url("postgres"),
            "postgres://me%20too:a%3Ab%2Fc%C3%A9@db.example:5432/my%20db"
        );
    }

    #[test]
    fn the_port_defaults_and_the_password_is_optional() {
        let u = parse("postgresql://me@localhost/blog");
        assert_eq!((u.port, u.password.as_str()), (5432, ""));
        assert_eq!(u.url("postgres"), "postgres://me@localhost:5432/blog");
        assert_eq!(parse("postgresql://me:@localhost:/blog").port, 5432);
        // A password may hold '@': the last one ends the user part.
        assert_eq!(parse("postgresql://me:a@b@h/d").password, "a@b");
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets_in_urls_only() {
        let u = parse("postgresql://me:pw@[::1]:5433/blog");
        assert_eq!((u.host.as_str(), u.port), ("::1", 5433));
        assert_eq!(u.url("postgres"), "postgres://me:pw@[::1]:5433/blog");
        assert_eq!(parse("postgresql://me@[fe80::1]/blog").port, 5432);
    }

    #[test]
    fn a_socket_directory_is_the_host() {
        let u = parse("postgresql://me@/blog?host=/var/run/postgresql");
        assert_eq!(u.host, "/var/run/postgresql");
        assert_eq!(u.port, 5432);
        assert_eq!(
            u.url("postgresql"),
            "postgresql://me@:5432/blog?host=%2Fvar%2Frun%2Fpostgresql"
        );
        let env = u.env();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CONFIG_PG_HOST"), Some("/var/run/postgresql"));
        assert_eq!(get("CONFIG_PG_PORT"), Some("5432"));
        assert_eq!(get("CONFIG_PG_PASSWORD"), Some(""));
        let u = parse("postgres://me@:5433/blog?host=%2Ftmp%2Fpg");
        assert_eq!((u.host.as_str(), u.port), ("/tmp/pg", 5433));
        let u = parse("postgresql://me@%2Ftmp%2Fpg:5433/blog");
        assert_eq!((u.host.as_str(), u.port), ("/tmp/pg", 5433));
    }

    #[test]
    fn the_environment_has_the_nodes_names() {
        let env = parse("postgresql://u:p%40ss@127.0.0.1:5999/db").env();
        assert_eq!(
            env,
            vec![
                ("CONFIG_PG_DBNAME", "db".to_string()),
                ("CONFIG_PG_USER", "u".into()),
                ("CONFIG_PG_PASSWORD", "p@ss".into()),
                ("CONFIG_PG_HOST", "127.0.0.1".into()),
                ("CONFIG_PG_PORT", "5999".into()),
                (
                    "CONFIG_PG_SQLALCHEMY",
                    "postgresql://u:p%40ss@127.0.0.1:5999/db".into()
                ),
                (
                    "DATABASE_URL",
                    "postgres://u:p%40ss@127.0.0.1:5999/db".into()
                ),
            ]
        );
    }

    #[test]
    fn wrong_urls_say_what_is_wrong() {
        for (url, says) in [
            ("mysql://u@h/d", "must look like"),
            ("postgresql://u@h", "names no database"),
            ("postgresql://u@h/", "names no database"),
            ("postgresql://h:5432/d", "names no user"),
            ("postgresql://:pw@h/d", "names no user"),
            ("postgresql://u@/d", "names no host"),
            ("postgresql://u@h:99999/d", "is not a port"),
            ("postgresql://u@h:0/d", "is not a port"),
            ("postgresql://u@h:x/d", "is not a port"),
            ("postgresql://u:bad%2@h/d", "the password"),
            ("postgresql://u:bad%zz@h/d", "two hex digits"),
            ("postgresql://u:%00@h/d", "control characters"),
            ("postgresql://u@h/d/e", "one database name"),
            ("postgresql://u@h/d?sslmode=require", "not understood"),
            ("postgresql://u@h/d?host=/tmp", "names its host twice"),
            ("postgresql://u@/d?host=relative", "socket directory"),
            ("postgresql://u@h/d#x", "fragment"),
            ("postgresql://u@[::1/d", "missing its ']'"),
            ("postgresql://u@[nope]/d", "not an IPv6 address"),
        ] {
            let e = refused(url);
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn encoding_round_trips() {
        let s = "p@ss:w/o%rd?#[] é";
        assert_eq!(
            percent_encode(s),
            "p%40ss%3Aw%2Fo%25rd%3F%23%5B%5D%20%C3%A9"
        );
        assert_eq!(percent_decode(&percent_encode(s)).unwrap(), s);
        assert_eq!(percent_encode("abc-._~XYZ09"), "abc-._~XYZ09");
    }

    #[test]
    fn the_secret_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let data = AppData::open(tmp.path(), "blog").unwrap();
        let first = data.secret().unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            AppData::open(tmp.path(), "blog").unwrap().secret().unwrap(),
            first
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join("blog/secret")), 0o600);
        assert_eq!(mode(&tmp.path().join("blog")), 0o700);
        let other = AppData::open(tmp.path(), "wiki").unwrap().secret().unwrap();
        assert_ne!(other, first);
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("blog"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["secret"]);
        std::fs::write(tmp.path().join("wiki/secret"), "\n").unwrap();
        let e = AppData::open(tmp.path(), "wiki")
            .unwrap()
            .secret()
            .unwrap_err();
        assert!(format!("{e:#}").contains("remove it"), "{e:#}");
    }

    #[test]
    fn temp_is_emptied_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let data = AppData::open(tmp.path(), "blog").unwrap();
        let dir = data.temp_dir(true).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), "x").unwrap();
        assert!(data.temp_dir(false).unwrap().join("sub/f").exists());
        let again = data.temp_dir(true).unwrap();
        assert_eq!(again, dir);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_files_link_is_the_apps_own_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = linked_files_dir(root, "data/uploads").unwrap();
        assert_eq!(dir, root.join("data/uploads"));
        assert!(dir.is_dir());
        std::fs::write(dir.join("kept"), "x").unwrap();
        assert!(
            linked_files_dir(root, "data/uploads")
                .unwrap()
                .join("kept")
                .exists()
        );
        std::fs::write(root.join("instance"), "a file").unwrap();
        let e = linked_files_dir(root, "instance").unwrap_err();
        assert!(format!("{e:#}").contains("is not a directory"), "{e:#}");
    }
}
