//! Apache + mod_wsgi as the node drives it: configuration generated from
//! `server-files/`, a private instance (dev, tests) or Debian's system
//! Apache (production), and the pool of warm daemon slots that releases are
//! loaded into and switched between.

pub mod probe;
pub mod routes;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::config::{ApacheConfig, ApacheMode};
use crate::layout::Layout;
use crate::process::run_captured;

const HTTPD_CONF: &str = include_str!("../../server-files/apache/httpd.conf.in");
const SITES_CONF: &str = include_str!("../../server-files/apache/sites.conf.in");
const SHIM: &str = include_str!("../../server-files/shim.wsgi");
/// Imported by the shim from its own directory (and shared with `toppcloud serve`).
const RUNNER: &str = include_str!("../../server-files/runner.py");
const NOT_FOUND: &str = include_str!("../../server-files/errors/404.html");

const INSTALL_HINT: &str =
    "hint: apt-get install apache2 libapache2-mod-wsgi-py3 (or run provisioning/install-deps)";

/// The host name that reaches one slot directly, from loopback only.
pub fn check_host(slot: &str) -> String {
    format!("{slot}.check.toppcloud.invalid")
}

pub fn slot_name(index: usize) -> String {
    format!("s{index:03}")
}

pub struct Apache {
    cfg: ApacheConfig,
    layout: Layout,
    listen: Mutex<SocketAddr>,
    /// slot -> pid of the daemon last told to retire; its replacement is
    /// recognised by a different pid.
    retired: Mutex<HashMap<String, (u32, Instant)>>,
}

/// What a slot's shim says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Empty { pid: u32 },
    Loaded { pid: u32, release: String },
}

impl Apache {
    pub fn new(cfg: ApacheConfig, layout: Layout) -> Apache {
        let listen = cfg.listen;
        Apache {
            cfg,
            layout,
            listen: Mutex::new(listen),
            retired: Mutex::new(HashMap::new()),
        }
    }

    pub fn listen(&self) -> SocketAddr {
        *self.listen.lock().unwrap_or_else(|e| e.into_inner())
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

    fn private_conf(&self) -> PathBuf {
        self.layout.apache_dir().join("httpd.conf")
    }

    fn sites_conf(&self) -> PathBuf {
        match self.cfg.mode {
            ApacheMode::Private => self.layout.apache_dir().join("sites.conf"),
            ApacheMode::System => self
                .cfg
                .config_dir
                .join("sites-available/00-toppcloud.conf"),
        }
    }

    fn pid_file(&self) -> PathBuf {
        match self.cfg.mode {
            ApacheMode::Private => self.layout.apache_dir().join("run/httpd.pid"),
            ApacheMode::System => self.cfg.pid_file.clone(),
        }
    }

    /// The pid of Apache's parent process, if it is running.
    pub fn parent_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
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
            for m in ["wsgi", "rewrite"] {
                let load = self.cfg.config_dir.join(format!("mods-enabled/{m}.load"));
                if !load.exists() {
                    bail!(
                        "Apache module {m} is not enabled in {}\nhint: a2enmod wsgi rewrite",
                        self.cfg.config_dir.display()
                    );
                }
            }
        }
        Ok(())
    }

    fn render_sites(&self, pool: usize) -> String {
        let data = self.layout.root().display().to_string();
        let share = self.layout.share_dir().display().to_string();
        let base = self.layout.base_venv().display().to_string();
        let t = self.cfg.request_timeout;
        let mut daemons = String::new();
        for i in 0..pool {
            // graceful-timeout lets in-flight requests of a retired slot
            // finish; shutdown-timeout bounds the rest. `home` because
            // mod_wsgi otherwise enters the user's home, which may not exist.
            daemons.push_str(&format!(
                "WSGIDaemonProcess tc_{slot} python-home=\"{base}\" home=\"{share}\" processes=1 threads=4 \
                 display-name=%{{GROUP}} inactivity-timeout={idle} graceful-timeout={t} \
                 shutdown-timeout={t} lang=C.UTF-8 locale=C.UTF-8\n",
                slot = slot_name(i),
                idle = self.cfg.idle_timeout,
            ));
        }
        let vhost = match self.cfg.mode {
            ApacheMode::Private => format!("*:{}", self.listen().port()),
            ApacheMode::System => format!("*:{}", self.cfg.listen.port()),
        };
        SITES_CONF
            .replace("{{DAEMONS}}", &daemons)
            .replace("{{DATA_RE}}", &regex_escape(&data))
            .replace("{{DATA}}", &data)
            .replace("{{SHARE}}", &share)
            .replace(
                "{{ROUTES}}",
                &self.layout.routes_map().display().to_string(),
            )
            .replace("{{VHOST}}", &vhost)
    }

    fn render_httpd(&self) -> String {
        let user = if unsafe { libc::geteuid() } == 0 {
            // Apache refuses to serve as root; apps run as www-data.
            "User www-data\nGroup www-data"
        } else {
            ""
        };
        HTTPD_CONF
            .replace(
                "{{SERVER_ROOT}}",
                &self.layout.apache_dir().display().to_string(),
            )
            .replace("{{LISTEN}}", &self.listen().to_string())
            .replace("{{USER_GROUP}}", user)
            .replace("{{MODULES}}", &self.cfg.modules_dir.display().to_string())
            .replace("{{SITES_CONF}}", &self.sites_conf().display().to_string())
    }

    /// Writes the files Apache reads that come with the binary.
    fn write_share(&self) -> Result<()> {
        let share = self.layout.share_dir();
        std::fs::create_dir_all(share.join("errors"))
            .with_context(|| format!("cannot create {}", share.display()))?;
        crate::atomic::write(&share.join("runner.py"), RUNNER.as_bytes())?;
        crate::atomic::write(&share.join("shim.wsgi"), SHIM.as_bytes())?;
        crate::atomic::write(&share.join("errors/404.html"), NOT_FOUND.as_bytes())?;
        if !self.layout.routes_map().exists() {
            routes::write(&self.layout.routes_map(), &routes::Routes::new())?;
        }
        Ok(())
    }

    fn ctl(&self, args: &[&str]) -> (Command, String) {
        match self.cfg.mode {
            ApacheMode::Private => {
                let mut c = Command::new(&self.cfg.apache2);
                c.arg("-f").arg(self.private_conf()).args(args);
                // Apps inherit Apache's environment: give them a clean one.
                c.env_clear()
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
                    .env("LANG", "C.UTF-8");
                (c, self.cfg.apache2.display().to_string())
            }
            ApacheMode::System => {
                let mut c = Command::new(&self.cfg.apachectl);
                c.args(args);
                if self.cfg.config_dir != Path::new("/etc/apache2") {
                    c.env("APACHE_CONFDIR", &self.cfg.config_dir);
                }
                (c, self.cfg.apachectl.display().to_string())
            }
        }
    }

    async fn config_test(&self) -> Result<()> {
        let (cmd, prog) = self.ctl(&["-t"]);
        run_captured(cmd, &prog)
            .await
            .context("Apache refused the generated configuration")?;
        Ok(())
    }

    /// Writes the configuration for a pool of `pool` slots and starts Apache,
    /// or restarts it gracefully when one is already running (a node that
    /// crashed leaves its private Apache serving, which is what we want).
    pub async fn start(&self, pool: usize) -> Result<()> {
        self.check_installed()?;
        self.write_share()?;
        match self.cfg.mode {
            ApacheMode::Private => self.start_private(pool).await,
            ApacheMode::System => self.apply_system(pool).await,
        }
    }

    async fn start_private(&self, pool: usize) -> Result<()> {
        let dir = self.layout.apache_dir();
        for sub in ["run", "logs"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let running = self.parent_pid();
        let port_file = dir.join("listen");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let want = self.cfg.listen;
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
            *self.listen.lock().unwrap_or_else(|e| e.into_inner()) = addr;
            crate::atomic::write(&self.sites_conf(), self.render_sites(pool).as_bytes())?;
            crate::atomic::write(&self.private_conf(), self.render_httpd().as_bytes())?;
            self.config_test().await?;
            let verb = if running.is_some() {
                "graceful"
            } else {
                "start"
            };
            let (cmd, prog) = self.ctl(&["-k", verb]);
            match run_captured(cmd, &prog).await {
                Ok(_) => {}
                Err(e) if want.port() == 0 && attempts < 5 && e.to_string().contains("in use") => {
                    continue;
                }
                Err(e) => return Err(e).context(format!("cannot start Apache on {addr}")),
            }
            std::fs::write(&port_file, addr.to_string())
                .with_context(|| format!("cannot write {}", port_file.display()))?;
            match self.wait_listening(Duration::from_secs(15)).await {
                Ok(()) => return Ok(()),
                Err(_) if want.port() == 0 && attempts < 5 && running.is_none() => {
                    // Lost a race for the port: Apache exits at bind time.
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_listening(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.parent_pid().is_some()
                && tokio::net::TcpStream::connect(self.probe_addr())
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.layout.apache_dir().join("logs/error.log");
                let tail = std::fs::read_to_string(&log)
                    .map(|t| t.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                bail!(
                    "Apache did not start listening on {} within {limit:?}\n{tail}",
                    self.listen()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// System mode: write our site file into Debian's Apache, test the whole
    /// configuration, and restore the previous file if the test fails.
    async fn apply_system(&self, pool: usize) -> Result<()> {
        let file = self.sites_conf();
        let old = std::fs::read(&file).ok();
        let dir = file.parent().context("sites-available has no parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::atomic::write(&file, self.render_sites(pool).as_bytes())?;
        let enabled = self.cfg.config_dir.join("sites-enabled/00-toppcloud.conf");
        if !enabled.exists() {
            std::os::unix::fs::symlink("../sites-available/00-toppcloud.conf", &enabled)
                .with_context(|| format!("cannot enable {}", enabled.display()))?;
        }
        if let Err(e) = self.config_test().await {
            match old {
                Some(bytes) => crate::atomic::write(&file, &bytes)?,
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
        let (cmd, prog) = self.ctl(&[verb]);
        run_captured(cmd, &prog)
            .await
            .with_context(|| format!("apache2ctl {verb} failed"))?;
        Ok(())
    }

    /// Grows the pool: every daemon restarts (a graceful restart), which is
    /// why the pool is sized ahead and grows in blocks.
    pub async fn resize(&self, pool: usize) -> Result<()> {
        self.start(pool).await
    }

    /// Stops the private instance and waits for its parent to exit.
    pub async fn stop(&self) -> Result<()> {
        if self.cfg.mode != ApacheMode::Private {
            return Ok(());
        }
        let Some(pid) = self.parent_pid() else {
            return Ok(());
        };
        let (cmd, prog) = self.ctl(&["-k", "stop"]);
        run_captured(cmd, &prog).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// A request through Apache as the node's own client.
    pub async fn get(&self, host: &str, path: &str, timeout: Duration) -> Result<probe::Response> {
        Ok(probe::get(self.probe_addr(), host, path, timeout).await?)
    }

    /// Asks a slot's shim what it holds, without making it load anything.
    pub async fn slot_state(&self, slot: &str) -> Result<SlotState> {
        let r = self
            .get(
                &check_host(slot),
                "/.toppcloud/slot",
                Duration::from_secs(10),
            )
            .await?;
        let pid = r
            .header("x-slot-pid")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("slot {slot} answered {} without its pid", r.status))?;
        match r.header("x-slot-state").unwrap_or_default() {
            "empty" => Ok(SlotState::Empty { pid }),
            s => Ok(SlotState::Loaded {
                pid,
                release: s.trim_start_matches("loaded ").to_string(),
            }),
        }
    }

    pub fn set_pointer(&self, slot: &str, release_dir: &Path) -> Result<()> {
        let ptr = self.layout.slot_pointer(slot);
        let dir = ptr.parent().context("slot pointer has no parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(".release.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(release_dir, &tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        std::fs::rename(&tmp, &ptr).with_context(|| format!("cannot replace {}", ptr.display()))
    }

    pub fn clear_pointer(&self, slot: &str) -> Result<()> {
        let ptr = self.layout.slot_pointer(slot);
        match std::fs::remove_file(&ptr) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", ptr.display())),
        }
    }

    /// Retires whatever a slot holds: its pointer is cleared first, so the
    /// daemon Apache forks in its place can only come back empty. SIGUSR1
    /// lets in-flight requests finish (graceful-timeout) before it exits.
    pub async fn retire(&self, slot: &str) -> Result<()> {
        self.clear_pointer(slot)?;
        match self.slot_state(slot).await? {
            SlotState::Empty { .. } => Ok(()),
            SlotState::Loaded { pid, .. } => self.signal_daemon(slot, pid),
        }
    }

    fn signal_daemon(&self, slot: &str, pid: u32) -> Result<()> {
        let parent = self
            .parent_pid()
            .context("Apache is not running: no pid file")?;
        if !is_our_daemon(pid, parent, slot) {
            bail!("pid {pid} is not slot {slot}'s daemon under Apache {parent}; not signalling it");
        }
        // SAFETY: kill(2) with a pid checked above to be our Apache's child.
        if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e).with_context(|| format!("cannot signal slot {slot} (pid {pid})"));
            }
        }
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot.to_string(), (pid, Instant::now()));
        Ok(())
    }

    /// When the slot's daemon was last told to retire, if ever (None sorts
    /// first: a slot never retired is the readiest).
    pub fn retired_at(&self, slot: &str) -> Option<Instant> {
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(slot)
            .map(|(_, at)| *at)
    }

    /// Waits until a slot is an empty daemon that is not the one last retired:
    /// only then may a release be pointed at it (a stray request to a daemon
    /// that still held a pointer would have loaded the wrong release).
    pub async fn wait_empty(&self, slot: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut last_err = None;
        loop {
            let retired = self
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(slot)
                .map(|(pid, _)| *pid);
            match self.slot_state(slot).await {
                Ok(SlotState::Empty { pid }) if Some(pid) != retired => return Ok(()),
                Ok(SlotState::Empty { .. }) => {}
                Ok(SlotState::Loaded { pid, .. }) => {
                    self.clear_pointer(slot)?;
                    if Some(pid) != retired {
                        self.signal_daemon(slot, pid)?;
                    }
                }
                Err(e) => last_err = Some(e),
            }
            if Instant::now() > deadline {
                let why = last_err.map(|e| format!(": {e:#}")).unwrap_or_default();
                bail!("slot {slot} did not come back empty within {limit:?}{why}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.request_timeout)
    }
}

/// Is `pid` the mod_wsgi daemon of `slot`, a child of our Apache `parent`?
fn is_our_daemon(pid: u32, parent: u32, slot: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the parenthesised command: state, ppid, ...
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    ppid == Some(parent) && cmdline.starts_with(format!("(wsgi:tc_{slot})").as_bytes())
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
