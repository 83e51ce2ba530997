//! `toppcloud node run`: the daemon that owns the node's state. It takes the
//! data dir's lock, starts the engine (and with it Apache), then serves the
//! HTTP API (webhooks included), SSH and the control socket until SIGINT or
//! SIGTERM.

pub mod control;
pub mod exec;
pub mod http;
pub mod keys;
pub mod listen;
pub mod load;
pub mod push;
pub mod ssh;
pub mod upload;
pub mod webhook;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::NodeConfig;
use crate::engine::Engine;
use crate::engine::upstream::Upstream;
use crate::layout::Layout;
use push::Pushes;
use webhook::ReplayCache;

/// What every door shares, built once by `run` and handed to each: the
/// config, the data dir's layout, the engine (which owns sites, slots,
/// deploy records and queues), upstream deploys, pushes in flight, and the
/// webhook deliveries already seen.
pub struct Node {
    pub cfg: Arc<NodeConfig>,
    pub layout: Layout,
    pub engine: Arc<Engine>,
    pub upstream: Arc<Upstream>,
    pub pushes: Pushes,
    pub replays: Mutex<ReplayCache>,
}

pub async fn run(cfg: NodeConfig) -> Result<()> {
    // What the node writes is its own unless it opens it up on purpose
    // (the shim, the route map, what a site's account or Apache must read).
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    cfg.check_file_mode()?;
    let layout = Layout::new(cfg.data_dir.clone());
    std::fs::create_dir_all(layout.root())
        .with_context(|| format!("cannot create data dir {}", layout.root().display()))?;
    // Others may pass through (Apache's workers to static files, each
    // site's account to its own release), never list.
    std::fs::set_permissions(layout.root(), std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("cannot chmod {}", layout.root().display()))?;
    check_reachable(layout.root())?;
    if !crate::accounts::isolating() {
        tracing::warn!(
            "running as a normal user: this node cannot create an account per site, so every site's code runs as this user (run the node as root to isolate sites)"
        );
    }
    let lock = take_lock(&layout)?;
    let _ = std::fs::remove_file(layout.ready_file());
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    // Read once now so that lines the node refuses are reported at start,
    // not only when someone tries their key.
    if let Err(e) = keys::load(&cfg.authorized_keys()) {
        tracing::error!("{e:#}");
    }

    let engine = Arc::new(Engine::open(cfg.clone())?);
    let http_listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([http] listen)", cfg.http.listen))?;
    let http_addr = http_listener.local_addr()?;
    // Apache hands the hosts of releases to load on demand to this door.
    engine.apache().set_load_door(http_addr);
    let control_listener = control::bind(&layout.control_socket())?;
    let ssh_listener = tokio::net::TcpListener::bind(cfg.ssh.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([ssh] listen)", cfg.ssh.listen))?;
    let ssh_addr = ssh_listener.local_addr()?;
    let host_key = ssh::host_key(&layout)?;

    if let Err(e) = engine.start().await {
        engine.stop().await;
        return Err(e);
    }
    let apache = engine.apache().listen();

    let cfg = Arc::new(cfg);
    let node = Arc::new(Node {
        upstream: Upstream::new(engine.clone(), layout.clone(), cfg.clone()),
        engine: engine.clone(),
        layout: layout.clone(),
        pushes: Pushes::default(),
        replays: Mutex::new(ReplayCache::new(http::REPLAY_CACHE)),
        cfg: cfg.clone(),
    });
    let control = tokio::spawn(control::serve(control_listener, node.clone()));
    let rotation = tokio::spawn(rotate_logs(layout.clone()));
    let certificates = tokio::spawn(engine.clone().watch_certificates());
    let fingerprint = ssh::fingerprint(&host_key);
    let ssh = tokio::spawn(ssh::serve(
        ssh_listener,
        node.clone(),
        host_key,
        ssh::Limits::from_config(&cfg.ssh),
    ));
    let http = tokio::spawn(http::serve(
        http_listener,
        http::router(node.clone()),
        http::Limits::from_config(&cfg.http),
    ));

    let mut ready = serde_json::json!({
        "pid": std::process::id(),
        "http": http_addr.to_string(),
        "apache": apache.to_string(),
        "ssh": ssh_addr.to_string(),
    });
    if let Some(tls) = engine.https_listen() {
        ready["https"] = serde_json::Value::String(tls.to_string());
    }
    crate::atomic::write(&layout.ready_file(), ready.to_string().as_bytes())?;
    println!(
        "toppcloud node ready: sites at http://<site>.{}:{}/, API at http://{http_addr}/, data in {}",
        cfg.domain,
        apache.port(),
        layout.root().display()
    );
    println!("ssh on {ssh_addr}, host key {fingerprint}");
    println!("push with: git remote add toppcloud ssh://toppcloud@{ssh_addr}/SITE");

    shutdown_signal().await;
    // No new connections; those open go on, and the deploys in flight get
    // the stop timeout to finish.
    tracing::info!("stopping: no longer accepting connections");
    for door in [&http, &ssh, &control, &rotation] {
        door.abort();
    }
    certificates.abort();
    let _ = std::fs::remove_file(layout.ready_file());
    drain(&engine, Duration::from_secs(cfg.stop_timeout)).await;
    let _ = std::fs::remove_file(layout.control_socket());
    engine.stop().await;
    tracing::info!("stopped");
    drop(lock);
    Ok(())
}

/// Waits for the deploys in flight, up to `limit`, and says whether they
/// all finished or which were abandoned (a release an abandoned deploy left
/// half-made is removed at the next start; the live site never changed).
async fn drain(engine: &Engine, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut waited = false;
    loop {
        let left = engine.deploys().unfinished();
        if left.is_empty() {
            if waited {
                tracing::info!("stopping: every deploy in flight finished");
            }
            return;
        }
        if !waited {
            let ids: Vec<String> = left
                .iter()
                .map(|d| format!("{} ({})", d.id, d.site))
                .collect();
            tracing::info!(
                "stopping: waiting up to {}s for {} deploy(s) in flight: {}",
                limit.as_secs(),
                left.len(),
                ids.join(", ")
            );
            waited = true;
        }
        if tokio::time::Instant::now() >= deadline {
            for d in left {
                tracing::warn!(
                    "stopping: abandoned deploy {} of {} ({:?}); the live release is unchanged and what it left is removed at the next start",
                    d.id,
                    d.site,
                    d.status
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The data dir lock: held by the running node, released by the kernel
/// when the process dies, however it dies.
fn take_lock(layout: &Layout) -> Result<File> {
    let path = layout.lock_file();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another node is running on {} (pid {})",
                layout.root().display(),
                pid.trim()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

/// When Apache serves as www-data, every directory above the data dir
/// must let others through, or every request fails with 403.
fn check_reachable(dir: &Path) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    for a in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(a) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 {
            bail!(
                "Apache serves apps as www-data, which cannot enter {}\nhint: chmod o+x {} or choose another --data-dir",
                a.display(),
                a.display()
            );
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Keeps every site's logs under their size cap, for the node's life.
async fn rotate_logs(layout: Layout) {
    use crate::engine::logs;
    let mut tick = tokio::time::interval(logs::ROTATE_EVERY);
    loop {
        tick.tick().await;
        let layout = layout.clone();
        let _ =
            tokio::task::spawn_blocking(move || logs::rotate_all(&layout, logs::MAX_BYTES)).await;
    }
}
