//! PostgreSQL (and PostGIS) for the sites that ask for it: one database and
//! one role per site, made at the first deploy that names the service and
//! kept after. The role owns its database, and can connect to nothing else:
//! `CONNECT` on the site's database (and, on a cluster the node runs, on
//! `postgres` and `template1`) is revoked from `PUBLIC`.
//!
//! Three kinds of cluster (`Cluster`): a private one the node runs under its
//! data dir (a dev node, the tests), Debian's own (`main`), and an existing
//! cluster elsewhere reached as an admin role with a password. On the first
//! two the node is the superuser through the cluster's Unix account (peer
//! authentication over the socket); sites always authenticate with a
//! password (scram-sha-256).
//!
//! All SQL is written here, from names the node derives itself (quoted as
//! identifiers and literals all the same) and fed to `psql` on its stdin
//! with `ON_ERROR_STOP`; no connection detail or password is ever on a
//! command line or in a shell. A site's password is made once, kept in a
//! root-only file, and handed to the server only as a SCRAM verifier, so the
//! server, its logs and `pg_stat_activity` never see it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64ct::{Base64, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::accounts::{self, Account};
use crate::config::{PostgresConfig, PostgresMode};
use crate::database::{Database, percent_decode, percent_encode};
use crate::dirs::create_dir;
use crate::layout::Layout;
use crate::names::SiteName;

/// Where Debian installs each major version's programs.
const DEBIAN_LIB: &str = "/usr/lib/postgresql";
/// The socket directory of Debian's clusters.
pub const SYSTEM_SOCKET_DIR: &str = "/var/run/postgresql";
pub const DEFAULT_PORT: u16 = 5432;
/// The superuser role of a cluster the node administers, and the Unix
/// account Debian's package makes to run clusters (initdb refuses root).
const SUPERUSER: &str = "postgres";
const CLUSTER_ACCOUNT: &str = "postgres";
/// The major version whose packages provisioning installs.
const PACKAGED_MAJOR: u32 = 15;
/// Role and database names: this prefix, the site name made safe, a hash.
const NAME_PREFIX: &str = "tc_";
/// PostgreSQL's NAMEDATALEN - 1: longer identifiers are cut silently.
const MAX_IDENTIFIER: usize = 63;
const HASH_HEX: usize = 8;
/// How long one psql session may take (creating a database copies a
/// template; PostGIS creates a few thousand objects).
const PSQL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long initdb, or a cluster's start or stop, may take.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(180);
/// SCRAM iterations, as PostgreSQL's own default.
const SCRAM_ITERATIONS: u32 = 4096;

fn install_hint() -> String {
    format!(
        "apt-get install postgresql postgresql-{PACKAGED_MAJOR}-postgis-3 \
         (provisioning/install-deps does)"
    )
}

/// Where the node's sites get their databases, from `[services.postgresql]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cluster {
    /// A cluster of the node's own in `dir` (data, socket and log), started
    /// and stopped with the node. Port 0: a free port, picked once and kept.
    Private { dir: PathBuf, port: u16 },
    /// Debian's cluster, run by the system, reached over its socket.
    System { socket_dir: PathBuf, port: u16 },
    /// An existing cluster, reached as an admin role with a password.
    External {
        url: AdminUrl,
        password_file: PathBuf,
    },
}

impl Cluster {
    pub fn from_config(cfg: &PostgresConfig, layout: &Layout) -> Result<Cluster> {
        if let Some(url) = &cfg.url {
            let url = AdminUrl::parse(url).context("[services.postgresql] url")?;
            let password_file = cfg.password_file.clone().context(
                "[services.postgresql] url needs password_file (the admin's password, in a file)",
            )?;
            return Ok(Cluster::External { url, password_file });
        }
        Ok(match cfg.mode() {
            PostgresMode::Private => Cluster::Private {
                dir: layout.postgres_dir(),
                port: cfg.port.unwrap_or(0),
            },
            PostgresMode::System => Cluster::System {
                socket_dir: PathBuf::from(SYSTEM_SOCKET_DIR),
                port: cfg.port.filter(|p| *p != 0).unwrap_or(DEFAULT_PORT),
            },
        })
    }
}

/// `postgresql://ADMIN@HOST[:PORT][/DB][?sslmode=MODE]`: an existing
/// cluster and the role the node administers it as. The password is never
/// part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// The database the node connects to for its own work.
    pub dbname: String,
    pub sslmode: Option<String>,
}

impl AdminUrl {
    pub fn parse(url: &str) -> Result<AdminUrl> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .with_context(|| format!("{url:?} must look like postgresql://ADMIN@HOST:PORT/"))?;
        if rest.contains('#') {
            bail!("{url:?} may not have a #fragment");
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
            bail!("{url:?} names no admin role: postgresql://ADMIN@HOST:PORT/");
        };
        if userinfo.contains(':') {
            bail!(
                "{url:?} holds a password: put it in password_file instead, where only \
                 its owner can read it"
            );
        }
        let user = percent_decode(userinfo).with_context(|| format!("{url:?}: the role"))?;
        if user.is_empty() {
            bail!("{url:?} names no admin role: postgresql://ADMIN@HOST:PORT/");
        }
        let (host, port) = split_host_port(hostport).with_context(|| format!("{url:?}"))?;
        let dbname = if path.is_empty() {
            SUPERUSER.to_string()
        } else {
            if path.contains('/') {
                bail!("{url:?}: the path is one database name");
            }
            percent_decode(path).with_context(|| format!("{url:?}: the database"))?
        };
        let mut sslmode = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("sslmode", mode))
                    if [
                        "disable",
                        "allow",
                        "prefer",
                        "require",
                        "verify-ca",
                        "verify-full",
                    ]
                    .contains(&mode) =>
                {
                    sslmode = Some(mode.to_string());
                }
                _ => bail!("{url:?}: {pair:?} is not understood (only sslmode=... is)"),
            }
        }
        Ok(AdminUrl {
            user,
            host,
            port,
            dbname,
            sslmode,
        })
    }
}

impl fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgresql://{}@{}:{}/{}",
            percent_encode(&self.user),
            url_host(&self.host),
            self.port,
            percent_encode(&self.dbname)
        )
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .context("an IPv6 address is missing its ']'")?;
        if !host
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            bail!("{host:?} is not an IPv6 address");
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').context("junk after the IPv6 address")?),
        };
        (host, port)
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            bail!("{host:?} is not a host name or address");
        }
        (host, port)
    };
    if host.is_empty() {
        bail!("no host: postgresql://ADMIN@HOST:PORT/");
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => bail!("{p:?} is not a port"),
        },
    };
    Ok((host.to_string(), port))
}

/// The name of a site's role, which is also the name of its database:
/// `tc_`, the site name with every character but letters and digits made
/// `_` (cut to fit), and 8 hex digits of its SHA-256, so that two sites
/// never share one even when they read the same once made safe.
pub fn db_name(site: &SiteName) -> String {
    let hash = hex::encode(Sha256::digest(site.as_str().as_bytes()));
    let room = MAX_IDENTIFIER - NAME_PREFIX.len() - 1 - HASH_HEX;
    let safe: String = site
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(room)
        .collect();
    format!("{NAME_PREFIX}{safe}_{}", &hash[..HASH_HEX])
}

/// The comment that marks a role (and a database) as made by the node for
/// `site`: one the node finds without it is not the node's to take.
fn marker(site: &SiteName) -> String {
    format!("toppcloud site {}", site.as_str())
}

/// What a site's app needs to reach its database.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub dbname: String,
    pub user: String,
    pub password: String,
    /// A host name or address (TCP).
    pub host: String,
    pub port: u16,
    /// The socket directory site accounts may also connect through (a
    /// private cluster), with the same password.
    pub socket_dir: Option<PathBuf>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &"***")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("socket_dir", &self.socket_dir)
            .finish()
    }
}

impl Credentials {
    /// The database as the app is given it.
    pub fn database(&self) -> Database {
        Database {
            user: self.user.clone(),
            password: self.password.clone(),
            host: self.host.clone(),
            port: self.port,
            dbname: self.dbname.clone(),
        }
    }

    /// `scheme://user:password@host:port/dbname`, every part percent-encoded.
    pub fn url(&self, scheme: &str) -> String {
        self.database().url(scheme)
    }

    /// The app's environment: `CONFIG_PG_*` and `DATABASE_URL`.
    pub fn env(&self) -> BTreeMap<String, String> {
        self.database()
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }
}

/// A host as a URL writes it: an IPv6 address in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// An SQL identifier, quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal, quoted as PostgreSQL's own `quote_literal` does
/// (an `E''` string when it holds a backslash), so it reads the same
/// whatever `standard_conforming_strings` says.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802,
/// 7677): what `ALTER ROLE ... PASSWORD` is given instead of the password.
fn scram_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    type HmacSha256 = Hmac<Sha256>;
    let hmac = |key: &[u8], parts: &[&[u8]]| -> [u8; 32] {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    };
    // Hi(): PBKDF2 with HMAC-SHA-256, one block. The node's passwords are
    // ASCII, which SASLprep leaves as they are.
    let mut u = hmac(password.as_bytes(), &[salt, &1u32.to_be_bytes()]);
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &[&u]);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let client_key = hmac(&salted, &[b"Client Key"]);
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(&salted, &[b"Server Key"]);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        Base64::encode_string(salt),
        Base64::encode_string(&stored_key),
        Base64::encode_string(&server_key)
    )
}

/// The site's password: the one kept in `<secrets_dir>/<site>.postgresql`
/// (root's, 0600), or a new random one written there first, so a role
/// never has a password the node has forgotten.
fn site_password(secrets_dir: &Path, site: &SiteName) -> Result<String> {
    create_dir(secrets_dir, 0o700, None)?;
    let file = secrets_dir.join(format!("{}.postgresql", site.as_str()));
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let pw = text.trim();
            if (32..=256).contains(&pw.len()) && pw.bytes().all(|b| b.is_ascii_graphic()) {
                return Ok(pw.to_string());
            }
            tracing::warn!(
                "{} does not hold a usable password: making a new one",
                file.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
    let pw = hex::encode(rand::random::<[u8; 24]>());
    crate::atomic::write(&file, format!("{pw}\n").as_bytes())?;
    Ok(pw)
}

/// The PostgreSQL programs of one major version, Debian's way:
/// `/usr/lib/postgresql/<major>/bin`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub major: u32,
    pub dir: PathBuf,
}

impl Binaries {
    /// The newest installed version that has `program`.
    pub fn newest(program: &str) -> Result<Binaries> {
        let mut majors: Vec<u32> = std::fs::read_dir(DEBIAN_LIB)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        majors.sort_unstable();
        for major in majors.into_iter().rev() {
            let b = Binaries::of(major);
            if b.program(program).is_file() {
                return Ok(b);
            }
        }
        bail!(
            "PostgreSQL is not installed (no {DEBIAN_LIB}/*/bin/{program})\nhint: {}",
            install_hint()
        )
    }

    /// Version `major`, which must have `program`.
    pub fn version(major: u32, program: &str) -> Result<Binaries> {
        let b = Binaries::of(major);
        if !b.program(program).is_file() {
            bail!(
                "PostgreSQL {major} is not installed (no {})\nhint: apt-get install postgresql-{major} \
                 postgresql-{major}-postgis-3",
                b.program(program).display()
            );
        }
        Ok(b)
    }

    fn of(major: u32) -> Binaries {
        Binaries {
            major,
            dir: Path::new(DEBIAN_LIB).join(major.to_string()).join("bin"),
        }
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What a child process said, and how it ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of its output, indented, for an error.
    fn tail(&self) -> String {
        let text = format!("{}\n{}", self.stdout.trim_end(), self.stderr.trim_end());
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let from = lines.len().saturating_sub(20);
        lines[from..]
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A command with nothing of the node's environment but `PATH`, run from
/// `/` (the cluster's account may not enter the node's directory).
fn command(program: &Path, run_as: Option<&Account>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .current_dir("/");
    if let Some(a) = run_as {
        a.apply(&mut cmd);
    }
    cmd
}

/// Runs `cmd` to its end within `limit`, `input` on its stdin.
async fn run(mut cmd: Command, what: &str, input: Option<&str>, limit: Duration) -> Result<Ran> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let text = text.to_string();
        // A child that exits early closes its end: the error it prints
        // says why, not the broken pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not finish within {limit:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    Ok(Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// How the node reaches a cluster as its administrator.
#[derive(Debug, Clone)]
struct Admin {
    psql: PathBuf,
    host: String,
    port: u16,
    user: String,
    /// The database the node connects to for its own work.
    dbname: String,
    sslmode: Option<String>,
    /// Peer authentication: psql runs as the cluster's account.
    run_as: Option<Account>,
    /// Password authentication: the admin's password, read at each use.
    password_file: Option<PathBuf>,
}

/// Why a psql session failed.
enum PsqlError {
    /// It could not connect, or lost the connection (psql's exit code 2).
    Unreachable(String),
    /// A statement failed (exit 3), or psql itself did.
    Failed(String),
    Other(anyhow::Error),
}

impl Admin {
    /// Runs `sql` in database `dbname`, one statement after another
    /// (outside a transaction: CREATE DATABASE needs that), stopping at the
    /// first error. Answers rows unaligned, fields split by `|`.
    async fn psql(&self, dbname: &str, sql: &str) -> Result<String, PsqlError> {
        let mut cmd = command(&self.psql, self.run_as.as_ref());
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "|"])
            .env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGDATABASE", dbname)
            .env("PGAPPNAME", "toppcloud")
            .env("PGCONNECT_TIMEOUT", "10");
        if let Some(mode) = &self.sslmode {
            cmd.env("PGSSLMODE", mode);
        }
        if let Some(file) = &self.password_file {
            let password = read_password_file(file).map_err(PsqlError::Other)?;
            cmd.env("PGPASSWORD", password);
        }
        let ran = run(cmd, "psql", Some(sql), PSQL_TIMEOUT)
            .await
            .map_err(PsqlError::Other)?;
        match ran.code {
            Some(0) => Ok(ran.stdout),
            Some(2) => Err(PsqlError::Unreachable(ran.tail())),
            _ => Err(PsqlError::Failed(ran.tail())),
        }
    }
}

/// The admin's password from its file, which only its owner may read.
fn read_password_file(file: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).with_context(|| {
        format!(
            "cannot read [services.postgresql] password_file {}",
            file.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} holds the PostgreSQL admin's password and other users can read it (mode {mode:o})\nhint: chmod 600 {}",
            file.display(),
            file.display()
        );
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() || password.contains('\n') {
        bail!(
            "{} must hold the admin's password alone, on one line",
            file.display()
        );
    }
    Ok(password.to_string())
}

/// What the node knows of a private cluster it runs.
#[derive(Debug, Clone)]
struct Private {
    pg_ctl: PathBuf,
    data: PathBuf,
    log: PathBuf,
}

/// A cluster the node makes its sites' databases on.
#[derive(Debug)]
pub struct Postgres {
    admin: Admin,
    /// Where sites connect (TCP).
    host: String,
    port: u16,
    socket_dir: Option<PathBuf>,
    private: Option<Private>,
    /// What to tell someone whose cluster cannot be reached.
    unreachable_hint: String,
    /// Whether to revoke `PUBLIC`'s access to `postgres` and `template1`
    /// (clusters the node owns), done before the first site is made.
    owns_cluster: bool,
    prepared: AtomicBool,
    /// Site setups, one at a time: concurrent grants on one object fail.
    lock: tokio::sync::Mutex<()>,
}

/// The state of a role or a database named for a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    None,
    Ours,
    Other,
}

impl Found {
    fn parse(s: &str) -> Option<Found> {
        match s {
            "none" => Some(Found::None),
            "ours" => Some(Found::Ours),
            "other" => Some(Found::Other),
            _ => None,
        }
    }
}

impl Postgres {
    /// The cluster `cluster` names: a private one is started (made first
    /// if need be); the others are only reached at the first `ensure_site`,
    /// so a cluster that is down fails the deploy that needs it, not the
    /// node.
    pub async fn open(cluster: &Cluster) -> Result<Postgres> {
        match cluster {
            Cluster::Private { dir, port } => Postgres::start_private(dir, *port).await,
            Cluster::System { socket_dir, port } => Postgres::system(socket_dir, *port),
            Cluster::External { url, password_file } => Postgres::external(url, password_file),
        }
    }

    /// Debian's cluster, administered as the `postgres` account over its
    /// socket; sites connect to 127.0.0.1 (Debian's `pg_hba.conf` lets
    /// local sockets in by peer authentication only).
    pub fn system(socket_dir: &Path, port: u16) -> Result<Postgres> {
        let bins = Binaries::newest("psql")?;
        let run_as = if accounts::isolating() {
            Some(cluster_account()?)
        } else if accounts::current()?.name == CLUSTER_ACCOUNT {
            None
        } else {
            bail!(
                "[services.postgresql] mode = \"system\" needs a node run as root: it \
                 administers Debian's cluster as the {CLUSTER_ACCOUNT} account\nhint: run the node \
                 as root, or use mode = \"private\" (a cluster of the node's own)"
            );
        };
        Ok(Postgres {
            admin: Admin {
                psql: bins.program("psql"),
                host: socket_dir.display().to_string(),
                port,
                user: SUPERUSER.to_string(),
                dbname: SUPERUSER.to_string(),
                sslmode: None,
                run_as,
                password_file: None,
            },
            host: "127.0.0.1".to_string(),
            port,
            socket_dir: None,
            private: None,
            unreachable_hint: format!(
                "is Debian's cluster running? `pg_lsclusters` lists them; \
                 `pg_ctlcluster {major} main start` (or `systemctl start postgresql`) starts it",
                major = bins.major
            ),
            owns_cluster: true,
            prepared: AtomicBool::new(false),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// An existing cluster, administered as `url`'s role with the password
    /// in `password_file` (read at each use, so it may change).
    pub fn external(url: &AdminUrl, password_file: &Path) -> Result<Postgres> {
        let bins = Binaries::newest("psql").map_err(|_| {
            anyhow::anyhow!(
                "psql is not installed (no {DEBIAN_LIB}/*/bin/psql)\nhint: apt-get install \
                 postgresql-client (provisioning/install-deps installs the server and client)"
            )
        })?;
        read_password_file(password_file)?;
        Ok(Postgres {
            admin: Admin {
                psql: bins.program("psql"),
                host: url.host.clone(),
                port: url.port,
                user: url.user.clone(),
                dbname: url.dbname.clone(),
                sslmode: url.sslmode.clone(),
                run_as: None,
                password_file: Some(password_file.to_path_buf()),
            },
            host: url.host.clone(),
            port: url.port,
            socket_dir: None,
            private: None,
            unreachable_hint: format!(
                "is the cluster at {url} up, and are [services.postgresql] url and password_file \
                 right?"
            ),
            owns_cluster: false,
            prepared: AtomicBool::new(false),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts the node's private cluster in `dir` (root's, 0711):
    /// `data/` (made by initdb the first time, as the `postgres` account
    /// on a root node, else as the node's own user), `run/` (its socket,
    /// which site accounts may reach; 0711) and `log/`. It listens on that
    /// socket and on 127.0.0.1:`port` (0: a free port, picked once and kept
    /// in `dir/port`, since live apps hold it in their environment). A
    /// cluster still running from a node that died is taken over.
    pub async fn start_private(dir: &Path, port: u16) -> Result<Postgres> {
        check_pg_ctl_path(dir)?;
        let owner = if accounts::isolating() {
            cluster_account()?
        } else {
            accounts::current()?
        };
        let chown = accounts::isolating().then_some((owner.uid, owner.gid));
        let data = dir.join("data");
        let bins = match std::fs::read_to_string(data.join("PG_VERSION")) {
            Ok(v) => {
                let major = v.trim().parse().with_context(|| {
                    format!(
                        "{}: not a version: {v:?}",
                        data.join("PG_VERSION").display()
                    )
                })?;
                Binaries::version(major, "pg_ctl").with_context(|| {
                    format!(
                        "the node's cluster {} was made by PostgreSQL {major}",
                        data.display()
                    )
                })?
            }
            Err(_) => Binaries::newest("initdb")?,
        };
        create_dir(dir, 0o711, None)?;
        check_reachable(dir, &owner)?;
        let run_dir = dir.join("run");
        let log_dir = dir.join("log");
        create_dir(&run_dir, 0o711, chown)?;
        create_dir(&log_dir, 0o700, chown)?;
        if !data.join("PG_VERSION").exists() {
            initdb(&bins, dir, &data, &owner, chown).await?;
        }
        let port = private_port(dir, port)?;
        write_private_settings(&data, &run_dir, port, &owner, chown)?;
        let private = Private {
            pg_ctl: bins.program("pg_ctl"),
            data,
            log: log_dir.join("postgresql.log"),
        };
        let pg = Postgres {
            admin: Admin {
                psql: bins.program("psql"),
                host: run_dir.display().to_string(),
                port,
                user: SUPERUSER.to_string(),
                dbname: SUPERUSER.to_string(),
                sslmode: None,
                run_as: chown.map(|_| owner),
                password_file: None,
            },
            host: "127.0.0.1".to_string(),
            port,
            socket_dir: Some(run_dir.clone()),
            unreachable_hint: format!(
                "the node's private cluster is not running; its log is {} (the node starts \
                 the cluster when it starts)",
                private.log.display()
            ),
            private: Some(private),
            owns_cluster: true,
            prepared: AtomicBool::new(false),
            lock: tokio::sync::Mutex::new(()),
        };
        pg.start_or_adopt(&run_dir, port).await?;
        Ok(pg)
    }

    async fn start_or_adopt(&self, run_dir: &Path, port: u16) -> Result<()> {
        let p = self.private.as_ref().context("not a private cluster")?;
        if self.private_running().await? {
            // Left running by a node that died: keep it if it listens where
            // it must, else restart it with today's settings.
            let pid = std::fs::read_to_string(p.data.join("postmaster.pid")).unwrap_or_default();
            let lines: Vec<&str> = pid.lines().collect();
            let same = lines.get(3) == Some(&port.to_string().as_str())
                && lines.get(4).map(Path::new) == Some(run_dir);
            let action = if same { "reload" } else { "restart" };
            tracing::info!(
                "the private PostgreSQL cluster in {} is already running: {action}",
                p.data.display()
            );
            return self.pg_ctl(action).await;
        }
        self.pg_ctl("start").await
    }

    /// Whether the private cluster runs (`pg_ctl status`).
    async fn private_running(&self) -> Result<bool> {
        let p = self.private.as_ref().context("not a private cluster")?;
        let mut cmd = command(&p.pg_ctl, self.admin.run_as.as_ref());
        cmd.arg("status").arg("-D").arg(&p.data);
        let ran = run(cmd, "pg_ctl status", None, CLUSTER_TIMEOUT).await?;
        Ok(ran.ok())
    }

    async fn pg_ctl(&self, action: &str) -> Result<()> {
        let p = self.private.as_ref().context("not a private cluster")?;
        let mut cmd = command(&p.pg_ctl, self.admin.run_as.as_ref());
        cmd.arg(action).arg("-D").arg(&p.data);
        cmd.args(pg_ctl_options(action, p));
        let ran = run(cmd, &format!("pg_ctl {action}"), None, CLUSTER_TIMEOUT).await?;
        if !ran.ok() {
            bail!(
                "cannot {action} the node's PostgreSQL cluster in {}:\n{}\n  last lines of {}:\n{}\nhint: the whole log is {}",
                p.data.display(),
                ran.tail(),
                p.log.display(),
                log_tail(&p.log),
                p.log.display()
            );
        }
        Ok(())
    }

    /// Stops the private cluster (fast: sessions are ended, data is
    /// safe); nothing for a cluster the node does not run.
    pub async fn stop(&self) -> Result<()> {
        if self.private.is_none() || !self.private_running().await? {
            return Ok(());
        }
        self.pg_ctl("stop").await
    }

    /// `stop`, for a caller that cannot wait on a future (a `Drop`).
    pub fn stop_blocking(&self) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let Some(p) = &self.private else {
            return Ok(());
        };
        let mut cmd = std::process::Command::new(&p.pg_ctl);
        cmd.arg("stop")
            .arg("-D")
            .arg(&p.data)
            .args(pg_ctl_options("stop", p))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/")
            .stdin(Stdio::null());
        if let Some(a) = &self.admin.run_as {
            cmd.uid(a.uid).gid(a.gid);
        }
        let out = cmd.output().context("cannot run pg_ctl stop")?;
        let running = std::fs::metadata(p.data.join("postmaster.pid")).is_ok();
        if !out.status.success() && running {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The port sites connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private cluster's socket directory, if this is one.
    pub fn socket_dir(&self) -> Option<&Path> {
        self.socket_dir.as_deref()
    }

    /// Runs `sql` as the admin, with the cause and what to do in the error.
    async fn sql(&self, dbname: &str, sql: &str, doing: &str) -> Result<String> {
        match self.admin.psql(dbname, sql).await {
            Ok(out) => Ok(out),
            Err(PsqlError::Unreachable(tail)) => bail!(
                "cannot reach PostgreSQL ({doing}):\n{tail}\nhint: {}",
                self.unreachable_hint
            ),
            Err(PsqlError::Failed(tail)) => bail!("PostgreSQL refused {doing}:\n{tail}"),
            Err(PsqlError::Other(e)) => Err(e.context(format!("PostgreSQL: {doing}"))),
        }
    }

    /// Once per node: on a cluster the node owns, nobody but a database's
    /// owner (and the admin) may connect to `postgres` and `template1`,
    /// so a site's role reaches its own database and nothing else.
    async fn prepare(&self) -> Result<()> {
        if !self.owns_cluster || self.prepared.load(Ordering::Acquire) {
            return Ok(());
        }
        self.sql(
            &self.admin.dbname,
            "REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;\n\
             REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;\n",
            "closing the cluster's own databases to sites",
        )
        .await?;
        self.prepared.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes sure `site` has its role and database (and PostGIS in it when
    /// `postgis`), and answers how the app reaches them. Safe to call at
    /// every deploy: what exists is kept (data, password), and a role or
    /// database by the site's name that the node did not make for it is
    /// refused, never taken over. The password is kept in `secrets_dir`.
    pub async fn ensure_site(
        &self,
        site: &SiteName,
        postgis: bool,
        secrets_dir: &Path,
    ) -> Result<Credentials> {
        let _one_at_a_time = self.lock.lock().await;
        self.prepare().await?;
        let name = db_name(site);
        let marker = marker(site);
        let password = site_password(secrets_dir, site)?;

        let state = self
            .sql(
                &self.admin.dbname,
                &state_query(&name, &marker),
                &format!("looking up role and database {name}"),
            )
            .await?;
        let fields: Vec<&str> = state.trim().split('|').collect();
        let (role, db, superuser, has_postgis, version) = match fields.as_slice() {
            [r, d, s, p, v] => (
                Found::parse(r),
                Found::parse(d),
                *s == "t",
                *p == "t",
                v.parse::<u32>().ok(),
            ),
            _ => bail!("PostgreSQL answered {state:?} to the node's lookup of {name}"),
        };
        let (Some(role), Some(db)) = (role, db) else {
            bail!("PostgreSQL answered {state:?} to the node's lookup of {name}");
        };
        if role == Found::Other {
            bail!(
                "the PostgreSQL role {role} exists but was not made by this node for {site}; \
                 the node does not take over a role it did not make\n\
                 hint: if it belongs to something else, rename it (ALTER ROLE {role} RENAME TO \
                 ...); if it is this site's (a restored cluster), mark it: COMMENT ON ROLE {role} \
                 IS {comment}",
                role = quote_ident(&name),
                comment = quote_literal(&marker),
            );
        }
        if db == Found::Other {
            bail!(
                "the PostgreSQL database {db} exists but is not owned by this site's role \
                 {db}; the node does not take over a database it did not make\n\
                 hint: if it belongs to something else, rename it (ALTER DATABASE {db} RENAME TO \
                 ...); if it is this site's, give it to the site: ALTER DATABASE {db} OWNER TO {db}",
                db = quote_ident(&name),
            );
        }
        let major = version.map_or(PACKAGED_MAJOR, |v| v / 10000);
        if postgis && !has_postgis {
            let hint = if self.owns_cluster {
                format!(
                    "apt-get install postgresql-{major}-postgis-3 (provisioning/install-deps does)"
                )
            } else {
                format!(
                    "install PostGIS on the server of {}:{} (Debian: postgresql-{major}-postgis-3)",
                    self.admin.host, self.admin.port
                )
            };
            bail!("PostGIS is not installed for the cluster's PostgreSQL {major}\nhint: {hint}");
        }

        let salt: [u8; 16] = rand::random();
        let verifier = scram_verifier(&password, &salt, SCRAM_ITERATIONS);
        let setup = setup_sql(&name, &marker, &verifier, role, db, superuser);
        self.sql(
            &self.admin.dbname,
            &setup,
            &format!("making role and database {name} for {site}"),
        )
        .await?;
        if postgis {
            let done = self
                .sql(
                    &name,
                    "CREATE EXTENSION IF NOT EXISTS postgis;\n",
                    &format!("enabling PostGIS in database {name}"),
                )
                .await;
            if let Err(e) = done {
                if superuser {
                    return Err(e);
                }
                return Err(e.context(format!(
                    "the admin role {} is not a superuser, which creating the postgis extension \
                     takes\nhint: create it once as a superuser: psql -d {name} -c 'CREATE \
                     EXTENSION postgis'",
                    self.admin.user
                )));
            }
        }
        Ok(Credentials {
            dbname: name.clone(),
            user: name,
            password,
            host: self.host.clone(),
            port: self.port,
            socket_dir: self.socket_dir.clone(),
        })
    }
}

/// One row: the site's role and database (none, ours, other), whether the
/// admin is a superuser, whether PostGIS is installed, the server version.
/// No free text comes back, so nothing in it can be mistaken for a field.
fn state_query(name: &str, marker: &str) -> String {
    let n = quote_literal(name);
    let m = quote_literal(marker);
    format!(
        "SELECT\n\
         coalesce((SELECT CASE WHEN shobj_description(oid, 'pg_authid') IS NOT DISTINCT FROM {m} \
         THEN 'ours' ELSE 'other' END FROM pg_roles WHERE rolname = {n}), 'none'),\n\
         coalesce((SELECT CASE WHEN pg_get_userbyid(datdba) = {n} THEN 'ours' ELSE 'other' END \
         FROM pg_database WHERE datname = {n}), 'none'),\n\
         (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),\n\
         EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'),\n\
         current_setting('server_version_num');\n"
    )
}

/// What makes (or, for what exists, keeps in order) a site's role and
/// database. The role can log in with the site's password and do nothing
/// else on the cluster; the database is the role's, and nobody else's to
/// connect to.
fn setup_sql(
    name: &str,
    marker: &str,
    verifier: &str,
    role: Found,
    db: Found,
    superuser: bool,
) -> String {
    let ident = quote_ident(name);
    let comment = quote_literal(marker);
    let mut sql = String::new();
    if role == Found::None {
        // INHERIT (the default) it must keep: the public schema of its
        // database is the database owner's through pg_database_owner.
        sql.push_str(&format!(
            "CREATE ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS;\n\
             COMMENT ON ROLE {ident} IS {comment};\n"
        ));
    }
    sql.push_str(&format!(
        "ALTER ROLE {ident} WITH LOGIN PASSWORD {};\n",
        quote_literal(verifier)
    ));
    if db == Found::None {
        if !superuser {
            // An admin that is not a superuser may only give a database
            // to a role it is a member of.
            sql.push_str(&format!("GRANT {ident} TO CURRENT_USER;\n"));
        }
        sql.push_str(&format!("CREATE DATABASE {ident} OWNER {ident};\n"));
    }
    sql.push_str(&format!(
        "COMMENT ON DATABASE {ident} IS {comment};\n\
         REVOKE ALL ON DATABASE {ident} FROM PUBLIC;\n"
    ));
    sql
}

/// The `postgres` account Debian's package makes, which runs clusters.
fn cluster_account() -> Result<Account> {
    let account = accounts::lookup(CLUSTER_ACCOUNT)?.with_context(|| {
        format!(
            "there is no {CLUSTER_ACCOUNT} account to run PostgreSQL as (Debian's package makes \
             it)\nhint: {}",
            install_hint()
        )
    })?;
    if account.uid == 0 {
        bail!("the {CLUSTER_ACCOUNT} account has uid 0: PostgreSQL never runs as root");
    }
    Ok(account)
}

/// pg_ctl starts the server through `/bin/sh -c` with its paths in double
/// quotes: a path that would mean something there is refused.
fn check_pg_ctl_path(dir: &Path) -> Result<()> {
    let text = dir
        .to_str()
        .with_context(|| format!("{}: the path is not UTF-8", dir.display()))?;
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '"' | '\'' | '\\' | '$' | '`') || c.is_control())
    {
        bail!(
            "{text}: PostgreSQL's pg_ctl cannot take a path with {c:?} in it\nhint: choose a \
             data_dir without quotes, backslashes, '$' or '`'"
        );
    }
    Ok(())
}

/// The cluster's account must be able to pass through every directory
/// above `dir` (a data dir is meant to be 0711).
fn check_reachable(dir: &Path, owner: &Account) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions.
    if owner.uid == unsafe { libc::geteuid() } {
        return Ok(());
    }
    for d in dir.ancestors() {
        let meta = std::fs::metadata(d).with_context(|| format!("cannot read {}", d.display()))?;
        let mode = meta.permissions().mode();
        let passes = if meta.uid() == owner.uid {
            mode & 0o100 != 0
        } else if meta.gid() == owner.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !passes {
            bail!(
                "the {} account cannot reach {}: {} is mode {:o}\nhint: chmod o+x {} (a node's \
                 data dir is passable, not listable: 0711)",
                owner.name,
                dir.display(),
                d.display(),
                mode & 0o777,
                d.display()
            );
        }
    }
    Ok(())
}

/// Makes the cluster in `dir/data`: initdb into `dir/data.new` as the
/// cluster's account, then a rename, so `data` is either a whole cluster or
/// absent. A `data.new` left by an initdb cut short never held data.
async fn initdb(
    bins: &Binaries,
    dir: &Path,
    data: &Path,
    owner: &Account,
    chown: Option<(u32, u32)>,
) -> Result<()> {
    if data.exists() {
        bail!(
            "{} exists but holds no PostgreSQL cluster (no PG_VERSION); the node makes its \
             cluster only where there is nothing\nhint: move it away",
            data.display()
        );
    }
    let fresh = dir.join("data.new");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)
            .with_context(|| format!("cannot remove {}", fresh.display()))?;
    }
    create_dir(&fresh, 0o700, chown)?;
    tracing::info!(
        "making the node's PostgreSQL {} cluster in {}",
        bins.major,
        data.display()
    );
    let mut cmd = command(&bins.program("initdb"), chown.is_some().then_some(owner));
    cmd.arg("-D").arg(&fresh).args([
        "--username",
        SUPERUSER,
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
    ]);
    let ran = run(cmd, "initdb", None, CLUSTER_TIMEOUT).await?;
    if !ran.ok() {
        bail!(
            "cannot make the node's PostgreSQL cluster (initdb failed):\n{}",
            ran.tail()
        );
    }
    let conf = fresh.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)
        .with_context(|| format!("cannot read {}", conf.display()))?;
    text.push_str(
        "\n# The node's own settings (listen addresses, port, socket), rewritten at each start.\n\
         include_if_exists = 'toppcloud.conf'\n",
    );
    write_owned(&conf, &text, chown)?;
    std::fs::rename(&fresh, data)
        .with_context(|| format!("cannot rename {} to {}", fresh.display(), data.display()))?;
    Ok(())
}

/// The private cluster's port: the configured one, else the one picked
/// before (in `dir/port`), else a free one, remembered.
fn private_port(dir: &Path, configured: u16) -> Result<u16> {
    if configured != 0 {
        return Ok(configured);
    }
    let file = dir.join("port");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(port) = text.trim().parse::<u16>()
        && port != 0
    {
        return Ok(port);
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for PostgreSQL")?
        .port();
    crate::atomic::write(&file, format!("{port}\n").as_bytes())?;
    Ok(port)
}

/// Writes what the node decides about its cluster, at every start: where it
/// listens and who may connect how. The superuser comes in only through
/// the socket as the cluster's own account; everyone else with a password.
fn write_private_settings(
    data: &Path,
    run_dir: &Path,
    port: u16,
    owner: &Account,
    chown: Option<(u32, u32)>,
) -> Result<()> {
    let conf_str = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let socket = run_dir
        .to_str()
        .with_context(|| format!("{}: the path is not UTF-8", run_dir.display()))?;
    write_owned(
        &data.join("toppcloud.conf"),
        &format!(
            "# Written by toppcloud at each start of the cluster: changes here are lost.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = {}\n\
             unix_socket_permissions = 0777\n\
             password_encryption = 'scram-sha-256'\n",
            conf_str(socket)
        ),
        chown,
    )?;
    write_owned(
        &data.join("pg_hba.conf"),
        "# Written by toppcloud at each start of the cluster: changes here are lost.\n\
         local all postgres peer map=admin\n\
         local all all scram-sha-256\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
        chown,
    )?;
    write_owned(
        &data.join("pg_ident.conf"),
        &format!(
            "# Written by toppcloud at each start of the cluster: changes here are lost.\n\
             admin {} {SUPERUSER}\n",
            owner.name
        ),
        chown,
    )
}

/// A file in the cluster's data dir: 0600, the cluster account's.
fn write_owned(path: &Path, text: &str, chown: Option<(u32, u32)>) -> Result<()> {
    crate::atomic::write(path, text.as_bytes())?;
    if let Some((uid, gid)) = chown {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", path.display()))?;
    }
    Ok(())
}

/// What `pg_ctl ACTION` takes besides the data dir: a started server
/// logs to the node's file; every action waits for its end, and a stop
/// ends sessions at once (their data is safe).
fn pg_ctl_options(action: &str, p: &Private) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    if matches!(action, "start" | "restart") {
        v.extend(["-l".into(), p.log.clone().into()]);
    }
    if matches!(action, "start" | "restart" | "stop") {
        v.extend(["-w", "-t", "120"].map(Into::into));
    }
    if matches!(action, "restart" | "stop") {
        v.extend(["-m", "fast"].map(Into::into));
    }
    v
}

/// The last lines of the cluster's log, for an error.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str) -> SiteName {
        SiteName::parse(name, &crate::names::Domain::localhost()).unwrap()
    }

    #[test]
    fn names_are_short_safe_and_distinct() {
        let a = db_name(&site("blog.example.com"));
        assert!(a.starts_with("tc_blog_example_com_"), "{a}");
        assert_eq!(a.len(), "tc_blog_example_com_".len() + 8);
        // Two names that read the same once made safe still differ.
        let b = db_name(&site("blog-example.com"));
        assert!(b.starts_with("tc_blog_example_com_"), "{b}");
        assert_ne!(a, b);
        // The longest site names fit PostgreSQL's 63 bytes, hash and all.
        let label = "a".repeat(60);
        let long = format!("{label}.{label}.{label}.example.org");
        let n = db_name(&site(&long));
        assert!(n.len() <= MAX_IDENTIFIER, "{} bytes", n.len());
        let long2 = format!("{label}.{label}.{label}.example.net");
        assert_ne!(n, db_name(&site(&long2)));
        for n in [a, b, n] {
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{n}"
            );
        }
        // Stable: the same site always gets the same name.
        assert_eq!(
            db_name(&site("blog.localhost")),
            db_name(&site("BLOG.localhost"))
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("tc_a"), "\"tc_a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn urls_encode_every_reserved_character() {
        assert_eq!(percent_encode("abc-._~XYZ09"), "abc-._~XYZ09");
        assert_eq!(
            percent_encode("p@ss:w/o%rd?#[] é"),
            "p%40ss%3Aw%2Fo%25rd%3F%23%5B%5D%20%C3%A9"
        );
        assert_eq!(percent_decode("p%40ss%3Aw%C3%A9").unwrap(), "p@ss:wé");
        assert!(percent_decode("bad%2").is_err());
        assert!(percent_decode("nul%00").is_err());
    }

    fn creds(password: &str, host: &str) -> Credentials {
        Credentials {
            dbname: "tc_blog_localhost_12345678".into(),
            user: "tc_blog_localhost_12345678".into(),
            password: password.into(),
            host: host.into(),
            port: 5433,
            socket_dir: None,
        }
    }

    #[test]
    fn env_holds_the_contract() {
        let c = creds("s3cr@t/:pw", "127.0.0.1");
        let env = c.env();
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "CONFIG_PG_DBNAME",
                "CONFIG_PG_HOST",
                "CONFIG_PG_PASSWORD",
                "CONFIG_PG_PORT",
                "CONFIG_PG_SQLALCHEMY",
                "CONFIG_PG_USER",
                "DATABASE_URL",
            ]
        );
        assert_eq!(env["CONFIG_PG_DBNAME"], "tc_blog_localhost_12345678");
        assert_eq!(env["CONFIG_PG_USER"], "tc_blog_localhost_12345678");
        assert_eq!(env["CONFIG_PG_PASSWORD"], "s3cr@t/:pw");
        assert_eq!(env["CONFIG_PG_HOST"], "127.0.0.1");
        assert_eq!(env["CONFIG_PG_PORT"], "5433");
        assert_eq!(
            env["DATABASE_URL"],
            "postgres://tc_blog_localhost_12345678:s3cr%40t%2F%3Apw@127.0.0.1:5433/tc_blog_localhost_12345678"
        );
        assert_eq!(
            env["CONFIG_PG_SQLALCHEMY"],
            "postgresql://tc_blog_localhost_12345678:s3cr%40t%2F%3Apw@127.0.0.1:5433/tc_blog_localhost_12345678"
        );
        // An IPv6 host is bracketed in the URLs only.
        let env = creds("pw", "::1").env();
        assert_eq!(env["CONFIG_PG_HOST"], "::1");
        assert!(env["DATABASE_URL"].contains("@[::1]:5433/"), "{env:?}");
        // The password stays out of debug output.
        assert!(!format!("{c:?}").contains("s3cr"));
    }

    #[test]
    fn admin_urls_parse() {
        let u = AdminUrl::parse("postgresql://toppcloud@db.example.com:5433/").unwrap();
        assert_eq!(
            u,
            AdminUrl {
                user: "toppcloud".into(),
                host: "db.example.com".into(),
                port: 5433,
                dbname: "postgres".into(),
                sslmode: None,
            }
        );
        let u = AdminUrl::parse("postgres://adm%40x@[::1]/maint?sslmode=require").unwrap();
        assert_eq!(u.user, "adm@x");
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 5432);
        assert_eq!(u.dbname, "maint");
        assert_eq!(u.sslmode.as_deref(), Some("require"));
        assert_eq!(u.to_string(), "postgresql://adm%40x@[::1]:5432/maint");
        assert_eq!(
            AdminUrl::parse("postgresql://a@h").unwrap().to_string(),
            "postgresql://a@h:5432/postgres"
        );
        for (bad, why) in [
            ("http://a@h/", "postgresql://ADMIN@HOST"),
            ("postgresql://h:5432/", "names no admin role"),
            ("postgresql://@h/", "names no admin role"),
            ("postgresql://a:pw@h/", "put it in password_file"),
            ("postgresql://a@/", "no host"),
            ("postgresql://a@h:0/", "not a port"),
            ("postgresql://a@h:99999/", "not a port"),
            ("postgresql://a@h;rm/", "not a host name"),
            ("postgresql://a@h/db/x", "one database name"),
            ("postgresql://a@h/?host=/tmp", "not understood"),
            ("postgresql://a@h/?sslmode=maybe", "not understood"),
            ("postgresql://a@h/#x", "fragment"),
        ] {
            let err = format!("{:#}", AdminUrl::parse(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn scram_verifiers_follow_rfc_7677() {
        // RFC 7677's example: password "pencil", this salt, 4096 rounds.
        let salt = Base64::decode_vec("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = scram_verifier("pencil", &salt, 4096);
        assert_eq!(
            v,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        // The ServerKey signs the RFC's exchange into its server signature.
        let server_key = Base64::decode_vec(v.rsplit(':').next().unwrap()).unwrap();
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
                    r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,\
                    r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&server_key).unwrap();
        mac.update(auth.as_bytes());
        assert_eq!(
            Base64::encode_string(&mac.finalize().into_bytes()),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn setup_makes_only_what_is_missing() {
        let sql = setup_sql(
            "tc_a",
            "toppcloud site a",
            "V",
            Found::None,
            Found::None,
            true,
        );
        assert!(
            sql.contains("CREATE ROLE \"tc_a\" LOGIN NOSUPERUSER"),
            "{sql}"
        );
        assert!(
            sql.contains("COMMENT ON ROLE \"tc_a\" IS 'toppcloud site a'"),
            "{sql}"
        );
        assert!(
            sql.contains("CREATE DATABASE \"tc_a\" OWNER \"tc_a\""),
            "{sql}"
        );
        assert!(
            sql.contains("REVOKE ALL ON DATABASE \"tc_a\" FROM PUBLIC"),
            "{sql}"
        );
        assert!(!sql.contains("GRANT"), "{sql}");
        let sql = setup_sql("tc_a", "m", "V", Found::Ours, Found::Ours, true);
        assert!(!sql.contains("CREATE"), "{sql}");
        assert!(
            sql.contains("ALTER ROLE \"tc_a\" WITH LOGIN PASSWORD 'V'"),
            "{sql}"
        );
        // An admin that is not a superuser joins the role to give it a database.
        let sql = setup_sql("tc_a", "m", "V", Found::Ours, Found::None, false);
        assert!(
            sql.contains("GRANT \"tc_a\" TO CURRENT_USER;\nCREATE DATABASE"),
            "{sql}"
        );
    }

    #[test]
    fn passwords_are_made_once_and_kept_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let s = site("blog.localhost");
        let pw = site_password(&secrets, &s).unwrap();
        assert!(pw.len() >= 32, "{pw}");
        assert_eq!(site_password(&secrets, &s).unwrap(), pw);
        assert_ne!(
            site_password(&secrets, &site("other.localhost")).unwrap(),
            pw
        );
        let file = secrets.join("blog.localhost.postgresql");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&secrets), 0o700);
        // A file that holds no usable password gets a new one.
        std::fs::write(&file, "short\n").unwrap();
        let new = site_password(&secrets, &s).unwrap();
        assert!(new.len() >= 32 && new != pw);
    }

    #[test]
    fn clusters_come_from_the_config() {
        let layout = Layout::new(PathBuf::from("/var/lib/toppcloud"));
        let cfg = PostgresConfig::default();
        assert_eq!(
            Cluster::from_config(&cfg, &layout).unwrap(),
            Cluster::Private {
                dir: PathBuf::from("/var/lib/toppcloud/postgresql"),
                port: 0
            }
        );
        let cfg = PostgresConfig {
            mode: Some(PostgresMode::System),
            ..Default::default()
        };
        assert_eq!(
            Cluster::from_config(&cfg, &layout).unwrap(),
            Cluster::System {
                socket_dir: PathBuf::from(SYSTEM_SOCKET_DIR),
                port: 5432
            }
        );
        let cfg = PostgresConfig {
            url: Some("postgresql://adm@db:6432/".into()),
            password_file: Some("/etc/pw".into()),
            ..Default::default()
        };
        let Cluster::External { url, password_file } = Cluster::from_config(&cfg, &layout).unwrap()
        else {
            panic!("not external");
        };
        assert_eq!((url.host.as_str(), url.port), ("db", 6432));
        assert_eq!(password_file, Path::new("/etc/pw"));
    }

    #[test]
    fn paths_pg_ctl_would_misread_are_refused() {
        assert!(check_pg_ctl_path(Path::new("/var/lib/toppcloud/postgresql")).is_ok());
        for bad in ["/a\"b", "/a$b", "/a`b", "/a\\b", "/a'b", "/a\nb"] {
            assert!(check_pg_ctl_path(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", read_password_file(&f).unwrap_err());
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&f).unwrap(), "hunter2");
    }
}
