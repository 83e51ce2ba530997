//! Apache + mod_wsgi as the node drives it: configuration generated from
//! `server-files/`, a private instance (dev, tests) or Debian's system
//! Apache (production), and the pool of warm daemon slots that releases are
//! loaded into and switched between.

pub mod forward;
pub mod front;
pub mod md;
pub mod probe;
pub mod routes;
pub mod shards;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::accounts::Account;
use crate::config::{ApacheConfig, ApacheMode};
use crate::layout::Layout;
use crate::process::run_captured;

const HTTPD_CONF: &str = include_str!("../../server-files/apache/httpd.conf.in");
const SITES_CONF: &str = include_str!("../../server-files/apache/sites.conf.in");
const SHIM: &str = include_str!("../../server-files/shim.wsgi");
/// Imported by the shim from its own directory (and shared with `toppcloud serve`).
const RUNNER: &str = include_str!("../../server-files/runner.py");
const NOT_FOUND: &str = include_str!("../../server-files/errors/404.html");
const MAINTENANCE: &str = include_str!("../../server-files/errors/503.html");

const INSTALL_HINT: &str =
    "hint: apt-get install apache2 libapache2-mod-wsgi-py3 (or run provisioning/install-deps)";

/// The account Apache's workers serve as when the node runs as root (the
/// private instance's `User`, Debian's `APACHE_RUN_USER`).
const WORKER_USER: &str = "www-data";

/// With `CHECK_HEADER`, names the slot a check request goes to.
const SLOT_HEADER: &str = "X-Toppcloud-Slot";

/// One mod_wsgi daemon group of the pool: `s007` in Apache's configuration
/// (group `tc_s007`), in the route map and in a site's state. The pool is
/// made of cells of `cell_size` consecutive slots that share one account.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Slot(usize);

impl Slot {
    pub fn new(index: usize) -> Slot {
        Slot(index)
    }

    pub fn index(self) -> usize {
        self.0
    }

    /// The slots of cell `cell`, in a pool of cells of `size` slots.
    pub fn of_cell(cell: usize, size: usize) -> Vec<Slot> {
        (cell * size..(cell + 1) * size).map(Slot).collect()
    }

    /// The cell this slot belongs to.
    pub fn cell(self, size: usize) -> usize {
        self.0 / size
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{:03}", self.0)
    }
}

impl TryFrom<String> for Slot {
    type Error = String;
    fn try_from(s: String) -> Result<Slot, String> {
        s.strip_prefix('s')
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .map(Slot)
            .ok_or_else(|| format!("{s:?} is not a slot (s000, s001, ...)"))
    }
}

impl From<Slot> for String {
    fn from(s: Slot) -> String {
        s.to_string()
    }
}

/// The header that marks the node's own check requests. Apache accepts a
/// check host only with the node's secret in it, and strips it before the
/// request reaches any app, so no app learns it.
const CHECK_HEADER: &str = "X-Toppcloud-Check";

/// The header Apache adds to a request it hands to the node because its
/// host routes to `load` (a kept release no slot holds). Its value is the
/// node's load secret, or that secret and `LOOP_SUFFIX` when the request
/// already carried the secret (the node's own re-request came back: a
/// loop). Any copy a client sends is removed first, and it never reaches
/// an app.
pub const LOAD_HEADER: &str = "X-Toppcloud-Load";
const LOOP_SUFFIX: &str = "-again";

/// What the load header of a request to the node says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMark {
    /// From Apache: a host whose release must be loaded first.
    Load,
    /// From Apache, for a request the node itself sent after loading.
    Loop,
    /// Not from Apache: a guess, or a copy from elsewhere.
    Forged,
}

pub struct Apache {
    cfg: ApacheConfig,
    layout: Layout,
    listen: Mutex<SocketAddr>,
    /// Written into the (root-only) Apache config at every start, and kept
    /// in a root-only file next to it: a node that restarts finds the
    /// configuration Apache runs unchanged, and need not restart Apache
    /// (which would restart every site's daemons).
    check_token: String,
    /// Marks the requests Apache hands to the node to load a release
    /// (written into the same root-only config).
    load_token: String,
    /// Marks the requests the TLS front hands on (see `front`).
    front_token: String,
    /// Marks the requests shard 0 hands on to another shard (see `shards`).
    hop_token: String,
    /// Where each shard but 0 listens (on loopback).
    shard_addrs: Mutex<BTreeMap<usize, SocketAddr>>,
    /// The node's HTTP door, where Apache sends hosts that route to `load`.
    load_door: Mutex<Option<SocketAddr>>,
    /// The account of each pool cell (None: the node's own user).
    accounts: Mutex<Vec<Option<Account>>>,
    /// What the node knows of each slot's daemons, from the OS alone.
    watch: Mutex<HashMap<Slot, SlotWatch>>,
    /// HTTPS as the next (re)start writes it; None: plain HTTP only.
    https: Mutex<Option<md::Plan>>,
    /// The slot each of Apache's children is named for, learnt once per
    /// process (a hint that saves reading thousands of names per scan).
    named: Mutex<HashMap<Daemon, Slot>>,
}

/// A mod_wsgi daemon as the kernel knows it: a pid and its start time, so a
/// recycled pid is never mistaken for the process that had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Daemon {
    pub pid: u32,
    start: u64,
}

/// The node never asks a daemon what it holds (the app shares its
/// interpreter and could answer anything). Instead it remembers when it
/// pointed a slot at a release: every daemon alive from then until the
/// pointer was cleared may have loaded it, and must be replaced (by Apache,
/// after a signal) before the slot counts as empty.
#[derive(Debug, Default)]
struct SlotWatch {
    pointer_set: bool,
    suspects: Vec<Daemon>,
    signalled: Option<Instant>,
    retired_at: Option<Instant>,
}

impl Apache {
    pub fn new(cfg: ApacheConfig, layout: Layout) -> Apache {
        let listen = cfg.listen;
        Apache {
            front_token: kept_token(&layout, "front"),
            hop_token: kept_token(&layout, "hop"),
            shard_addrs: Mutex::new(BTreeMap::new()),
            cfg,
            layout,
            listen: Mutex::new(listen),
            check_token: hex::encode(rand::random::<[u8; 16]>()),
            load_token: hex::encode(rand::random::<[u8; 16]>()),
            load_door: Mutex::new(None),
            accounts: Mutex::new(Vec::new()),
            watch: Mutex::new(HashMap::new()),
            https: Mutex::new(None),
            named: Mutex::new(HashMap::new()),
        }
    }

    /// What the next (re)start writes about HTTPS: mod_md's domains, the
    /// TLS vhosts and the names plain HTTP sends to HTTPS.
    pub fn set_https(&self, plan: Option<md::Plan>) {
        *self.https.lock().unwrap_or_else(|e| e.into_inner()) = plan;
    }

    /// The secret the TLS front marks its requests with.
    pub fn front_token(&self) -> &str {
        &self.front_token
    }

    /// Where the TLS front hands requests on: the plain listener, on
    /// loopback.
    pub fn backend_addr(&self) -> SocketAddr {
        self.probe_addr()
    }

    fn https_plan(&self) -> Option<md::Plan> {
        self.https.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Daemons per cell: a site's live, previous and spare slots.
    pub fn cell_size(&self) -> usize {
        self.cfg.cell_size
    }

    pub fn listen(&self) -> SocketAddr {
        *self.listen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells Apache where the node's HTTP door listens, before `start`:
    /// hosts routed to `load` are proxied there (on loopback when the door
    /// listens on every address).
    pub fn set_load_door(&self, door: SocketAddr) {
        let door = if door.ip().is_unspecified() {
            let lo: std::net::IpAddr = if door.is_ipv6() {
                std::net::Ipv6Addr::LOCALHOST.into()
            } else {
                Ipv4Addr::LOCALHOST.into()
            };
            SocketAddr::new(lo, door.port())
        } else {
            door
        };
        *self.load_door.lock().unwrap_or_else(|e| e.into_inner()) = Some(door);
    }

    /// Reads the load header of a request that reached the node; the
    /// secret is compared in constant time.
    pub fn load_mark(&self, value: &[u8]) -> LoadMark {
        use subtle::ConstantTimeEq;
        let load = self.load_token.as_bytes();
        let again = format!("{}{LOOP_SUFFIX}", self.load_token);
        if bool::from(value.ct_eq(load)) {
            LoadMark::Load
        } else if bool::from(value.ct_eq(again.as_bytes())) {
            LoadMark::Loop
        } else {
            LoadMark::Forged
        }
    }

    /// Where the node sends its own requests: loopback, whatever Apache binds.
    fn probe_addr(&self) -> SocketAddr {
        let l = self.listen();
        if l.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, l.port()))
        } else {
            l
        }
    }

    /// The URL suffix users reach sites at: ":8080", or "" on port 80.
    pub fn port_suffix(&self) -> String {
        match self.listen().port() {
            80 => String::new(),
            p => format!(":{p}"),
        }
    }

    /// A private instance's ServerRoot: shard 0's is `apache/`, shard K's
    /// `apache/shard-K/`.
    fn instance_dir(&self, shard: usize) -> PathBuf {
        match shard {
            0 => self.layout.apache_dir(),
            k => self.layout.apache_dir().join(format!("shard-{k}")),
        }
    }

    fn private_conf(&self, shard: usize) -> PathBuf {
        self.instance_dir(shard).join("httpd.conf")
    }

    fn sites_conf(&self, shard: usize) -> PathBuf {
        match (shard, self.cfg.mode) {
            (0, ApacheMode::System) => self
                .cfg
                .config_dir
                .join("sites-available/00-toppcloud.conf"),
            _ => self.instance_dir(shard).join("sites.conf"),
        }
    }

    fn pid_file(&self, shard: usize) -> PathBuf {
        match (shard, self.cfg.mode) {
            (0, ApacheMode::System) => self.cfg.pid_file.clone(),
            _ => self.instance_dir(shard).join("run/httpd.pid"),
        }
    }

    /// The pid of the parent process of the Apache clients reach, if it is
    /// running.
    pub fn parent_pid(&self) -> Option<u32> {
        self.shard_pid(0)
    }

    fn shard_pid(&self, shard: usize) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_file(shard)).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// The shards the pool's cells make (see `shards`): 0..1 until it grew.
    fn shard_count(&self) -> usize {
        let cells = self
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        shards::bounds(self.cfg.cells, cells).len()
    }

    /// The shard that runs a slot's daemons.
    fn shard_of(&self, slot: Slot) -> usize {
        shards::shard_of(slot.cell(self.cfg.cell_size), self.cfg.cells)
    }

    /// Where a shard listens: shard 0 as configured, the others on loopback.
    fn shard_addr(&self, shard: usize) -> Option<SocketAddr> {
        match shard {
            0 => Some(self.probe_addr()),
            k => self
                .shard_addrs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&k)
                .copied(),
        }
    }

    fn check_installed(&self) -> Result<()> {
        if !self.cfg.apache2.is_file() {
            bail!(
                "cannot start Apache: {} not found\n{INSTALL_HINT}",
                self.cfg.apache2.display()
            );
        }
        let wsgi = self.cfg.modules_dir.join("mod_wsgi.so");
        if !wsgi.exists() {
            bail!(
                "cannot start Apache: mod_wsgi not found at {}\n{INSTALL_HINT}",
                wsgi.display()
            );
        }
        if self.cfg.mode == ApacheMode::System {
            for m in ["wsgi", "rewrite", "headers", "proxy", "proxy_http"] {
                let load = self.cfg.config_dir.join(format!("mods-enabled/{m}.load"));
                if !load.exists() {
                    bail!(
                        "Apache module {m} is not enabled in {}\nhint: a2enmod wsgi rewrite headers proxy proxy_http",
                        self.cfg.config_dir.display()
                    );
                }
            }
        }
        Ok(())
    }

    fn render_sites(&self, shard: usize) -> String {
        let data = self.layout.root().display().to_string();
        let share = self.layout.share_dir().display().to_string();
        let base = self.layout.base_venv().display().to_string();
        let t = self.cfg.request_timeout;
        let accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mine = shards::bounds(self.cfg.cells, accounts.len())
            .get(shard)
            .cloned()
            .unwrap_or(0..0);
        let mut daemons = String::new();
        for (cell, account) in accounts.iter().enumerate() {
            if !mine.contains(&cell) {
                continue;
            }
            // A cell's daemons share its account, fixed here: Apache starts
            // them as that user, so no daemon ever runs another site's code.
            let user = account
                .as_ref()
                .map(|a| format!(" user={name} group={name}", name = a.name))
                .unwrap_or_default();
            for slot in Slot::of_cell(cell, self.cfg.cell_size) {
                // graceful-timeout lets in-flight requests of a retired slot
                // finish; shutdown-timeout bounds the rest. `home` because
                // mod_wsgi otherwise enters the user's home, which may not exist.
                daemons.push_str(&format!(
                    "WSGIDaemonProcess tc_{slot}{user} python-home=\"{base}\" home=\"{share}\" umask=0077 processes=1 threads=4 \
                     display-name=%{{GROUP}} inactivity-timeout={idle} graceful-timeout={t} \
                     shutdown-timeout={t} lang=C.UTF-8 locale=C.UTF-8\n",
                    idle = self.cfg.idle_timeout,
                ));
            }
        }
        let http_port = match (shard, self.cfg.mode) {
            (0, ApacheMode::Private) => self.listen().port(),
            (0, ApacheMode::System) => self.cfg.listen.port(),
            (k, _) => self.shard_addr(k).map(|a| a.port()).unwrap_or(0),
        };
        // HTTPS, the access log and the hops to other shards are shard 0's:
        // the others are reached through it alone.
        let https = if shard == 0 { self.https_plan() } else { None };
        let (access_log, hop) = if shard == 0 {
            (
                self.access_log_directive(),
                shards::render_hop(&self.layout.shards_map()),
            )
        } else {
            (
                "# Requests reach this Apache through the first one, which logs them.".to_string(),
                String::new(),
            )
        };
        let text = SITES_CONF
            .replace("{{DAEMONS}}", &daemons)
            .replace("{{BASE}}", &base)
            .replace("{{LOAD_HEADER}}", LOAD_HEADER)
            .replace("{{LOOP_SUFFIX}}", LOOP_SUFFIX)
            .replace("{{DATA_RE}}", &regex_escape(&data))
            .replace("{{DATA}}", &data)
            .replace("{{SHARE}}", &share)
            .replace(
                "{{ROUTES}}",
                &self.layout.routes_map().display().to_string(),
            )
            .replace("{{ACCESS_LOG}}", &access_log)
            .replace("{{HOP}}", &hop)
            .replace("{{CHECK_HEADER}}", CHECK_HEADER)
            .replace("{{SLOT_HEADER}}", SLOT_HEADER)
            .replace(
                "{{SECRETS}}",
                &self.layout.apache_secrets().display().to_string(),
            )
            .replace(
                "{{TLS_SUFFIX}}",
                &https.as_ref().map(|p| p.port_suffix()).unwrap_or_default(),
            );
        // HTTPS is the TLS front's (see `front`); here only what marks its
        // requests and sends plain HTTP to it.
        let (to_https, front_redirect) = match &https {
            None if shard > 0 => (shards::render_hop_trust(), String::new()),
            None => (String::new(), String::new()),
            Some(plan) => (
                md::render_to_https(plan, &self.layout.https_map(), front::FRONT_HEADER),
                md::render_front_redirect(plan),
            ),
        };
        let start = text.find("<VirtualHost ").unwrap_or(0);
        let end = text
            .find("</VirtualHost>")
            .map(|i| i + "</VirtualHost>".len())
            .unwrap_or(text.len());
        let block = &text[start..end];
        let vhost = |addr: &str, name: &str, to_https: &str, scheme, port: &str| {
            block
                .replace("{{VHOST}}", addr)
                .replace("{{SERVER_NAME}}", name)
                .replace("{{TO_HTTPS}}", to_https)
                .replace("{{FRONT_REDIRECT}}", &front_redirect)
                .replace("{{SCHEME}}", scheme)
                .replace("{{PORT_SUFFIX}}", port)
        };
        let http_suffix = match http_port {
            80 => String::new(),
            p => format!(":{p}"),
        };
        let plain = vhost(
            &format!("*:{http_port}"),
            "toppcloud.invalid",
            &to_https,
            "http",
            &http_suffix,
        );
        format!("{}{plain}{}", &text[..start], &text[end..])
    }

    /// The `CustomLog` that pipes every request line, its slot first, into
    /// `toppcloud node log-pipe` (`||`: no shell). None (a comment) when a
    /// path would need quoting Apache cannot do.
    fn access_log_directive(&self) -> String {
        let exe = match std::env::current_exe() {
            Ok(e) => e.display().to_string(),
            Err(e) => {
                tracing::warn!("no per-site access logs: cannot find the toppcloud binary: {e}");
                return "# no access log: the toppcloud binary was not found".to_string();
            }
        };
        let data = self.layout.root().display().to_string();
        let plain = |s: &str| !s.chars().any(|c| c.is_whitespace() || "\"\\%".contains(c));
        if !plain(&exe) || !plain(&data) {
            tracing::warn!(
                "no per-site access logs: {exe} or {data} has a space, quote or % in its path"
            );
            return "# no access log: the binary's or data dir's path needs quoting".to_string();
        }
        format!(
            "CustomLog \"||{exe} node log-pipe --data-dir {data} --cell-size {size}\" \
             \"%<{{TC_SLOT}}e %{{Host}}i %h %l %u %t \\\"%r\\\" %>s %b \\\"%{{Referer}}i\\\" \\\"%{{User-Agent}}i\\\"\"",
            size = self.cfg.cell_size
        )
    }

    fn render_httpd(&self, shard: usize) -> String {
        let user = if unsafe { libc::geteuid() } == 0 {
            // Apache refuses to serve as root; apps run as www-data.
            "User www-data\nGroup www-data"
        } else {
            ""
        };
        let listen = match shard {
            0 => Some(self.listen()),
            k => self.shard_addr(k),
        };
        // Only the first Apache takes clients' connections; the others
        // need few workers until shard 0 hands them many requests.
        let workers = match shard {
            0 => "",
            _ => "StartServers 1\nMinSpareThreads 10\nMaxSpareThreads 50",
        };
        HTTPD_CONF
            .replace(
                "{{SERVER_ROOT}}",
                &self.instance_dir(shard).display().to_string(),
            )
            .replace(
                "{{LISTEN}}",
                &listen.map(|a| a.to_string()).unwrap_or_default(),
            )
            .replace("{{USER_GROUP}}", user)
            .replace("{{WORKERS}}", workers)
            .replace("{{MODULES}}", &self.cfg.modules_dir.display().to_string())
            .replace(
                "{{SITES_CONF}}",
                &self.sites_conf(shard).display().to_string(),
            )
    }

    /// Writes the files Apache reads that come with the binary.
    /// Every daemon (each cell's account) reads the shim and runner, and
    /// Apache's workers read the route map and error pages: those are
    /// public; the rest of `apache/` is root's.
    fn write_share(&self) -> Result<()> {
        let dir = self.layout.apache_dir();
        let share = self.layout.share_dir();
        crate::dirs::create_dir(&dir, 0o711, None)?;
        crate::dirs::create_dir(&share, 0o755, None)?;
        crate::dirs::create_dir(&share.join("errors"), 0o755, None)?;
        for (path, text) in [
            (share.join("runner.py"), RUNNER),
            (share.join("shim.wsgi"), SHIM),
            (share.join("errors/404.html"), NOT_FOUND),
            (share.join("errors/503.html"), MAINTENANCE),
        ] {
            // mod_wsgi restarts a daemon whose script changed (its mtime),
            // on its next request: the same text is left alone, so a node
            // that restarts restarts no site.
            if std::fs::read(&path).is_ok_and(|b| b == text.as_bytes()) {
                continue;
            }
            crate::atomic::write_mode(&path, text.as_bytes(), 0o644)?;
        }
        // The node writes the certified names once the TLS front serves
        // them; until then plain HTTP redirects no name.
        if self.https_plan().is_some() && !self.layout.https_map().exists() {
            crate::atomic::write_mode(
                &self.layout.https_map(),
                md::render_map(&Default::default()).as_bytes(),
                0o644,
            )?;
        }
        self.write_secrets()?;
        if !self.layout.routes_map().exists() {
            routes::write(&self.layout.routes_map(), &routes::Routes::new())?;
        }
        crate::dirs::create_dir(&self.layout.slots_dir(), 0o711, None)?;
        Ok(())
    }

    /// The map Apache's workers look the node's secrets (and its door) up in: readable by
    /// their group only, so no site's account (and no daemon, forked from
    /// Apache's root parent before any worker read it) can learn them.
    /// mod_rewrite re-reads it when it changes: a node that keeps a running
    /// Apache replaces the secrets without a restart.
    fn write_secrets(&self) -> Result<()> {
        let mut text = format!(
            "check {}\nload {}\nfront {}\nhop {}\n",
            self.check_token, self.load_token, self.front_token, self.hop_token
        );
        // Hosts of kept releases no slot holds go to the node, which loads
        // them; without a door (an engine run without one) they get a 503.
        if let Some(door) = *self.load_door.lock().unwrap_or_else(|e| e.into_inner()) {
            text.push_str(&format!("door {door}\n"));
        }
        let owner = if unsafe { libc::geteuid() } == 0 {
            let workers = crate::accounts::lookup(WORKER_USER)?
                .with_context(|| format!("no {WORKER_USER} account for Apache's workers"))?;
            Some((0, workers.gid))
        } else {
            None
        };
        crate::atomic::write_owned(&self.layout.apache_secrets(), text.as_bytes(), 0o640, owner)
    }

    fn ctl(&self, shard: usize, args: &[&str]) -> (Command, String) {
        match (shard, self.cfg.mode) {
            (0, ApacheMode::System) => {
                let mut c = Command::new(&self.cfg.apachectl);
                c.args(args);
                if self.cfg.config_dir != Path::new("/etc/apache2") {
                    c.env("APACHE_CONFDIR", &self.cfg.config_dir);
                }
                (c, self.cfg.apachectl.display().to_string())
            }
            _ => {
                // The pool's Apaches outlive a node that restarts (a
                // private node stops them itself when it stops).
                let mut c = if args.contains(&"start") {
                    crate::process::outliving_command(&self.cfg.apache2)
                } else {
                    Command::new(&self.cfg.apache2)
                };
                c.arg("-f").arg(self.private_conf(shard)).args(args);
                // Apps inherit Apache's environment: give them a clean one.
                crate::process::clean_env(&mut c);
                (c, self.cfg.apache2.display().to_string())
            }
        }
    }

    async fn config_test(&self, shard: usize) -> Result<()> {
        let (cmd, prog) = self.ctl(shard, &["-t"]);
        run_captured(cmd, &prog)
            .await
            .context("Apache refused the generated configuration")?;
        Ok(())
    }

    /// Writes the configuration for a pool of `cells` and starts its
    /// Apaches, or restarts one gracefully when it runs another
    /// configuration (a node that crashed leaves them serving, which is
    /// what we want: one that runs this configuration is left alone).
    pub async fn start(&self, cells: Vec<Option<Account>>) -> Result<()> {
        self.check_installed()?;
        self.write_share()?;
        *self.accounts.lock().unwrap_or_else(|e| e.into_inner()) = cells;
        // The other shards first: shard 0 hands requests to them.
        self.start_shards().await?;
        match self.cfg.mode {
            ApacheMode::Private => self.start_private(0).await,
            ApacheMode::System => self.apply_system().await,
        }
    }

    /// Grows the pool to `cells`: the new cells get an Apache of their own
    /// (a shard), started beside the others, which keep serving untouched.
    pub async fn resize(&self, cells: Vec<Option<Account>>) -> Result<()> {
        *self.accounts.lock().unwrap_or_else(|e| e.into_inner()) = cells;
        self.start_shards().await
    }

    /// Starts every shard but 0 that does not run its configuration yet,
    /// then tells shard 0 where each one's slots are.
    async fn start_shards(&self) -> Result<()> {
        for k in 1..self.shard_count() {
            self.start_private(k)
                .await
                .with_context(|| format!("cannot start the pool's Apache number {k}"))?;
        }
        let total = self
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        let addrs = self
            .shard_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let map = shards::render_map(self.cfg.cells, self.cfg.cell_size, total, &addrs);
        let path = self.layout.shards_map();
        if !std::fs::read(&path).is_ok_and(|b| b == map.as_bytes()) {
            crate::atomic::write_mode(&path, map.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// A private instance: shard 0 in private mode (on `[apache] listen`),
    /// or another shard (on a loopback port of its own, kept while it runs).
    async fn start_private(&self, shard: usize) -> Result<()> {
        let dir = self.instance_dir(shard);
        crate::dirs::create_dir(&dir, 0o711, None)?;
        // run/ holds mod_wsgi's sockets, which Apache's workers must reach.
        crate::dirs::create_dir(&dir.join("run"), 0o711, None)?;
        crate::dirs::create_dir(&dir.join("logs"), 0o700, None)?;
        let running = self.shard_pid(shard);
        let port_file = dir.join("listen");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let want = match shard {
                0 => self.cfg.listen,
                _ => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            };
            let addr = if want.port() != 0 {
                want
            } else if let Some(prev) = running
                .and(std::fs::read_to_string(&port_file).ok())
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            {
                prev
            } else {
                free_port(want)?
            };
            match shard {
                0 => *self.listen.lock().unwrap_or_else(|e| e.into_inner()) = addr,
                k => {
                    self.shard_addrs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(k, addr);
                }
            }
            let files = [
                (self.sites_conf(shard), self.render_sites(shard)),
                (self.private_conf(shard), self.render_httpd(shard)),
            ];
            if running.is_some() && self.applied(shard, &files) {
                // A node that restarts finds its Apache serving exactly
                // this: it keeps serving, no daemon restarts.
                tracing::info!(
                    shard,
                    "Apache runs the current configuration already: not restarted"
                );
                return self.wait_listening(shard, Duration::from_secs(15)).await;
            }
            self.forget_applied(shard);
            for (path, text) in &files {
                // Root's alone: Apache reads them as root, before it drops to its workers' account.
                crate::atomic::write_mode(path, text.as_bytes(), 0o600)?;
            }
            self.config_test(shard).await?;
            let verb = if running.is_some() {
                "graceful"
            } else {
                "start"
            };
            let (cmd, prog) = self.ctl(shard, &["-k", verb]);
            match self.restart(cmd, &prog, verb).await {
                Ok(_) => {}
                Err(e) if want.port() == 0 && attempts < 5 && e.to_string().contains("in use") => {
                    continue;
                }
                Err(e) => return Err(e).context(format!("cannot start Apache on {addr}")),
            }
            std::fs::write(&port_file, addr.to_string())
                .with_context(|| format!("cannot write {}", port_file.display()))?;
            match self.wait_listening(shard, Duration::from_secs(15)).await {
                Ok(()) => return self.record_applied(shard, &files),
                Err(_) if want.port() == 0 && attempts < 5 && running.is_none() => {
                    // Lost a race for the port: Apache exits at bind time.
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_listening(&self, shard: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(addr) = self.shard_addr(shard)
                && self.shard_pid(shard).is_some()
                && tokio::net::TcpStream::connect(addr).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.instance_dir(shard).join("logs/error.log");
                let tail = std::fs::read_to_string(&log)
                    .map(|t| t.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                bail!(
                    "Apache did not start listening on {} within {limit:?}\n{tail}",
                    self.shard_addr(shard)
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// System mode: write our site file into Debian's Apache, test the whole
    /// configuration, and restore the previous file if the test fails.
    async fn apply_system(&self) -> Result<()> {
        let file = self.sites_conf(0);
        let rendered = self.render_sites(0);
        let enabled = self.cfg.config_dir.join("sites-enabled/00-toppcloud.conf");
        let files = [(file.clone(), rendered.clone())];
        if self.parent_pid().is_some() && enabled.exists() && self.applied(0, &files) {
            tracing::info!("Apache runs the current configuration already: not restarted");
            return Ok(());
        }
        self.forget_applied(0);
        let old = std::fs::read(&file).ok();
        let dir = file.parent().context("sites-available has no parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::atomic::write_mode(&file, rendered.as_bytes(), 0o600)?;
        if !enabled.exists() {
            std::os::unix::fs::symlink("../sites-available/00-toppcloud.conf", &enabled)
                .with_context(|| format!("cannot enable {}", enabled.display()))?;
        }
        if let Err(e) = self.config_test(0).await {
            match old {
                Some(bytes) => crate::atomic::write_mode(&file, &bytes, 0o600)?,
                None => {
                    let _ = std::fs::remove_file(&enabled);
                    let _ = std::fs::remove_file(&file);
                }
            }
            return Err(e.context(format!("restored the previous {}", file.display())));
        }
        let verb = if self.parent_pid().is_some() {
            "graceful"
        } else {
            "start"
        };
        let (cmd, prog) = self.ctl(0, &[verb]);
        self.restart(cmd, &prog, verb)
            .await
            .with_context(|| format!("apache2ctl {verb} failed"))?;
        self.record_applied(0, &files)
    }

    /// Whether the running Apache was (re)started on exactly these files:
    /// their digest was recorded after it, and they are still on disk.
    /// A node that wrote a configuration and died before Apache took it
    /// left no record, so the next start restarts Apache.
    fn applied(&self, shard: usize, files: &[(PathBuf, String)]) -> bool {
        let on_disk = files
            .iter()
            .all(|(path, text)| std::fs::read(path).is_ok_and(|b| b == text.as_bytes()));
        on_disk
            && std::fs::read_to_string(self.applied_file(shard))
                .is_ok_and(|d| d.trim() == config_digest(files))
    }

    fn record_applied(&self, shard: usize, files: &[(PathBuf, String)]) -> Result<()> {
        crate::atomic::write_mode(
            &self.applied_file(shard),
            config_digest(files).as_bytes(),
            0o600,
        )
    }

    fn forget_applied(&self, shard: usize) {
        let _ = std::fs::remove_file(self.applied_file(shard));
    }

    fn applied_file(&self, shard: usize) -> PathBuf {
        self.instance_dir(shard).join("applied.sha256")
    }

    /// Every start and restart of Apache goes through here, the one place
    /// that knows what a graceful restart costs: mod_wsgi stops every
    /// daemon of every site at once (requests being answered or queued on
    /// a daemon's socket fail with a 500, new ones wait until the daemons
    /// are forked again, seconds with hundreds of them). So the node
    /// restarts Apache only when its configuration changed: at the first
    /// start, when the pool grows, never when the node itself restarts.
    async fn restart(&self, cmd: Command, prog: &str, verb: &str) -> Result<()> {
        let started = Instant::now();
        let out = run_captured(cmd, prog).await;
        if verb != "start" {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "Apache {verb}: every site's daemons restart"
            );
        }
        out?;
        Ok(())
    }

    /// Stops the private instance and waits for its parent to exit.
    pub async fn stop(&self) -> Result<()> {
        if self.cfg.mode != ApacheMode::Private {
            // Debian's Apache and the shards beside it keep serving while
            // the node is away.
            return Ok(());
        }
        // Every shard is told first, then waited for: they stop together.
        let mut stopping = Vec::new();
        for shard in (0..self.shard_count()).rev() {
            let Some(pid) = self.shard_pid(shard) else {
                continue;
            };
            // mod_wsgi daemons that miss their stop signal (one sent while
            // a daemon was still starting) outlive Apache, holding sockets
            // and the log pipe: whichever of Apache's children is still
            // there once the parent is gone is killed.
            let children = children_of(pid);
            let (cmd, prog) = self.ctl(shard, &["-k", "stop"]);
            run_captured(cmd, &prog).await?;
            stopping.push((pid, children));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (pid, children) in stopping {
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let left: Vec<Daemon> = children
                .into_iter()
                .filter(|d| stat_of(d.pid).is_some_and(|(now, _)| now == *d))
                .collect();
            if !left.is_empty() {
                tracing::warn!("killing {} process(es) Apache left behind", left.len());
                for d in left {
                    // SAFETY: a plain kill(2) of a process we just saw alive,
                    // with the start time Apache's child had.
                    unsafe { libc::kill(d.pid as i32, libc::SIGKILL) };
                }
            }
        }
        Ok(())
    }

    /// A request through Apache as the node's own client, routed by `host`
    /// like any other.
    pub async fn get(&self, host: &str, path: &str, timeout: Duration) -> Result<probe::Response> {
        Ok(probe::get(self.probe_addr(), host, path, &[], timeout).await?)
    }

    /// A request to one slot, whatever the route map says, with `host` as
    /// its Host (the site's real name): how the node loads and checks a
    /// release before any public host routes to it. It carries the node's
    /// secret, without which Apache routes it as usual.
    pub async fn get_slot(
        &self,
        slot: Slot,
        host: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<probe::Response> {
        let extra = [
            format!("{CHECK_HEADER}: {}", self.check_token),
            format!("{SLOT_HEADER}: {slot}"),
        ];
        // Straight to the Apache that runs the slot (shard 0 hands no
        // check on).
        let shard = self.shard_of(slot);
        let addr = self.shard_addr(shard).with_context(|| {
            format!("the Apache of slot {slot} (number {shard}) is not running")
        })?;
        Ok(probe::get(addr, host, path, &extra, timeout).await?)
    }

    /// A client's request through Apache, once the node has loaded the
    /// release its host names; marked with the load secret, so that if its
    /// host still routes to `load`, Apache marks it a loop for the node.
    pub async fn forward<B>(
        &self,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<hyper::body::Incoming>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        forward::forward(self.probe_addr(), req, (LOAD_HEADER, &self.load_token)).await
    }

    fn watch<T>(&self, f: impl FnOnce(&mut HashMap<Slot, SlotWatch>) -> T) -> T {
        f(&mut self.watch.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_pointer(&self, slot: Slot, release_dir: &Path) -> Result<()> {
        let ptr = self.layout.slot_pointer(&slot.to_string());
        let dir = ptr.parent().context("slot pointer has no parent")?;
        crate::dirs::create_dir(dir, 0o711, None)?;
        let tmp = dir.join(".release.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(release_dir, &tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        // From here on, any daemon of the slot may become the release.
        self.watch(|w| w.entry(slot).or_default().pointer_set = true);
        std::fs::rename(&tmp, &ptr).with_context(|| format!("cannot replace {}", ptr.display()))
    }

    /// Clears a slot's pointer; the daemons that may have loaded it become
    /// suspects, to be replaced before the slot is given anything else.
    pub fn clear_pointer(&self, slot: Slot) -> Result<()> {
        self.remove_pointer(slot)?;
        let alive = self.daemons_of(slot);
        self.suspect(slot, alive);
        Ok(())
    }

    fn remove_pointer(&self, slot: Slot) -> Result<()> {
        let ptr = self.layout.slot_pointer(&slot.to_string());
        match std::fs::remove_file(&ptr) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", ptr.display())),
        }
    }

    /// The daemons alive when a slot's pointer went may have loaded it.
    fn suspect(&self, slot: Slot, alive: Vec<Daemon>) {
        self.watch(|w| {
            let st = w.entry(slot).or_default();
            if st.pointer_set {
                st.suspects.extend(alive);
                st.pointer_set = false;
                st.signalled = None;
            }
        });
    }

    /// At start, the node cannot know what the slots that hold neither a
    /// live nor a previous release loaded before (a deploy in flight when
    /// it stopped): their pointers go, and their daemons are suspects.
    /// One look at the processes for them all: a node restarting with
    /// hundreds of sites has thousands of slots and processes.
    pub fn forget(&self, slots: &[Slot]) -> Result<()> {
        for &slot in slots {
            self.watch(|w| w.entry(slot).or_default().pointer_set = true);
            self.remove_pointer(slot)?;
        }
        let mut alive = self.all_daemons();
        for &slot in slots {
            self.suspect(slot, alive.remove(&slot).unwrap_or_default());
        }
        Ok(())
    }

    /// Every daemon of our Apaches, by slot, from one scan of /proc.
    fn all_daemons(&self) -> HashMap<Slot, Vec<Daemon>> {
        let mut out: HashMap<Slot, Vec<Daemon>> = HashMap::new();
        let parents: HashMap<u32, usize> = (0..self.shard_count())
            .filter_map(|k| Some((self.shard_pid(k)?, k)))
            .collect();
        if parents.is_empty() {
            return out;
        }
        for (&parent, &shard) in &parents {
            for d in children_of(parent) {
                if let Some(slot) = slot_named(d.pid)
                    && self.shard_of(slot) == shard
                    && is_daemon(d, parent, slot, self.slot_uid(slot))
                {
                    out.entry(slot).or_default().push(d);
                }
            }
        }
        out
    }

    /// Retires whatever a slot holds: its pointer is cleared first, so the
    /// daemon Apache forks in its place can only come back empty. SIGUSR1
    /// lets in-flight requests finish (graceful-timeout) before it exits.
    pub async fn retire(&self, slot: Slot) -> Result<()> {
        self.clear_pointer(slot)?;
        self.watch(|w| w.entry(slot).or_default().retired_at = Some(Instant::now()));
        self.signal_suspects(slot)
    }

    /// Signals the slot's suspect daemons: SIGUSR1 once, SIGKILL if one is
    /// still there after the longest legitimate request (an app can block
    /// or ignore the polite signal; it only delays its own site).
    fn signal_suspects(&self, slot: Slot) -> Result<()> {
        let parent = self
            .shard_pid(self.shard_of(slot))
            .context("Apache is not running: no pid file")?;
        let grace = self.request_timeout() + Duration::from_secs(5);
        let (suspects, signalled) = self.watch(|w| {
            let st = w.entry(slot).or_default();
            (st.suspects.clone(), st.signalled)
        });
        let uid = self.slot_uid(slot);
        let signal = match signalled {
            None => libc::SIGUSR1,
            Some(at) if at.elapsed() > grace => libc::SIGKILL,
            Some(_) => return Ok(()),
        };
        for d in suspects {
            if !is_daemon(d, parent, slot, uid) {
                continue;
            }
            // SAFETY: kill(2) on a pid just checked to be this slot's daemon
            // under our Apache, with the same start time (not a reused pid).
            if unsafe { libc::kill(d.pid as i32, signal) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e)
                        .with_context(|| format!("cannot signal slot {slot} (pid {})", d.pid));
                }
            }
            if signal == libc::SIGKILL {
                tracing::warn!(
                    slot = %slot,
                    pid = d.pid,
                    "a retired daemon outlived its grace; killed"
                );
            }
        }
        self.watch(|w| {
            let st = w.entry(slot).or_default();
            if signal == libc::SIGUSR1 || st.signalled.is_none() {
                st.signalled = Some(Instant::now());
            }
        });
        Ok(())
    }

    /// When the slot's daemon was last told to retire, if ever (None sorts
    /// first: a slot never retired is the readiest).
    pub fn retired_at(&self, slot: Slot) -> Option<Instant> {
        self.watch(|w| w.get(&slot).and_then(|s| s.retired_at))
    }

    /// Waits until a slot has a daemon that cannot hold anything: none of
    /// the suspects, forked by Apache since. Only then may a release be
    /// pointed at it (a stray request to a daemon that still held a pointer
    /// would have served the wrong release).
    pub async fn wait_empty(&self, slot: Slot, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let alive = self.daemons_of(slot);
            let suspects = self.watch(|w| {
                let st = w.entry(slot).or_default();
                st.suspects.retain(|d| alive.contains(d));
                st.suspects.clone()
            });
            if suspects.is_empty() && !alive.is_empty() {
                self.watch(|w| w.entry(slot).or_default().signalled = None);
                return Ok(());
            }
            if !suspects.is_empty() {
                self.signal_suspects(slot)?;
            }
            if Instant::now() > deadline {
                bail!(
                    "slot {slot} did not come back empty within {limit:?} ({} daemon(s) to replace, {} running)",
                    suspects.len(),
                    alive.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The uid a slot's daemons run as, when the node gave its cell one.
    fn slot_uid(&self, slot: Slot) -> Option<u32> {
        let cell = slot.cell(self.cfg.cell_size);
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.get(cell).cloned().flatten().map(|a| a.uid)
    }

    /// The slot's daemons, from /proc: children of our Apache parent named
    /// for the slot (and, on a root node, running as its cell's account).
    pub fn daemons_of(&self, slot: Slot) -> Vec<Daemon> {
        let Some(parent) = self.shard_pid(self.shard_of(slot)) else {
            return Vec::new();
        };
        let uid = self.slot_uid(slot);
        // Hundreds of sites make thousands of processes: only the
        // children of the slot's Apache are looked at, and of those only
        // the ones named for this slot are read further (owner, name).
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        let found = children_of(parent)
            .into_iter()
            .filter(|d| {
                seen.insert(*d);
                // A daemon's name is set once, just after its fork: learnt
                // once (a name not yet set is read again next time).
                let of = match named.get(d) {
                    Some(s) => Some(*s),
                    None => {
                        let s = slot_named(d.pid);
                        if let Some(s) = s {
                            named.insert(*d, s);
                        }
                        s
                    }
                };
                of == Some(slot) && is_daemon(*d, parent, slot, uid)
            })
            .collect();
        // Only the processes looked at are known to be alive or gone; the
        // rest is a hint, bounded (a pid's start time changes with the
        // process, so a stale entry never names a new one).
        named.retain(|d, s| *s != slot || seen.contains(d));
        if named.len() > 65_536 {
            named.clear();
        }
        found
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.request_timeout)
    }
}

/// The TLS front's secret from the node's last run, else a new one. A
/// front outlives a node that restarts (it runs no site code; a node that
/// finds it serving leaves it), and its requests must keep counting as
/// HTTPS in the sites' Apache: with a new secret they would be answered
/// with a redirect to HTTPS until the front took the new one.
/// The same holds for the hop secret: shards outlive a node that restarts.
fn kept_token(layout: &Layout, name: &str) -> String {
    let prefix = format!("{name} ");
    std::fs::read_to_string(layout.apache_secrets())
        .ok()
        .and_then(|map| {
            map.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
        })
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()))
}

/// The processes whose parent is `parent`: from the kernel's list of each
/// of its threads' children where it keeps one (`/proc/P/task/T/children`:
/// a few reads, however many processes the machine runs), else from a scan
/// of /proc. Either way each one's stat line confirms its parent.
fn children_of(parent: u32) -> Vec<Daemon> {
    let listed: Option<Vec<u32>> = std::fs::read_dir(format!("/proc/{parent}/task"))
        .ok()
        .and_then(|tasks| {
            let lists: Vec<String> = tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .collect();
            (!lists.is_empty()).then(|| {
                lists
                    .iter()
                    .flat_map(|l| l.split_whitespace())
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
        });
    let pids = match listed {
        Some(pids) => pids,
        None => match std::fs::read_dir("/proc") {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .collect(),
            Err(_) => Vec::new(),
        },
    };
    pids.into_iter()
        .filter_map(stat_of)
        .filter(|(_, ppid)| *ppid == parent)
        .map(|(d, _)| d)
        .collect()
}

/// A process (pid and start time) and its parent, from its stat line.
fn stat_of(pid: u32) -> Option<(Daemon, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((Daemon { pid, start }, ppid))
}

/// The slot a process's name says it serves (`(wsgi:tc_s012)`), if any;
/// only a hint, which is_daemon confirms.
fn slot_named(pid: u32) -> Option<Slot> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let rest = cmdline.strip_prefix(b"(wsgi:tc_")?;
    let end = rest.iter().position(|&b| b == b')')?;
    let name = std::str::from_utf8(&rest[..end]).ok()?;
    Slot::try_from(name.to_string()).ok()
}

/// A process's start time, parent and uid, from /proc.
fn daemon_info(pid: u32) -> Option<(Daemon, u32, u32, Vec<u8>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: state (3), ppid (4), ...
    // starttime (22).
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    Some((Daemon { pid, start }, ppid, uid, cmdline))
}

/// Is `d` (still) the mod_wsgi daemon of `slot`: the same process (pid and
/// start time), a child of our Apache `parent`, named for the slot, and on
/// a root node running as the slot's cell account. The name alone proves
/// nothing (a process can rename itself); the parent and the account can
/// only be what Apache gave it.
fn is_daemon(d: Daemon, parent: u32, slot: Slot, uid: Option<u32>) -> bool {
    let Some((now, ppid, owner, cmdline)) = daemon_info(d.pid) else {
        return false;
    };
    now == d
        && ppid == parent
        && uid.is_none_or(|u| u == owner)
        && cmdline.starts_with(format!("(wsgi:tc_{slot})").as_bytes())
}

/// The digest of a configuration: each file's path and text.
fn config_digest(files: &[(PathBuf, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (path, text) in files {
        h.update(path.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn free_port(want: SocketAddr) -> Result<SocketAddr> {
    let l = TcpListener::bind(SocketAddr::new(want.ip(), 0))
        .with_context(|| format!("cannot find a free port on {}", want.ip()))?;
    Ok(l.local_addr()?)
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
