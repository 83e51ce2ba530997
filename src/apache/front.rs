//! The TLS front: a small Apache instance of its own (mod_ssl, mod_md,
//! mod_proxy; no mod_wsgi) that terminates HTTPS and hands every request
//! to the sites' Apache on its plain loopback listener.
//!
//! Why a second Apache: mod_md puts a new certificate in use only at a
//! graceful restart, and a graceful restart of the Apache that runs the
//! sites' mod_wsgi daemons stops every daemon of every site (in-flight
//! requests fail, new ones get 503 until the daemons are forked again).
//! The front has no daemons: its graceful restart keeps the listening
//! socket and lets in-flight requests finish, so a certificate costs no
//! request on any site, and the sites' Apache is never restarted for one.
//!
//! The front marks what it hands on with a secret header (`FRONT_HEADER`,
//! compared by the sites' Apache through its secrets map, never through
//! its configuration), `X-Forwarded-Proto: https` and the client's address
//! in `X-Forwarded-For` (any copy the client sent is dropped first). Its
//! own configuration may hold the secret: the front runs no app code.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use super::md;
use super::probe;
use crate::config::ApacheConfig;
use crate::layout::Layout;
use crate::process::run_captured;

const FRONT_CONF: &str = include_str!("../../server-files/apache/tls.conf.in");

/// The header the front adds to every request it hands on; its value is
/// the front secret (`front` in the secrets map). A client's copy is
/// replaced by the front and removed by the sites' Apache.
pub const FRONT_HEADER: &str = "X-Toppcloud-Front";

/// The header the node's status requests to the front carry.
const STATUS_HEADER: &str = "X-Toppcloud-Status";

pub struct Front {
    apache2: PathBuf,
    modules_dir: PathBuf,
    layout: Layout,
    /// Where the front answers mod_md's status, on loopback, plain HTTP.
    status: Mutex<Option<SocketAddr>>,
    status_token: String,
    /// Why the front is not running, when it failed to start.
    error: Mutex<Option<String>>,
    /// One (re)start at a time: the node's start and the certificate
    /// watcher may both ask.
    applying: tokio::sync::Mutex<()>,
}

impl Front {
    pub fn new(cfg: &ApacheConfig, layout: Layout) -> Front {
        Front {
            apache2: cfg.apache2.clone(),
            modules_dir: cfg.modules_dir.clone(),
            layout,
            status: Mutex::new(None),
            status_token: hex::encode(rand::random::<[u8; 16]>()),
            error: Mutex::new(None),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn dir(&self) -> PathBuf {
        self.layout.apache_dir().join("front")
    }

    fn conf(&self) -> PathBuf {
        self.dir().join("front.conf")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir().join("run/httpd.pid")
    }

    /// The pid of the front's parent process, if it runs.
    pub fn parent_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Why the front does not run (its last start failed), if it does not.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// Whether the front runs and serves HTTPS.
    pub fn running(&self) -> bool {
        self.error().is_none() && self.parent_pid().is_some()
    }

    fn check_installed(&self) -> Result<()> {
        if !self.apache2.is_file() {
            bail!(
                "cannot start the TLS front: {} not found",
                self.apache2.display()
            );
        }
        for m in ["mod_ssl.so", "mod_md.so", "mod_proxy_http.so"] {
            let path = self.modules_dir.join(m);
            if !path.exists() {
                bail!(
                    "[https] is enabled but {} is missing (Debian's apache2 package has it)",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Renders the front's configuration: mod_md's directives, the status
    /// listener, one TLS vhost per name proxying to `backend`.
    fn render(
        &self,
        plan: &md::Plan,
        status: SocketAddr,
        backend: SocketAddr,
        secret: &str,
    ) -> String {
        let user = if unsafe { libc::geteuid() } == 0 {
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let mut vhosts = String::new();
        let port = plan.listen.port();
        for (name, hsts) in &plan.names {
            vhosts.push_str(&format!(
                "<VirtualHost *:{port}>\n  ServerName {name}\n{tls}  Include \"{proxy}\"\n</VirtualHost>\n",
                tls = md::render_tls(*hsts),
                proxy = self.dir().join("proxy.conf").display(),
            ));
        }
        FRONT_CONF
            .replace("{{SERVER_ROOT}}", &self.dir().display().to_string())
            .replace("{{LISTEN}}", &plan.listen.to_string())
            .replace("{{STATUS}}", &status.to_string())
            .replace("{{USER_GROUP}}", user)
            .replace("{{MODULES}}", &self.modules_dir.display().to_string())
            .replace(
                "{{MD}}",
                &md::render_directives(plan, &self.layout.md_store()),
            )
            .replace("{{STATUS_HEADER}}", STATUS_HEADER)
            .replace("{{STATUS_TOKEN}}", &self.status_token)
            .replace("{{BACKEND}}", &backend.to_string())
            .replace("{{FRONT_HEADER}}", FRONT_HEADER)
            .replace("{{SECRET}}", secret)
            .replace("{{VHOSTS}}", &vhosts)
    }

    /// Writes the configuration and starts the front, or restarts it
    /// gracefully when it runs (its listening socket stays open and
    /// in-flight requests finish). On failure the error is kept for
    /// `domains` and returned.
    pub async fn apply(&self, plan: &md::Plan, backend: SocketAddr, secret: &str) -> Result<()> {
        let _one = self.applying.lock().await;
        let r = self.try_apply(plan, backend, secret).await;
        self.set_error(r.as_ref().err().map(|e| format!("{e:#}")));
        r
    }

    async fn try_apply(&self, plan: &md::Plan, backend: SocketAddr, secret: &str) -> Result<()> {
        self.check_installed()?;
        let dir = self.dir();
        crate::dirs::create_dir(&dir, 0o711, None)?;
        crate::dirs::create_dir(&dir.join("run"), 0o711, None)?;
        crate::dirs::create_dir(&dir.join("logs"), 0o700, None)?;
        let running = self.parent_pid();
        let status_file = dir.join("status-listen");
        let status = match running
            .and(std::fs::read_to_string(&status_file).ok())
            .and_then(|s| s.trim().parse::<SocketAddr>().ok())
        {
            Some(prev) => prev,
            None => {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .context("no free loopback port for the TLS front's status")?;
                l.local_addr()?
            }
        };
        // Root's alone: it holds the front secret.
        crate::atomic::write_mode(
            &dir.join("proxy.conf"),
            render_proxy(backend, secret).as_bytes(),
            0o600,
        )?;
        crate::atomic::write_mode(
            &self.conf(),
            self.render(plan, status, backend, secret).as_bytes(),
            0o600,
        )?;
        let mut test = self.ctl(&["-t"]);
        run_captured(test.0, &test.1)
            .await
            .context("Apache refused the TLS front's generated configuration")?;
        let verb = if running.is_some() {
            "graceful"
        } else {
            "start"
        };
        test = self.ctl(&["-k", verb]);
        run_captured(test.0, &test.1)
            .await
            .with_context(|| format!("cannot start the TLS front on {}", plan.listen))?;
        std::fs::write(&status_file, status.to_string())
            .with_context(|| format!("cannot write {}", status_file.display()))?;
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        self.wait_listening(plan.listen, Duration::from_secs(15))
            .await
    }

    fn ctl(&self, args: &[&str]) -> (Command, String) {
        // The front outlives a node that restarts.
        let mut c = if args.contains(&"start") {
            crate::process::outliving_command(&self.apache2)
        } else {
            Command::new(&self.apache2)
        };
        c.arg("-f").arg(self.conf()).args(args);
        crate::process::clean_env(&mut c);
        (c, self.apache2.display().to_string())
    }

    async fn wait_listening(&self, listen: SocketAddr, limit: Duration) -> Result<()> {
        let addr = if listen.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        } else {
            listen
        };
        let deadline = Instant::now() + limit;
        loop {
            if self.parent_pid().is_some() && tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.dir().join("logs/error.log");
                let tail = std::fs::read_to_string(&log)
                    .map(|t| t.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                bail!("the TLS front did not start listening on {listen} within {limit:?}\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the front and waits for its parent to exit.
    pub async fn stop(&self) -> Result<()> {
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

    /// What mod_md says of every managed domain (its `md-status` handler
    /// on the front's loopback status listener, with the node's token).
    pub async fn md_status(&self) -> Result<md::Status> {
        let Some(addr) = *self.status.lock().unwrap_or_else(|e| e.into_inner()) else {
            bail!("the TLS front is not running");
        };
        let extra = [format!("{STATUS_HEADER}: {}", self.status_token)];
        let r = probe::get(
            addr,
            "toppcloud.invalid",
            "/.toppcloud/md-status",
            &extra,
            Duration::from_secs(5),
        )
        .await?;
        if r.status != 200 {
            bail!("mod_md's status answered {}", r.status);
        }
        serde_json::from_str(&r.body).context("mod_md's status is not what the node expects")
    }
}

/// What every TLS vhost of the front does with a request: hands it to the
/// sites' Apache with the Host kept, marked as HTTPS from the front.
fn render_proxy(backend: SocketAddr, secret: &str) -> String {
    format!(
        "# Generated by the toppcloud node: every TLS name's proxy to the sites' Apache\n\
         RequestHeader unset X-Forwarded-For\n\
         RequestHeader unset X-Forwarded-Host\n\
         RequestHeader unset X-Forwarded-Server\n\
         RequestHeader set X-Forwarded-Proto https\n\
         RequestHeader set {FRONT_HEADER} \"{secret}\"\n\
         ProxyPreserveHost On\n\
         ProxyAddHeaders On\n\
         # A new loopback connection per request: a pooled one the sites'\n\
         # Apache closed (idle, or at its own restart) would fail a request.\n\
         ProxyPass \"/\" \"http://{backend}/\" disablereuse=On\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_drops_the_clients_forwarded_headers_and_marks_its_own() {
        let text = render_proxy(SocketAddr::from(([127, 0, 0, 1], 8080)), "ab12");
        assert!(text.contains("RequestHeader unset X-Forwarded-For\n"));
        assert!(text.contains("RequestHeader set X-Toppcloud-Front \"ab12\"\n"));
        assert!(text.contains("\"http://127.0.0.1:8080/\""));
    }
}
