//! The services a node makes for its sites, against a real PostgreSQL with
//! PostGIS (`provisioning/install-deps` installs Debian's): every test
//! starts a private cluster of its own in a temp dir, on a free loopback
//! port and a socket beside it, never the system's cluster, and stops it
//! at its end, panics included. Sites connect with the real `psql`, as an
//! account that is neither root nor the cluster's, with the credentials the
//! node hands their apps.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use toppcloud::accounts;
use toppcloud::engine::services::postgres::{
    AdminUrl, Binaries, Credentials, Postgres, db_name, quote_ident, quote_literal,
};
use toppcloud::names::SiteName;

/// The cluster runs as the `postgres` account and sites as another: only
/// root can arrange that (CI runs the tests as root).
macro_rules! root_only {
    () => {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "\n\n*** SKIPPED: the PostgreSQL service tests need root (the cluster runs as \
                 the postgres account, sites as another) ***\n"
            );
            return;
        }
    };
}

fn site(name: &str) -> SiteName {
    SiteName::parse(name, &toppcloud::names::Domain::localhost()).unwrap()
}

/// A node's data dir in a temp dir, passable by other accounts as a
/// node's is (0711).
struct DataDir {
    _tmp: tempfile::TempDir,
    data: PathBuf,
}

impl DataDir {
    fn new() -> DataDir {
        let tmp = tempfile::Builder::new()
            .prefix("toppcloud-pg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o711)).unwrap();
        DataDir { _tmp: tmp, data }
    }

    fn cluster_dir(&self) -> PathBuf {
        self.data.join("postgresql")
    }

    fn secrets(&self) -> PathBuf {
        self.data.join("secrets")
    }
}

/// A private cluster, stopped when dropped (a failing test too).
struct Running(Option<Postgres>);

impl Running {
    async fn start(dir: &DataDir) -> Running {
        let pg = Postgres::start_private(&dir.cluster_dir(), 0)
            .await
            .unwrap_or_else(|e| panic!("starting the private cluster: {e:#}"));
        Running(Some(pg))
    }

    fn pg(&self) -> &Postgres {
        self.0.as_ref().expect("running")
    }

    /// What a node that dies does: leaves its cluster running.
    fn abandon(mut self) {
        drop(self.0.take());
    }

    async fn stop(mut self) {
        let pg = self.0.take().expect("running");
        pg.stop().await.expect("stop");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pg) = self.0.take()
            && let Err(e) = pg.stop_blocking()
        {
            eprintln!("stopping the test cluster: {e:#}");
        }
    }
}

/// How a site's psql reaches the cluster.
#[derive(Clone, Copy, Debug)]
enum Via {
    Socket,
    Tcp,
    /// `psql "$DATABASE_URL"`, as an app's libraries would read it.
    DatabaseUrl,
}

struct Psql {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Psql {
    #[track_caller]
    fn success(&self) -> &str {
        assert!(self.ok, "psql failed:\n{}", self.stderr);
        self.stdout.trim()
    }

    #[track_caller]
    fn refused(&self, expected: &str) {
        assert!(!self.ok, "psql succeeded: {}", self.stdout);
        assert!(
            self.stderr.contains(expected),
            "stderr lacks {expected:?}:\n{}",
            self.stderr
        );
    }
}

fn psql_program() -> PathBuf {
    Binaries::newest("psql").unwrap().program("psql")
}

/// `psql` with `sql` on stdin, run as `account` with nothing of ours in its
/// environment but `env`.
fn psql(account: &accounts::Account, env: &[(&str, String)], args: &[&str], sql: &str) -> Psql {
    use std::io::Write;
    let mut cmd = Command::new(psql_program());
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGCONNECT_TIMEOUT", "10")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir("/")
        .uid(account.uid)
        .gid(account.gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn psql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Psql {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An account that is neither root nor the cluster's: what a site's code
/// runs as, as far as PostgreSQL can tell.
fn site_account() -> accounts::Account {
    accounts::lookup("nobody")
        .unwrap()
        .expect("the nobody account")
}

/// Runs `sql` in `dbname` as a site with `creds`, reaching the cluster `via`.
fn as_site(creds: &Credentials, dbname: &str, via: Via, sql: &str) -> Psql {
    let mut env = vec![
        ("PGUSER", creds.user.clone()),
        ("PGPASSWORD", creds.password.clone()),
        ("PGDATABASE", dbname.to_string()),
        ("PGPORT", creds.port.to_string()),
    ];
    let mut args = Vec::new();
    let url;
    match via {
        Via::Socket => {
            let dir = creds.socket_dir.as_ref().expect("a socket dir");
            env.push(("PGHOST", dir.display().to_string()));
        }
        Via::Tcp => env.push(("PGHOST", creds.host.clone())),
        Via::DatabaseUrl => {
            assert_eq!(dbname, creds.dbname, "DATABASE_URL names the site's own db");
            url = creds.env()["DATABASE_URL"].clone();
            env.clear();
            args.extend(["-d", url.as_str()]);
        }
    }
    psql(&site_account(), &env, &args, sql)
}

/// Runs `sql` as the cluster's superuser (peer authentication over the
/// socket, as the `postgres` account).
fn as_admin(pg: &Postgres, sql: &str) -> Psql {
    let admin = accounts::lookup("postgres").unwrap().expect("postgres");
    let env = [
        ("PGHOST", pg.socket_dir().unwrap().display().to_string()),
        ("PGPORT", pg.port().to_string()),
        ("PGUSER", "postgres".to_string()),
        ("PGDATABASE", "postgres".to_string()),
    ];
    psql(&admin, &env, &[], sql)
}

#[tokio::test]
async fn each_site_gets_a_database_only_its_role_can_reach() {
    root_only!();
    let dir = DataDir::new();
    let cluster = Running::start(&dir).await;
    let pg = cluster.pg();
    let (a_site, b_site) = (site("alpha.localhost"), site("beta.example.org"));
    let a = pg
        .ensure_site(&a_site, false, &dir.secrets())
        .await
        .unwrap();
    let b = pg.ensure_site(&b_site, true, &dir.secrets()).await.unwrap();

    assert_eq!(a.dbname, db_name(&a_site));
    assert_eq!(a.user, a.dbname);
    assert_eq!(a.host, "127.0.0.1");
    assert_eq!(a.port, pg.port());
    assert!(a.password.len() >= 32);
    assert_ne!(a.password, b.password);
    let secret = dir.secrets().join("alpha.localhost.postgresql");
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);

    // Each site writes and reads its own database, every way it may connect.
    for (creds, name) in [(&a, "alpha"), (&b, "beta")] {
        for via in [Via::Socket, Via::Tcp, Via::DatabaseUrl] {
            let table = format!("t_{via:?}").to_lowercase();
            let out = as_site(
                creds,
                &creds.dbname,
                via,
                &format!(
                    "CREATE TABLE {table} (v text);\nINSERT INTO {table} VALUES ('{name}');\n\
                     SELECT v FROM {table};\n"
                ),
            );
            assert_eq!(out.success(), name, "{name} via {via:?}");
        }
        let who = as_site(
            creds,
            &creds.dbname,
            Via::Tcp,
            "SELECT current_user, current_database();\n",
        );
        assert_eq!(who.success(), format!("{}|{}", creds.user, creds.dbname));
    }

    // PostGIS where it was asked for, and only there.
    let version = as_site(&b, &b.dbname, Via::Tcp, "SELECT postgis_version();\n");
    assert!(version.success().starts_with('3'), "{}", version.stdout);
    as_site(&a, &a.dbname, Via::Tcp, "SELECT postgis_version();\n")
        .refused("function postgis_version() does not exist");

    // B's role cannot connect to A's database, nor to the cluster's own.
    for via in [Via::Socket, Via::Tcp] {
        as_site(&b, &a.dbname, via, "SELECT 1;\n")
            .refused(&format!("permission denied for database \"{}\"", a.dbname));
        as_site(&a, &b.dbname, via, "SELECT 1;\n")
            .refused(&format!("permission denied for database \"{}\"", b.dbname));
        for db in ["postgres", "template1"] {
            as_site(&b, db, via, "SELECT 1;\n")
                .refused(&format!("permission denied for database \"{db}\""));
        }
    }
    // Nor log in as A with its own password, nor as the superuser.
    let mut wrong = a.clone();
    wrong.password = b.password.clone();
    as_site(&wrong, &a.dbname, Via::Tcp, "SELECT 1;\n").refused("password authentication failed");
    let mut superuser = b.clone();
    superuser.user = "postgres".into();
    as_site(&superuser, "postgres", Via::Socket, "SELECT 1;\n")
        .refused("Peer authentication failed for user \"postgres\"");
    as_site(&superuser, "postgres", Via::Tcp, "SELECT 1;\n")
        .refused("password authentication failed");

    // The roles can do nothing beyond their databases.
    let attrs = as_admin(
        pg,
        &format!(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls \
             FROM pg_roles WHERE rolname = {};\n",
            quote_literal(&a.user)
        ),
    );
    assert_eq!(attrs.success(), "f|f|f|f|f");
    // The server never saw the password: it keeps a SCRAM verifier.
    let stored = as_admin(
        pg,
        &format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = {};\n",
            quote_literal(&a.user)
        ),
    );
    assert!(
        stored.success().starts_with("SCRAM-SHA-256$4096:"),
        "{}",
        stored.stdout
    );
    assert!(!stored.stdout.contains(&a.password));

    cluster.stop().await;
}

#[tokio::test]
async fn a_second_deploy_and_a_restart_keep_the_password_and_the_data() {
    root_only!();
    let dir = DataDir::new();
    let s = site("keep.localhost");
    let cluster = Running::start(&dir).await;
    let first = cluster
        .pg()
        .ensure_site(&s, true, &dir.secrets())
        .await
        .unwrap();
    as_site(
        &first,
        &first.dbname,
        Via::Tcp,
        "CREATE TABLE notes (n int);\nINSERT INTO notes VALUES (1), (2), (3);\n",
    )
    .success();

    let again = cluster
        .pg()
        .ensure_site(&s, true, &dir.secrets())
        .await
        .unwrap();
    assert_eq!(again, first);
    let sum = as_site(
        &again,
        &again.dbname,
        Via::Socket,
        "SELECT sum(n) FROM notes;\n",
    );
    assert_eq!(sum.success(), "6");

    // A node that died left its cluster running: the next one takes it over.
    let port = cluster.pg().port();
    cluster.abandon();
    let cluster = Running::start(&dir).await;
    assert_eq!(cluster.pg().port(), port);
    let sum = as_site(
        &first,
        &first.dbname,
        Via::Tcp,
        "SELECT sum(n) FROM notes;\n",
    );
    assert_eq!(sum.success(), "6");

    // A cluster that is down fails the deploy with where to look.
    cluster.stop().await;
    let stopped = Postgres::start_private(&dir.cluster_dir(), 0)
        .await
        .unwrap();
    stopped.stop().await.unwrap();
    let err = format!(
        "{:#}",
        stopped
            .ensure_site(&s, true, &dir.secrets())
            .await
            .unwrap_err()
    );
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert!(
        err.contains("hint: the node's private cluster is not running"),
        "{err}"
    );
    assert!(err.contains("postgresql.log"), "{err}");

    // Started again (as the next node start would): the same port, the
    // same password, the same rows.
    let cluster = Running::start(&dir).await;
    assert_eq!(cluster.pg().port(), port);
    let after = cluster
        .pg()
        .ensure_site(&s, true, &dir.secrets())
        .await
        .unwrap();
    assert_eq!(after, first);
    let sum = as_site(
        &after,
        &after.dbname,
        Via::Tcp,
        "SELECT sum(n) FROM notes;\n",
    );
    assert_eq!(sum.success(), "6");
    cluster.stop().await;
}

#[tokio::test]
async fn a_role_or_database_the_node_did_not_make_is_refused() {
    root_only!();
    let dir = DataDir::new();
    let cluster = Running::start(&dir).await;
    let pg = cluster.pg();

    // A role made by hand with the name a site's would get.
    let taken = site("taken.localhost");
    let role = db_name(&taken);
    as_admin(
        pg,
        &format!(
            "CREATE ROLE {} LOGIN PASSWORD 'someone-elses';\n",
            quote_ident(&role)
        ),
    )
    .success();
    let err = format!(
        "{:#}",
        pg.ensure_site(&taken, false, &dir.secrets())
            .await
            .unwrap_err()
    );
    assert!(
        err.contains(&format!(
            "the PostgreSQL role \"{role}\" exists but was not made by this node for taken.localhost"
        )),
        "{err}"
    );
    assert!(err.contains("COMMENT ON ROLE"), "{err}");
    // Nothing was made or changed for it.
    let dbs = as_admin(
        pg,
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = {};\n",
            quote_literal(&role)
        ),
    );
    assert_eq!(dbs.success(), "0");
    let login = as_site(
        &Credentials {
            dbname: "postgres".into(),
            user: role.clone(),
            password: "someone-elses".into(),
            host: "127.0.0.1".into(),
            port: pg.port(),
            socket_dir: None,
        },
        "postgres",
        Via::Tcp,
        "SELECT 1;\n",
    );
    // Its password still works (it is refused the database, not the login).
    login.refused("permission denied for database \"postgres\"");

    // The hint's way out: marked as the site's, it is the site's.
    as_admin(
        pg,
        &format!(
            "COMMENT ON ROLE {} IS 'toppcloud site taken.localhost';\n",
            quote_ident(&role)
        ),
    )
    .success();
    let creds = pg.ensure_site(&taken, false, &dir.secrets()).await.unwrap();
    as_site(&creds, &creds.dbname, Via::Tcp, "SELECT 1;\n").success();

    // A database made by hand with a site's name, owned by someone else.
    let other = site("squatted.localhost");
    let name = db_name(&other);
    as_admin(pg, &format!("CREATE DATABASE {};\n", quote_ident(&name))).success();
    let err = format!(
        "{:#}",
        pg.ensure_site(&other, false, &dir.secrets())
            .await
            .unwrap_err()
    );
    assert!(
        err.contains(&format!(
            "the PostgreSQL database \"{name}\" exists but is not owned by this site's role"
        )),
        "{err}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn an_existing_cluster_gets_site_databases_through_its_admin_role() {
    root_only!();
    let dir = DataDir::new();
    let cluster = Running::start(&dir).await;
    let pg = cluster.pg();
    // An admin that may make roles and databases, but is no superuser.
    as_admin(
        pg,
        "CREATE ROLE tcadmin LOGIN CREATEROLE CREATEDB PASSWORD 'admin pass: \\ and '' too';\n\
         GRANT CONNECT ON DATABASE postgres TO tcadmin;\n",
    )
    .success();
    let password_file = dir.data.join("admin-password");
    std::fs::write(&password_file, "admin pass: \\ and ' too\n").unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = AdminUrl::parse(&format!("postgresql://tcadmin@127.0.0.1:{}/", pg.port())).unwrap();

    let external = Postgres::external(&url, &password_file).unwrap();
    let secrets = dir.data.join("external-secrets");
    let (e_site, f_site) = (site("e.localhost"), site("f.localhost"));
    let e = external
        .ensure_site(&e_site, false, &secrets)
        .await
        .unwrap();
    let f = external
        .ensure_site(&f_site, false, &secrets)
        .await
        .unwrap();
    assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", pg.port()));
    assert_eq!(e.socket_dir, None);
    let out = as_site(
        &e,
        &e.dbname,
        Via::DatabaseUrl,
        "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('e');\nSELECT v FROM t;\n",
    );
    assert_eq!(out.success(), "e");
    as_site(&f, &e.dbname, Via::Tcp, "SELECT 1;\n")
        .refused(&format!("permission denied for database \"{}\"", e.dbname));
    assert_eq!(
        external
            .ensure_site(&e_site, false, &secrets)
            .await
            .unwrap(),
        e
    );

    // PostGIS needs a superuser: the error says so and what to run.
    let err = format!(
        "{:#}",
        external
            .ensure_site(&site("g.localhost"), true, &secrets)
            .await
            .unwrap_err()
    );
    assert!(err.contains("is not a superuser"), "{err}");
    assert!(err.contains("CREATE EXTENSION postgis"), "{err}");

    // A wrong password, and a cluster that is not there.
    std::fs::write(&password_file, "wrong\n").unwrap();
    let err = format!(
        "{:#}",
        external
            .ensure_site(&e_site, false, &secrets)
            .await
            .unwrap_err()
    );
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        err.contains("[services.postgresql] url and password_file"),
        "{err}"
    );

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let gone = AdminUrl::parse(&format!("postgresql://tcadmin@127.0.0.1:{port}/")).unwrap();
    let err = format!(
        "{:#}",
        Postgres::external(&gone, &password_file)
            .unwrap()
            .ensure_site(&e_site, false, &secrets)
            .await
            .unwrap_err()
    );
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert!(
        err.contains(&format!(
            "is the cluster at postgresql://tcadmin@127.0.0.1:{port}/postgres up"
        )),
        "{err}"
    );
    cluster.stop().await;
}

/// The password file of an existing cluster's admin must be private.
#[test]
fn an_admin_password_others_can_read_is_refused() {
    if Binaries::newest("psql").is_err() {
        eprintln!("\n\n*** SKIPPED: psql is not installed (provisioning/install-deps) ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "x\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let url = AdminUrl::parse("postgresql://admin@127.0.0.1/").unwrap();
    let err = format!("{:#}", Postgres::external(&url, &file).unwrap_err());
    assert!(
        err.contains(&format!("hint: chmod 600 {}", file.display())),
        "{err}"
    );
}
