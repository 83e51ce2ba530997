//! The node's SSH server (russh): `git push` and `git fetch` over
//! `ssh://anyuser@node:2222/SITE`. Authentication is by public key only and
//! the identity comes from the key whose signature was verified, never from
//! a key merely offered. The only commands are `git-receive-pack` and
//! `git-upload-pack` on a validated site name (the real git, on the
//! repository's absolute path), rsync's receiver for `toppcloud update`
//! (its arguments built by the node, run as the site's account) and
//! `config SITE ...` for `toppcloud config`, `logs SITE ...`, `rollback SITE`,
//! `activate SITE ID`, `disable SITE`, `enable SITE` and
//! `destroy SITE --yes [--data]` (served by the engine itself):
//! nothing the client sends reaches a shell. Everything else (shells, ptys,
//! forwarding, subsystems) is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, Result};
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelWriteHalf, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::engine::report;
use crate::engine::settings::listing;
use crate::engine::{DeployRequest, SiteTurn};
use crate::layout::Layout;
use crate::names::SiteName;
use crate::node::Node;
use crate::node::exec::{ConfigAction, Request};
use crate::node::exec::{Logs, Report};
use crate::node::keys::{self, Identity};
use crate::node::listen::{self, Gate, Pass, Throttle};

use crate::progress::Progress;

/// Loads the host key, making one on first start.
pub fn host_key(layout: &Layout) -> Result<PrivateKey> {
    let path = layout.host_key();
    if path.exists() {
        return russh::keys::load_secret_key(&path, None)
            .with_context(|| format!("cannot read host key {}", path.display()));
    }
    let key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .context("cannot generate a host key")?;
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .context("cannot encode the host key")?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(key)
}

pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// Limits on connections that have not authenticated yet: what an
/// anonymous client can hold open, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time from accept to a verified key, handshake included.
    pub auth_timeout: Duration,
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_address: usize,
}

impl Limits {
    pub fn from_config(cfg: &crate::config::SshConfig) -> Limits {
        Limits {
            auth_timeout: Duration::from_secs(cfg.auth_timeout),
            max_unauthenticated: cfg.max_unauthenticated,
            max_unauthenticated_per_address: cfg.max_unauthenticated_per_address,
        }
    }
}

/// Serves SSH until the process ends. The accept loop never returns: an
/// accept error (out of file descriptors) is logged and retried, and a
/// connection over a cap is closed before the handshake costs anything.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Node>,
    key: PrivateKey,
    limits: Limits,
) {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = Arc::new(russh::server::Config {
        keys: vec![key],
        methods,
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH's first "none" probe should not cost every push a delay.
        auth_rejection_time_initial: Some(Duration::ZERO),
        // A build may print nothing for minutes: keepalives, not a timeout.
        // (Before authentication, `PreAuthStream` is the timeout.)
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    });
    let gate = Gate::new(
        limits.max_unauthenticated,
        limits.max_unauthenticated_per_address,
    );
    let mut accept_errors = Throttle::default();
    let mut turned_away = Throttle::default();
    loop {
        let (stream, peer) = listen::accept(&listener, "ssh", &mut accept_errors).await;
        let pass = match gate.admit(peer.ip()) {
            Ok(pass) => pass,
            Err(full) => {
                // Dropping the stream closes it: no banner, no key exchange.
                drop(stream);
                if let Some(held) = turned_away.allow(std::time::Instant::now()) {
                    tracing::warn!(
                        "ssh: closed a connection from {peer} at once: {full}{}",
                        listen::held_note(held)
                    );
                }
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            pass,
            config.clone(),
            shared.clone(),
            limits.auth_timeout,
        ));
    }
}

/// Runs one SSH connection to its end.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    pass: Pass,
    config: Arc<russh::server::Config>,
    shared: Arc<Node>,
    auth_timeout: Duration,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("ssh: set_nodelay for {peer}: {e}");
    }
    let authenticated = Arc::new(AtomicBool::new(false));
    let stream = PreAuthStream::new(stream, auth_timeout, authenticated.clone());
    let timed_out = stream.timed_out.clone();
    let cancel = CancellationToken::new();
    let handler = Connection {
        shared,
        peer,
        identity: None,
        pre_auth: Some(PreAuth {
            _pass: pass,
            authenticated,
        }),
        channels: HashMap::new(),
        git_protocol: HashMap::new(),
        follows: HashMap::new(),
        _on_drop: cancel.clone().drop_guard(),
        cancel,
    };
    let result = match russh::server::run_stream(config, stream, handler).await {
        Ok(session) => session.await,
        Err(e) => Err(e),
    };
    if timed_out.load(Ordering::Relaxed) {
        tracing::info!(
            "ssh: closed the connection from {peer}: not authenticated within {} s",
            auth_timeout.as_secs()
        );
    } else if let Err(e) = result {
        tracing::debug!("ssh: connection from {peer} ended: {e}");
    }
}

/// A connection's place under the unauthenticated caps, and the flag that
/// stops its pre-auth timer; both end when a key is verified.
struct PreAuth {
    _pass: Pass,
    authenticated: Arc<AtomicBool>,
}

/// The TCP stream of a connection, cut off once `auth_timeout` passes
/// before the client authenticated: from then on every read and write
/// fails, which ends the session wherever it is (reading the client's
/// banner, in the middle of a key exchange, or waiting for a packet), and
/// the socket is closed. russh's own inactivity timeout cannot do this: it
/// is off (builds are silent for minutes) and does not cover the banner.
struct PreAuthStream {
    inner: tokio::net::TcpStream,
    /// None once the client authenticated.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    authenticated: Arc<AtomicBool>,
    timed_out: Arc<AtomicBool>,
}

impl PreAuthStream {
    fn new(
        inner: tokio::net::TcpStream,
        timeout: Duration,
        authenticated: Arc<AtomicBool>,
    ) -> PreAuthStream {
        PreAuthStream {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            authenticated,
            timed_out: Arc::new(AtomicBool::new(false)),
        }
    }

    /// An error once the deadline has passed unauthenticated. Polling the
    /// timer here registers the task's waker, so a session that is idle
    /// waiting for the client is woken, and fails, at the deadline.
    fn check(&mut self, cx: &mut std::task::Context<'_>) -> std::io::Result<()> {
        if self.timed_out.load(Ordering::Relaxed) {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let Some(deadline) = self.deadline.as_mut() else {
            return Ok(());
        };
        if self.authenticated.load(Ordering::Acquire) {
            self.deadline = None;
            return Ok(());
        }
        if deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::Relaxed);
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        Ok(())
    }
}

impl AsyncRead for PreAuthStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PreAuthStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub struct Connection {
    shared: Arc<Node>,
    peer: SocketAddr,
    identity: Option<Identity>,
    /// Some until a key is verified.
    pre_auth: Option<PreAuth>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    git_protocol: HashMap<ChannelId, String>,
    /// The `logs -f` of each channel, stopped when the client closes it
    /// (a multiplexed ssh closes the channel, not the connection).
    follows: HashMap<ChannelId, CancellationToken>,
    /// Cancelled when the connection ends, however it ends.
    cancel: CancellationToken,
    _on_drop: tokio_util::sync::DropGuard,
}

impl Connection {
    /// Accepts the request only to explain the refusal and exit non-zero:
    /// a bare channel failure makes ssh print nothing useful.
    fn refuse(
        &mut self,
        ch: ChannelId,
        session: &mut Session,
        message: &str,
    ) -> Result<(), russh::Error> {
        self.channels.remove(&ch);
        session.channel_success(ch)?;
        session.extended_data(ch, 1, format!("toppcloud: {message}\n"))?;
        session.exit_status_request(ch, 1)?;
        session.eof(ch)?;
        session.close(ch)
    }
}

impl Connection {
    /// `status [--json]` and `releases SITE [--json]`: read-only reports on
    /// stdout. Status shows the sites the key may use; releases of a site
    /// it may not use, or one without releases, is refused as any command
    /// on it is.
    fn report(
        &mut self,
        ch: ChannelId,
        session: &mut Session,
        identity: Identity,
        report: Result<Report, String>,
    ) -> Result<(), russh::Error> {
        let report = match report {
            Ok(r) => r,
            Err(message) => return self.refuse(ch, session, &message),
        };
        if let Report::Releases { site, .. } = &report {
            if let Some(refused) = identity.refusal(site) {
                return self.refuse(ch, session, &refused);
            }
            if self.shared.engine.releases_report(site).is_none() {
                return self.refuse(ch, session, &identity.not_found(site));
            }
        }
        let Some(channel) = self.channels.remove(&ch) else {
            return self.refuse(ch, session, "no such channel");
        };
        session.channel_success(ch)?;
        let engine = self.shared.engine.clone();
        let cancel = self.cancel.child_token();
        tokio::spawn(async move {
            let (code, text, stream) = match report {
                Report::Status { json } => {
                    let r = engine.status_report(move |s| identity.may_use(s)).await;
                    (0, report::render(&r, json, report::render_status), None)
                }
                Report::Releases { site, json } => match engine.releases_report(&site) {
                    Some(r) => (0, report::render(&r, json, report::render_releases), None),
                    None => (
                        1,
                        format!("toppcloud: site {site} has no releases\n"),
                        Some(1),
                    ),
                },
            };
            let (_, w) = channel.split();
            let mut out = w.make_writer_ext(stream);
            if out.write_all(text.as_bytes()).await.is_ok() {
                let _ = out.flush().await;
            }
            finish(&w, code, &cancel).await;
        });
        Ok(())
    }
}

impl Connection {
    /// `logs SITE [-f] [-n N] [--access]`: the lines on stdout; a follow
    /// ends when the client closes the channel or the connection.
    fn logs(
        &mut self,
        ch: ChannelId,
        session: &mut Session,
        identity: Identity,
        logs: Result<Logs, String>,
    ) -> Result<(), russh::Error> {
        let logs = match logs {
            Ok(l) => l,
            Err(message) => return self.refuse(ch, session, &message),
        };
        let site = &logs.site;
        if let Some(refused) = identity.refusal(site) {
            return self.refuse(ch, session, &refused);
        }
        let kind = if logs.access {
            crate::engine::logs::Kind::Access
        } else {
            crate::engine::logs::Kind::Error
        };
        let Some(path) = self.shared.engine.site_log(site, kind) else {
            return self.refuse(ch, session, &identity.not_found(site));
        };
        let Some(channel) = self.channels.remove(&ch) else {
            return self.refuse(ch, session, "no such channel");
        };
        session.channel_success(ch)?;
        let stop = self.cancel.child_token();
        self.follows.insert(ch, stop.clone());
        tokio::spawn(async move {
            let (_, w) = channel.split();
            let out = tokio::sync::Mutex::new(w.make_writer());
            let send = |lines: Vec<String>| {
                let out = &out;
                async move {
                    let mut text = lines.join("\n");
                    text.push('\n');
                    let mut out = out.lock().await;
                    out.write_all(text.as_bytes()).await.is_ok() && out.flush().await.is_ok()
                }
            };
            let streamed =
                crate::engine::logs::stream(path, logs.lines, logs.follow, send, stop.clone())
                    .await;
            if logs.follow {
                tracing::info!(site = %logs.site, "logs -f of {} ended", logs.site);
            }
            let code = match streamed {
                Ok(()) => 0,
                Err(e) => {
                    tracing::warn!("logs: {e:#}");
                    let line =
                        "toppcloud: cannot read the log (the details are in the node's log)\n";
                    let _ = w.make_writer_ext(Some(1)).write_all(line.as_bytes()).await;
                    1
                }
            };
            finish(&w, code, &stop).await;
        });
        Ok(())
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only says "go on and sign"; grants nothing.
        match keys::identify(
            &self.shared.cfg.authorized_keys(),
            offer.public_key,
            self.peer.ip(),
        ) {
            Some(_) => Ok(Auth::Accept),
            None => Ok(Auth::reject()),
        }
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match keys::identify(
            &self.shared.cfg.authorized_keys(),
            key.public_key,
            self.peer.ip(),
        ) {
            Some(id) => {
                tracing::info!(peer = %self.peer, key = %id.name, fingerprint = %id.fingerprint, "ssh login");
                self.identity = Some(id);
                // Off the unauthenticated caps, and no pre-auth deadline.
                if let Some(pre) = self.pre_auth.take() {
                    pre.authenticated.store(true, Ordering::Release);
                }
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        ch: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&ch);
        if let Some(follow) = self.follows.remove(&ch) {
            follow.cancel();
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        ch: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // git asks for protocol v2 this way; no other variable is taken.
        let ok = name == "GIT_PROTOCOL"
            && value.len() < 100
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "=:._-".contains(c));
        if ok {
            self.git_protocol.insert(ch, value.to_string());
            session.channel_success(ch)
        } else {
            session.channel_failure(ch)
        }
    }

    async fn pty_request(
        &mut self,
        ch: ChannelId,
        _term: &str,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(ch)
    }

    async fn x11_request(
        &mut self,
        ch: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(ch)
    }

    async fn shell_request(
        &mut self,
        ch: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let who = self
            .identity
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        self.refuse(
            ch,
            session,
            &format!("hello {who}: this node has no shell; deploy with git push"),
        )
    }

    async fn subsystem_request(
        &mut self,
        ch: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, "refused subsystem {name:?}");
        self.channels.remove(&ch);
        session.channel_failure(ch)
    }

    async fn exec_request(
        &mut self,
        ch: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(identity) = self.identity.clone() else {
            return self.refuse(ch, session, "not authenticated");
        };
        let line = String::from_utf8_lossy(data).into_owned();
        if let Some(logs) = crate::node::exec::parse_logs(&line, &self.shared.cfg.domain) {
            return self.logs(ch, session, identity, logs);
        }
        if let Some(report) = crate::node::exec::parse_report(&line, &self.shared.cfg.domain) {
            return self.report(ch, session, identity, report);
        }
        let request = match crate::node::exec::parse(&line, &self.shared.cfg.domain) {
            Ok(x) => x,
            Err(message) => return self.refuse(ch, session, &message),
        };
        let site = request.site().clone();
        let repo = self.shared.layout.repo(&site);
        // An unknown site and a forbidden one read the same.
        if let Some(refused) = identity.refusal(&site) {
            return self.refuse(ch, session, &refused);
        }
        if matches!(request, Request::Fetch(_)) && !repo.join("HEAD").exists() {
            return self.refuse(ch, session, &identity.not_found(&site));
        }
        let Some(channel) = self.channels.remove(&ch) else {
            return self.refuse(ch, session, "no such channel");
        };
        session.channel_success(ch)?;
        let job = GitJob {
            shared: self.shared.clone(),
            identity,
            site,
            repo,
            protocol: self.git_protocol.remove(&ch),
            cancel: self.cancel.child_token(),
        };
        tokio::spawn(async move {
            let result = match request {
                Request::Receive(_) => job.receive(channel).await,
                Request::Fetch(_) => job.upload(channel).await,
                Request::Rsync(upload) => job.rsync(channel, upload).await,
                Request::Config { action, .. } => job.config(channel, action).await,
                Request::Rollback(_) => job.make_live(channel, None).await,
                Request::Activate { release, .. } => job.make_live(channel, Some(release)).await,
                Request::Disable(_) => job.lifecycle(channel, Lifecycle::Disable).await,
                Request::Enable(_) => job.lifecycle(channel, Lifecycle::Enable).await,
                Request::Destroy { data, .. } => {
                    job.lifecycle(channel, Lifecycle::Destroy { data }).await
                }
                Request::Domains { action, .. } => job.domains(channel, action).await,
            };
            if let Err(e) = result {
                tracing::warn!("git session: {e:#}");
            }
        });
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _ch: ChannelId,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

struct GitJob {
    shared: Arc<Node>,
    identity: Identity,
    site: SiteName,
    repo: PathBuf,
    protocol: Option<String>,
    cancel: CancellationToken,
}

impl GitJob {
    fn git(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        crate::process::clean_env(cmd.arg(&self.repo))
            .env("HOME", self.shared.layout.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = &self.protocol {
            cmd.env("GIT_PROTOCOL", p);
        }
        cmd
    }

    async fn upload(self, channel: Channel<Msg>) -> Result<()> {
        let cmd = self.git("git-upload-pack");
        let (code, w) = pump(cmd, channel, self.cancel.clone()).await?;
        finish(&w, code, &self.cancel).await;
        Ok(())
    }

    /// Waits for the site's turn, telling the client (on stderr) if it waits.
    async fn turn(&self, channel: &Channel<Msg>) -> SiteTurn {
        let (progress, forward) = self.progress_to(channel.make_writer_ext(Some(1)));
        let turn = self.shared.engine.turn(&self.site, &progress).await;
        drop(progress);
        let _ = forward.await;
        turn
    }

    /// A push: one at a time per site (the site's deploy turn is held for
    /// the whole of receive-pack), and the pre-receive hook deploys.
    async fn receive(self, channel: Channel<Msg>) -> Result<()> {
        let repo = self.repo.clone();
        let prepared =
            tokio::task::spawn_blocking(move || crate::engine::git::ensure_repo(&repo)).await?;
        if let Err(e) = prepared {
            let (_, w) = channel.split();
            let line = format!("toppcloud: cannot prepare the repository: {e:#}\n");
            let _ = w.make_writer_ext(Some(1)).write_all(line.as_bytes()).await;
            finish(&w, 1, &self.cancel).await;
            return Err(e);
        }
        let turn = self.turn(&channel).await;
        let token =
            self.shared
                .pushes
                .register(self.site.clone(), self.identity.name.clone(), turn);
        let mut cmd = self.git("git-receive-pack");
        cmd.env("TOPPCLOUD_PUSH", &token)
            .env("TOPPCLOUD_CONTROL", self.shared.layout.control_socket())
            .env(
                "TOPPCLOUD_BIN",
                std::env::current_exe().context("cannot find the toppcloud binary")?,
            );
        let result = pump(cmd, channel, self.cancel.clone()).await;
        self.shared.pushes.finish(&token);
        let (code, w) = result?;
        finish(&w, code, &self.cancel).await;
        Ok(())
    }

    /// `toppcloud update`: rsync's receiver fills a fresh upload area seeded
    /// with the live release, then the engine deploys it; its progress goes
    /// to the client's stderr before the exit status. The area is removed
    /// whatever happens.
    async fn rsync(self, channel: Channel<Msg>, upload: crate::node::upload::Upload) -> Result<()> {
        let turn = self.turn(&channel).await;
        let prepared = self
            .shared
            .engine
            .upload_area(&self.site, &Progress::channel().0)
            .await;
        let area = match prepared {
            Ok(a) => a,
            Err(e) => {
                let (_, w) = channel.split();
                let line = format!("toppcloud: cannot prepare the upload: {e:#}\n");
                let _ = w.make_writer_ext(Some(1)).write_all(line.as_bytes()).await;
                finish(&w, 1, &self.cancel).await;
                return Err(e);
            }
        };
        // Removed before the exit status goes out, so a client that has
        // its answer finds no upload area left.
        let cleanup = RemoveOnDrop(area.path.clone());
        // The receiver runs as the site's account, into the site's area:
        // whatever it is told, it can write nowhere else.
        let mut cmd = tokio::process::Command::new("rsync");
        crate::process::clean_env(cmd.args(upload.argv(&area.path)))
            .current_dir(&area.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(a) = &area.account {
            a.apply(&mut cmd);
        }
        let (code, w) = pump(cmd, channel, self.cancel.clone()).await?;
        if code != 0 {
            drop(cleanup);
            finish(&w, code, &self.cancel).await;
            return Ok(());
        }
        let (progress, forward) = self.progress_to(w.make_writer_ext(Some(1)));
        let req = DeployRequest {
            site: self.site.clone(),
            source: area.path.clone(),
            origin: format!("toppcloud update by {}", self.identity.name),
            sha: None,
            record: None,
            config: None,
        };
        let deployed = self
            .shared
            .engine
            .deploy_in_turn(&turn, req, &progress)
            .await;
        drop(cleanup);
        self.finish_deploy(&w, deployed, progress, forward).await;
        Ok(())
    }

    /// The last line of a deploy the client watched (its summary, or why it
    /// failed), then its exit status.
    async fn finish_deploy(
        &self,
        w: &ChannelWriteHalf<Msg>,
        deployed: Result<crate::engine::Deployed, crate::engine::Failed>,
        progress: Progress,
        forward: tokio::task::JoinHandle<()>,
    ) {
        let code = match deployed {
            Ok(d) => {
                progress.say(d.summary());
                0
            }
            Err(e) => {
                progress.say(format!("toppcloud: {e}"));
                1
            }
        };
        drop(progress);
        let _ = forward.await;
        finish(w, code, &self.cancel).await;
    }
}

impl GitJob {
    /// `toppcloud config`: a listing on stdout (names, or `NAME=VALUE` when
    /// asked), or a change deployed as a new release, its progress and
    /// summary on stderr as an upload's are.
    async fn config(self, channel: Channel<Msg>, action: ConfigAction) -> Result<()> {
        let (_, w) = channel.split();
        let change = match action {
            ConfigAction::List { values } => {
                let (code, text, stream) = match self.shared.engine.config_vars(&self.site) {
                    Ok(vars) if vars.is_empty() => {
                        (0, format!("{} has no config vars\n", self.site), Some(1))
                    }
                    Ok(vars) => (0, listing(&vars, values), None),
                    Err(e) => {
                        tracing::error!(site = %self.site, "cannot read config vars: {e:#}");
                        let line = "toppcloud: cannot read the config vars (the details are in the node's log)\n";
                        (1, line.to_string(), Some(1))
                    }
                };
                let mut out = w.make_writer_ext(stream);
                if out.write_all(text.as_bytes()).await.is_ok() {
                    let _ = out.flush().await;
                }
                finish(&w, code, &self.cancel).await;
                return Ok(());
            }
            ConfigAction::Change(change) => change,
        };
        let (progress, forward) = self.progress_to(w.make_writer_ext(Some(1)));
        let result = self
            .shared
            .engine
            .configure(&self.site, &change, &self.identity.name, &progress)
            .await;
        self.finish_deploy(&w, result, progress, forward).await;
        Ok(())
    }
}

impl GitJob {
    /// `toppcloud rollback` (`release` None) and `toppcloud activate`: a
    /// kept release made live, its progress and summary on stderr as a
    /// deploy's are.
    async fn make_live(
        self,
        channel: Channel<Msg>,
        release: Option<crate::names::ReleaseId>,
    ) -> Result<()> {
        let (_, w) = channel.split();
        let (progress, forward) = self.progress_to(w.make_writer_ext(Some(1)));
        let engine = &self.shared.engine;
        let by = &self.identity.name;
        let result = match release {
            None => engine.rollback(&self.site, by, &progress).await,
            Some(id) => engine.activate(&self.site, id, by, &progress).await,
        };
        self.finish_deploy(&w, result, progress, forward).await;
        Ok(())
    }
}

/// What `GitJob::lifecycle` does to its site.
enum Lifecycle {
    Disable,
    Enable,
    Destroy { data: bool },
}

impl GitJob {
    /// `toppcloud disable`, `enable` and `destroy`: progress and the
    /// summary on stderr, as a rollback's are.
    async fn lifecycle(self, channel: Channel<Msg>, op: Lifecycle) -> Result<()> {
        let (_, w) = channel.split();
        let (progress, forward) = self.progress_to(w.make_writer_ext(Some(1)));
        let engine = &self.shared.engine;
        let by = &self.identity.name;
        let result = match op {
            Lifecycle::Disable => engine.set_disabled(&self.site, true, by, &progress).await,
            Lifecycle::Enable => engine.set_disabled(&self.site, false, by, &progress).await,
            Lifecycle::Destroy { data } => engine.destroy(&self.site, data, by, &progress).await,
        };
        let code = match result {
            Ok(message) => {
                progress.say(message);
                0
            }
            Err(e) => {
                progress.say(format!("toppcloud: {e}"));
                1
            }
        };
        drop(progress);
        let _ = forward.await;
        finish(&w, code, &self.cancel).await;
        Ok(())
    }
}

impl GitJob {
    /// `toppcloud domains`: the listing or the change's summary on
    /// stdout, a refusal on stderr with exit status 1.
    async fn domains(
        self,
        channel: Channel<Msg>,
        action: crate::node::exec::DomainsAction,
    ) -> Result<()> {
        use crate::node::exec::DomainsAction;
        let (_, w) = channel.split();
        let engine = &self.shared.engine;
        let result = match &action {
            DomainsAction::List => engine.domains_report(&self.site).await,
            DomainsAction::Add(name) => engine.add_domain(&self.site, name).await,
            DomainsAction::Remove(name) => engine.remove_domain(&self.site, name).await,
        };
        if !matches!(action, DomainsAction::List) {
            tracing::info!(key = %self.identity.name, site = %self.site, "domains {action:?}: {result:?}");
        }
        let (code, text, stream) = match result {
            Ok(mut text) => {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                (0, text, None)
            }
            Err(e) => (1, format!("toppcloud: {e:#}\n"), Some(1)),
        };
        let mut out = w.make_writer_ext(stream);
        if out.write_all(text.as_bytes()).await.is_ok() {
            let _ = out.flush().await;
        }
        finish(&w, code, &self.cancel).await;
        Ok(())
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl GitJob {
    /// Progress whose lines go to the client's stderr (`writer`), in order,
    /// until the job is cancelled; the task ends when `progress` is dropped.
    fn progress_to<W: AsyncWrite + Unpin + Send + 'static>(
        &self,
        writer: W,
    ) -> (Progress, tokio::task::JoinHandle<()>) {
        let (progress, lines) = Progress::channel();
        let forward = tokio::spawn(forward_lines(lines, writer, self.cancel.clone()));
        (progress, forward)
    }
}

async fn forward_lines<W: AsyncWrite + Unpin>(
    mut lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut to: W,
    cancel: CancellationToken,
) {
    while let Some(line) = lines.recv().await {
        if cancel.is_cancelled() {
            continue;
        }
        let text = format!("{line}\n");
        tokio::select! {
            r = to.write_all(text.as_bytes()) => if r.is_err() { cancel.cancel() },
            _ = cancel.cancelled() => {}
        }
    }
}

/// exit-status before eof and close: git treats a missing status as a
/// failed transport even when the refs were updated.
async fn finish(w: &ChannelWriteHalf<Msg>, code: i32, cancel: &CancellationToken) {
    if cancel.is_cancelled() {
        return;
    }
    let _ = w.exit_status(code as u32).await;
    let _ = w.eof().await;
    let _ = w.close().await;
}

/// Runs `cmd` with the channel as its stdin, stdout and stderr, and returns
/// its exit code with the channel's write half, for the caller to add more
/// (deploy progress) before the exit status. If the client goes away, the
/// child is not killed: its output is drained to nowhere and it runs to its
/// end, so an upload or push whose data arrived completes (deploy and branch
/// together) or, if the data did not arrive, fails before anything is
/// deployed.
async fn pump(
    mut cmd: tokio::process::Command,
    channel: Channel<Msg>,
    cancel: CancellationToken,
) -> Result<(i32, ChannelWriteHalf<Msg>)> {
    let mut child = cmd.spawn().context("cannot start the command")?;
    let (mut read_half, write_half) = channel.split();
    let mut stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let stdin_task = tokio::spawn(async move {
        let mut reader = read_half.make_reader();
        let _ = tokio::io::copy(&mut reader, &mut stdin).await;
        // Dropping stdin tells the child the client sent everything.
    });
    let out = tokio::spawn(copy_or_drain(
        stdout,
        write_half.make_writer(),
        cancel.clone(),
    ));
    let err = tokio::spawn(copy_or_drain(
        stderr,
        write_half.make_writer_ext(Some(1)),
        cancel.clone(),
    ));
    let status = child.wait().await.context("waiting for the command")?;
    let _ = out.await;
    let _ = err.await;
    stdin_task.abort();
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok((code, write_half))
}

/// Copies a child's output to the client until the client is gone, then
/// keeps reading (and dropping) it so the child never blocks on a full pipe.
async fn copy_or_drain<R, W>(mut from: R, mut to: W, cancel: CancellationToken)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    let mut connected = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if connected {
            tokio::select! {
                r = to.write_all(&buf[..n]) => connected = r.is_ok(),
                _ = cancel.cancelled() => connected = false,
            }
        }
    }
    if connected {
        let _ = to.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn an_idle_unauthenticated_stream_fails_at_the_deadline() {
        let (server, _client) = pair().await;
        let authenticated = Arc::new(AtomicBool::new(false));
        let mut s = PreAuthStream::new(server, Duration::from_millis(200), authenticated);
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the read was woken at the deadline");
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(s.timed_out.load(Ordering::Relaxed));
        // And it stays failed, for writes too.
        assert!(s.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn an_authenticated_stream_has_no_deadline() {
        let (server, mut client) = pair().await;
        let authenticated = Arc::new(AtomicBool::new(false));
        let mut s = PreAuthStream::new(server, Duration::from_millis(100), authenticated.clone());
        client.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        authenticated.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(b"ok").await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
        assert!(!s.timed_out.load(Ordering::Relaxed));
    }
}
