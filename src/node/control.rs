//! The node's local control channel: a Unix socket in the data dir (mode
//! 0600, so only the node's own user reaches it) that `toppcloud node deploy`,
//! `toppcloud node config` and the pre-receive hook of a push talk to. One JSON request line in; JSON event lines out, ending with a
//! `done` event.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::engine::DeployRequest;
use crate::engine::report;
use crate::node::Node;

use crate::names::SiteName;
use crate::node::exec::{ConfigAction, Request as ExecRequest, config_action};
use crate::node::push::{PreReceive, RefUpdate};
use crate::progress::Progress;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Deploy {
        site: String,
        dir: PathBuf,
    },
    /// `toppcloud node config SITE WORDS...`: the words after the site, as
    /// the SSH door takes them (none, `--values`, `set K=V...`,
    /// `unset K...`). A listing is the done message.
    Config {
        site: String,
        words: Vec<String>,
    },
    /// `toppcloud node rollback SITE`.
    Rollback {
        site: String,
    },
    /// `toppcloud node activate SITE ID`.
    Activate {
        site: String,
        release: String,
    },
    /// `toppcloud node disable SITE`.
    Disable {
        site: String,
    },
    /// `toppcloud node enable SITE`.
    Enable {
        site: String,
    },
    /// `toppcloud node destroy SITE --yes [--data]`: refused without `yes`.
    Destroy {
        site: String,
        #[serde(default)]
        yes: bool,
        #[serde(default)]
        data: bool,
    },
    /// `toppcloud node status [--json]`: every site; the report is the done
    /// message.
    Status {
        #[serde(default)]
        json: bool,
    },
    /// `toppcloud node releases SITE [--json]`: the site's kept releases;
    /// the report is the done message.
    Releases {
        site: String,
        #[serde(default)]
        json: bool,
    },
    /// `toppcloud node logs SITE [-f] [-n N] [--access]`: the lines as
    /// progress events; a follow goes on until the client closes the socket.
    Logs {
        site: String,
        #[serde(default = "default_log_lines")]
        lines: usize,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        access: bool,
    },
    /// `toppcloud node domains SITE [add NAME | remove NAME]`: the listing
    /// or the change's summary is the done message.
    Domains {
        site: String,
        #[serde(default)]
        words: Vec<String>,
    },
    /// From the pre-receive hook of a push the SSH server started.
    PreReceive {
        token: String,
        updates: Vec<RefUpdate>,
        quarantine: Option<PathBuf>,
    },
}

fn default_log_lines() -> usize {
    crate::node::exec::DEFAULT_LOG_LINES
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Progress { line: String },
    Done { ok: bool, message: String },
}

pub fn bind(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, state: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, state).await {
                        tracing::warn!("control connection: {e:#}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, ev: &Event) -> std::io::Result<()> {
    let mut line = serde_json::to_string(ev).map_err(std::io::Error::other)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await
}

/// Runs `job` to its end even if the client goes away, relaying its
/// progress while the client listens.
async fn relay<F>(w: &mut tokio::net::unix::OwnedWriteHalf, job: F) -> Result<()>
where
    F: FnOnce(Progress) -> tokio::task::JoinHandle<Result<String>>,
{
    let (progress, mut rx) = Progress::channel();
    let job = job(progress);
    let mut connected = true;
    while let Some(line) = rx.recv().await {
        if connected && send(w, &Event::Progress { line }).await.is_err() {
            connected = false;
        }
    }
    let done = match job.await {
        Ok(Ok(message)) => Event::Done { ok: true, message },
        Ok(Err(e)) => Event::Done {
            ok: false,
            message: format!("{e:#}"),
        },
        Err(e) => Event::Done {
            ok: false,
            message: format!("internal error: {e}"),
        },
    };
    if connected {
        send(w, &done).await?;
    }
    Ok(())
}

async fn handle(stream: UnixStream, state: Arc<Node>) -> Result<()> {
    let engine = state.engine.clone();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let Some(line) = lines.next_line().await? else {
        return Ok(());
    };
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("malformed request: {e}");
            send(&mut w, &Event::Done { ok: false, message }).await?;
            return Ok(());
        }
    };
    match req {
        Request::Deploy { site, dir } => {
            let site = match SiteName::parse(&site, engine.domain()) {
                Ok(s) => s,
                Err(e) => {
                    let message = e.to_string();
                    send(&mut w, &Event::Done { ok: false, message }).await?;
                    return Ok(());
                }
            };
            let origin = format!("node deploy {}", dir.display());
            relay(&mut w, move |progress| {
                tokio::spawn(async move {
                    let req = DeployRequest {
                        site,
                        source: dir,
                        origin,
                        sha: None,
                        record: None,
                        config: None,
                    };
                    let d = engine.deploy(req, &progress).await;
                    d.map(|d| d.summary()).map_err(|e| anyhow::anyhow!("{e}"))
                })
            })
            .await?;
        }
        Request::Config { site, words } => {
            let parsed = SiteName::parse(&site, engine.domain())
                .map_err(|e| e.to_string())
                .and_then(|site| Ok((site, config_action(&words)?)));
            let (site, action) = match parsed {
                Ok(p) => p,
                Err(message) => {
                    send(&mut w, &Event::Done { ok: false, message }).await?;
                    return Ok(());
                }
            };
            relay(&mut w, move |progress| {
                tokio::spawn(async move {
                    match action {
                        ConfigAction::List { values } => {
                            let vars = engine.config_vars(&site)?;
                            Ok(crate::engine::settings::listing(&vars, values))
                        }
                        ConfigAction::Change(change) => engine
                            .configure(&site, &change, "node config", &progress)
                            .await
                            .map(|d| d.summary())
                            .map_err(|e| anyhow::anyhow!("{e}")),
                    }
                })
            })
            .await?;
        }
        Request::Rollback { site } => {
            let words = vec!["rollback".to_string(), site];
            let parsed = crate::node::exec::release_command(&words, engine.domain());
            operate(&mut w, engine, parsed).await?;
        }
        Request::Activate { site, release } => {
            let words = vec!["activate".to_string(), site, release];
            let parsed = crate::node::exec::release_command(&words, engine.domain());
            operate(&mut w, engine, parsed).await?;
        }
        Request::Disable { site } => {
            let words = ["disable".to_string(), site];
            let parsed = crate::node::exec::lifecycle_command(&words, engine.domain());
            operate(&mut w, engine, parsed).await?;
        }
        Request::Enable { site } => {
            let words = ["enable".to_string(), site];
            let parsed = crate::node::exec::lifecycle_command(&words, engine.domain());
            operate(&mut w, engine, parsed).await?;
        }
        Request::Destroy { site, yes, data } => {
            let mut words = vec!["destroy".to_string(), site];
            if yes {
                words.push("--yes".to_string());
            }
            if data {
                words.push("--data".to_string());
            }
            let parsed = crate::node::exec::lifecycle_command(&words, engine.domain());
            operate(&mut w, engine, parsed).await?;
        }
        Request::Status { json } => {
            let r = engine.status_report(|_| true).await;
            let message = report::render(&r, json, report::render_status);
            send(&mut w, &Event::Done { ok: true, message }).await?;
        }
        Request::Releases { site, json } => {
            let done = match SiteName::parse(&site, engine.domain()) {
                Err(e) => Event::Done {
                    ok: false,
                    message: e.to_string(),
                },
                Ok(site) => match engine.releases_report(&site) {
                    Some(r) => Event::Done {
                        ok: true,
                        message: report::render(&r, json, report::render_releases),
                    },
                    None => Event::Done {
                        ok: false,
                        message: format!("site {site} not found: it has no releases"),
                    },
                },
            };
            send(&mut w, &done).await?;
        }
        Request::Logs {
            site,
            lines: n,
            follow,
            access,
        } => {
            let mut words = vec![site, "-n".to_string(), n.to_string()];
            if follow {
                words.push("-f".to_string());
            }
            if access {
                words.push("--access".to_string());
            }
            let parsed = crate::node::exec::logs_words(&words, engine.domain());
            let logs = match parsed {
                Ok(l) => l,
                Err(message) => {
                    send(&mut w, &Event::Done { ok: false, message }).await?;
                    return Ok(());
                }
            };
            let kind = if logs.access {
                crate::engine::logs::Kind::Access
            } else {
                crate::engine::logs::Kind::Error
            };
            let Some(path) = engine.site_log(&logs.site, kind) else {
                let message = format!("site {} not found", logs.site);
                send(&mut w, &Event::Done { ok: false, message }).await?;
                return Ok(());
            };
            // The client closing its end stops a follow.
            let stop = tokio_util::sync::CancellationToken::new();
            let watch = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    while let Ok(Some(_)) = lines.next_line().await {}
                    stop.cancel();
                })
            };
            let out = tokio::sync::Mutex::new(w);
            let relay = |lines: Vec<String>| {
                let out = &out;
                async move {
                    let mut w = out.lock().await;
                    for line in lines {
                        if send(&mut w, &Event::Progress { line }).await.is_err() {
                            return false;
                        }
                    }
                    true
                }
            };
            let streamed =
                crate::engine::logs::stream(path, logs.lines, logs.follow, relay, stop).await;
            watch.abort();
            let done = match streamed {
                Ok(()) => Event::Done {
                    ok: true,
                    message: String::new(),
                },
                Err(e) => Event::Done {
                    ok: false,
                    message: format!("cannot read the log: {e:#}"),
                },
            };
            let _ = send(&mut *out.lock().await, &done).await;
        }
        Request::Domains { site, words } => {
            use crate::node::exec::DomainsAction;
            let mut all = vec!["domains".to_string(), site];
            all.extend(words);
            let result = match crate::node::exec::domains_command(&all, engine.domain()) {
                Err(message) => Err(anyhow::anyhow!(message)),
                Ok(ExecRequest::Domains { site, action }) => match action {
                    DomainsAction::List => engine.domains_report(&site).await,
                    DomainsAction::Add(name) => engine.add_domain(&site, &name).await,
                    DomainsAction::Remove(name) => engine.remove_domain(&site, &name).await,
                },
                Ok(_) => Err(anyhow::anyhow!("internal error: not a domains command")),
            };
            let done = match result {
                Ok(message) => Event::Done { ok: true, message },
                Err(e) => Event::Done {
                    ok: false,
                    message: format!("{e:#}"),
                },
            };
            send(&mut w, &done).await?;
        }
        Request::PreReceive {
            token,
            updates,
            quarantine,
        } => {
            let state = state.clone();
            relay(&mut w, move |progress| {
                tokio::spawn(async move {
                    let req = PreReceive {
                        token,
                        updates,
                        quarantine,
                    };
                    crate::node::push::pre_receive(
                        &state.engine,
                        &state.pushes,
                        &state.layout,
                        req,
                        &progress,
                    )
                    .await
                    .map(|()| String::new())
                })
            })
            .await?;
        }
    }
    Ok(())
}

/// `node rollback|activate|disable|enable|destroy`, parsed as the SSH door
/// parses them (a refusal is the done message), run with "node" as who.
async fn operate(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    engine: Arc<crate::engine::Engine>,
    parsed: Result<ExecRequest, String>,
) -> Result<()> {
    let request = match parsed {
        Ok(r) => r,
        Err(message) => {
            send(w, &Event::Done { ok: false, message }).await?;
            return Ok(());
        }
    };
    relay(w, move |progress| {
        tokio::spawn(async move {
            let by = "node";
            let result = match request {
                ExecRequest::Rollback(site) => engine
                    .rollback(&site, by, &progress)
                    .await
                    .map(|d| d.summary()),
                ExecRequest::Activate { site, release } => engine
                    .activate(&site, release, by, &progress)
                    .await
                    .map(|d| d.summary()),
                ExecRequest::Disable(site) => engine.set_disabled(&site, true, by, &progress).await,
                ExecRequest::Enable(site) => engine.set_disabled(&site, false, by, &progress).await,
                ExecRequest::Destroy { site, data } => {
                    engine.destroy(&site, data, by, &progress).await
                }
                _ => return Err(anyhow::anyhow!("internal error: not an operation")),
            };
            result.map_err(|e| anyhow::anyhow!("{e}"))
        })
    })
    .await
}

/// The client side: sends one request, prints progress, returns the final
/// verdict as an error or Ok.
pub async fn request(socket: &Path, req: &Request) -> Result<String> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "no node is running here (cannot connect to {})\nhint: start one with `toppcloud node run --dev`",
            socket.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Event>(&line) {
            Ok(Event::Progress { line }) => println!("{line}"),
            Ok(Event::Done { ok: true, message }) => return Ok(message),
            Ok(Event::Done { ok: false, message }) => bail!("{message}"),
            Err(e) => bail!("unexpected answer from the node: {e}"),
        }
    }
    bail!("the node closed the connection before the deploy ended (did it stop?)")
}
