//! The node's SSH server (russh): `git push` and `git fetch` over
//! `ssh://anyuser@node:2222/SITE`. Authentication is by public key only and
//! the identity comes from the key whose signature was verified, never from
//! a key merely offered. The only commands are `git-receive-pack` and
//! `git-upload-pack` on a validated site name; both run the real git with
//! the repository's absolute path, so nothing the client sends reaches a
//! shell. Everything else (shells, ptys, forwarding, subsystems) is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelWriteHalf, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::access::{self, Identity};
use crate::engine::{DeployRequest, Engine, SiteTurn};
use crate::exec::Request;
use crate::layout::Layout;
use crate::names::SiteName;
use crate::progress::Progress;
use crate::push::Pushes;

/// What every connection shares.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub layout: Layout,
    pub authorized_keys: PathBuf,
    pub domain: String,
    pub pushes: Arc<Pushes>,
}

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

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, key: PrivateKey) {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = russh::server::Config {
        keys: vec![key],
        methods,
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH's first "none" probe should not cost every push a delay.
        auth_rejection_time_initial: Some(Duration::ZERO),
        // A build may print nothing for minutes: keepalives, not a timeout.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    };
    let mut server = Server { shared };
    use russh::server::Server as _;
    if let Err(e) = server.run_on_socket(Arc::new(config), &listener).await {
        tracing::error!("ssh server stopped: {e}");
    }
}

struct Server {
    shared: Arc<Shared>,
}

impl russh::server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<std::net::SocketAddr>) -> Connection {
        let cancel = CancellationToken::new();
        Connection {
            shared: self.shared.clone(),
            peer,
            identity: None,
            channels: HashMap::new(),
            git_protocol: HashMap::new(),
            _on_drop: cancel.clone().drop_guard(),
            cancel,
        }
    }
}

pub struct Connection {
    shared: Arc<Shared>,
    peer: Option<std::net::SocketAddr>,
    identity: Option<Identity>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    git_protocol: HashMap<ChannelId, String>,
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

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only says "go on and sign"; grants nothing.
        match access::identify(&self.shared.authorized_keys, offer.public_key) {
            Some(_) => Ok(Auth::Accept),
            None => Ok(Auth::reject()),
        }
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match access::identify(&self.shared.authorized_keys, key.public_key) {
            Some(id) => {
                tracing::info!(peer = ?self.peer, key = %id.name, fingerprint = %id.fingerprint, "ssh login");
                self.identity = Some(id);
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
        tracing::info!(peer = ?self.peer, "refused subsystem {name:?}");
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
        let request = match crate::exec::parse(&line, &self.shared.domain) {
            Ok(x) => x,
            Err(message) => return self.refuse(ch, session, &message),
        };
        let site = request.site().clone();
        let repo = self.shared.layout.repo(&site);
        // An unknown site and a forbidden one read the same.
        let not_found = format!(
            "site {site} not found, or this key ({}) may not use it",
            identity.name
        );
        if !identity.may_use(&site) {
            tracing::info!(key = %identity.name, site = %site, "refused: key not allowed on site");
            return self.refuse(ch, session, &not_found);
        }
        if matches!(request, Request::Fetch(_)) && !repo.join("HEAD").exists() {
            return self.refuse(ch, session, &not_found);
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
    shared: Arc<Shared>,
    identity: Identity,
    site: SiteName,
    repo: PathBuf,
    protocol: Option<String>,
    cancel: CancellationToken,
}

impl GitJob {
    fn git(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg(&self.repo)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.shared.layout.root())
            .env("LANG", "C.UTF-8")
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
        let (progress, lines) = Progress::channel();
        let forward = tokio::spawn(forward_lines(
            lines,
            channel.make_writer_ext(Some(1)),
            self.cancel.clone(),
        ));
        let turn = self.shared.engine.turn(&self.site, &progress).await;
        drop(progress);
        let _ = forward.await;
        turn
    }

    /// A push: one at a time per site (the site's deploy turn is held for
    /// the whole of receive-pack), and the pre-receive hook deploys.
    async fn receive(self, channel: Channel<Msg>) -> Result<()> {
        let repo = self.repo.clone();
        let prepared = tokio::task::spawn_blocking(move || crate::git::ensure_repo(&repo)).await?;
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
    async fn rsync(self, channel: Channel<Msg>, upload: crate::upload::Upload) -> Result<()> {
        let turn = self.turn(&channel).await;
        let layout = &self.shared.layout;
        let area = layout
            .tmp_dir()
            .join(format!("upload-{}", hex::encode(rand::random::<[u8; 8]>())));
        let _cleanup = RemoveOnDrop(area.clone());
        let seed = self.shared.engine.live_app_dir(&self.site);
        let seeded = {
            let area = area.clone();
            tokio::task::spawn_blocking(move || match seed {
                Some(live) => crate::release::seed(&live, &area),
                None => std::fs::create_dir_all(&area).context("cannot create the upload area"),
            })
            .await?
        };
        let (code, w) = match seeded {
            Ok(()) => {
                let mut cmd = tokio::process::Command::new("rsync");
                cmd.args(upload.argv(&area))
                    .current_dir(&area)
                    .env_clear()
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .env("LANG", "C.UTF-8")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                pump(cmd, channel, self.cancel.clone()).await?
            }
            Err(e) => {
                let (_, w) = channel.split();
                let line = format!("toppcloud: cannot prepare the upload: {e:#}\n");
                let _ = w.make_writer_ext(Some(1)).write_all(line.as_bytes()).await;
                finish(&w, 1, &self.cancel).await;
                return Err(e);
            }
        };
        if code != 0 {
            finish(&w, code, &self.cancel).await;
            return Ok(());
        }
        let (progress, lines) = Progress::channel();
        let forward = tokio::spawn(forward_lines(
            lines,
            w.make_writer_ext(Some(1)),
            self.cancel.clone(),
        ));
        let outward = {
            let area = area.clone();
            tokio::task::spawn_blocking(move || crate::release::outward_symlinks(&area)).await?
        };
        let deployed = if let Some(link) = outward.first() {
            Err(anyhow::anyhow!(
                "{link}: symlink points outside the app; the upload is refused"
            ))
        } else {
            let req = DeployRequest {
                site: self.site.clone(),
                source: area.clone(),
                origin: format!("toppcloud update by {}", self.identity.name),
                sha: None,
            };
            self.shared
                .engine
                .deploy_in_turn(&turn, req, &progress)
                .await
        };
        let code = match deployed {
            Ok(d) => {
                progress.say(d.summary());
                0
            }
            Err(e) => {
                progress.say(format!("toppcloud: deploy failed: {e:#}"));
                1
            }
        };
        drop(progress);
        let _ = forward.await;
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
