//! The deploy engine: every way in (`node deploy`, git push, rsync uploads,
//! webhooks) becomes one `DeployRequest`, and one pipeline makes it live:
//!
//!   wait for the site's turn -> stage -> read app.ini -> build (as the
//!   site's account) -> load into a spare slot of the site's cell -> check
//!   -> switch routes -> record -> retire and prune
//!
//! Anything that fails before the switch removes the new release and leaves
//! every host serving what it served before; that failure path is written
//! once, in `deploy`.
//!
//! Each site owns a cell of the slot pool for its life: a few mod_wsgi
//! daemons that run as the cell's own account, so no daemon, build or
//! upload of one site ever runs as root or as another site.

pub mod build;
pub mod checks;
pub mod git;
pub mod https;
pub mod lifecycle;
pub mod logs;
pub mod ondemand;
pub mod pool;
pub mod queue;
pub mod release;
pub mod report;
pub mod services;
pub mod settings;
pub mod state;
pub mod tree;
pub mod upstream;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::OwnedMutexGuard;
use tracing::Instrument;

use crate::accounts::{self, Account};
use crate::apache::{self, Apache, Slot};
use crate::app_ini::AppIni;
use crate::app_ini::RunnerSpec;
use crate::config::NodeConfig;
use crate::dirs::create_dir;
use crate::layout::Layout;
use crate::names::{Domain, ReleaseId, SiteName};
use crate::progress::Progress;
use build::{BuildFor, Builder, venv_key_of};
use checks::{Checks, Expect, static_serves};
use pool::SlotPool;
use queue::{Outcome, Registry};
use release::ReleaseFile;
use state::{Placed, ReleaseRecord, SiteState};
use tree::Seal;

/// The version string apps see in `TOPPCLOUD`.
pub const NODE_VERSION: &str = concat!("toppcloud/", env!("CARGO_PKG_VERSION"));

pub struct DeployRequest {
    pub site: SiteName,
    /// A directory holding the app; it is copied, never changed.
    pub source: PathBuf,
    /// Who or what asked, for the release record ("node deploy /path").
    pub origin: String,
    /// The commit the tree came from, when it came from git.
    pub sha: Option<String>,
    /// The deploy record of a caller that keeps its own (an upstream deploy,
    /// queued before its fetch); None: the engine opens one.
    pub record: Option<String>,
    /// Config vars to deploy with instead of the stored ones (a config
    /// change on its way; stored once it is live).
    pub config: Option<BTreeMap<String, String>>,
}

/// Why a deploy failed. What the user can fix (their tree, app.ini, their
/// requirements, their app) is told apart from the node's own faults, so
/// each door answers in its own way: a push shows everything, the HTTP API
/// keeps the node's internals in the node's log.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The tree: not a directory, a link that leaves the app.
    #[error("{0:#}")]
    Source(anyhow::Error),
    #[error("{0}")]
    AppIni(crate::app_ini::AppIniError),
    /// Installing the requirements (the installer's own lines).
    #[error("{0:#}")]
    Build(anyhow::Error),
    /// The release did not load or did not answer as it must.
    #[error("{0:#}")]
    Check(anyhow::Error),
    /// The node refuses to start the deploy now (its disk is too full).
    #[error("{0:#}")]
    Refused(anyhow::Error),
    /// A service the app asked for could not be given (its database...).
    #[error("{0:#}")]
    Service(anyhow::Error),
    /// A release task (`update_fetch = script:...`) failed.
    #[error("{0:#}")]
    Task(anyhow::Error),
    /// Something on the node: files, slots, Apache, the switch.
    #[error("{0:#}")]
    Node(anyhow::Error),
}

impl DeployError {
    pub fn is_node_fault(&self) -> bool {
        matches!(self, DeployError::Node(_))
    }

    /// What may be told to someone who only sees the API.
    pub fn public_message(&self) -> String {
        if self.is_node_fault() {
            "internal error on the node (the details are in its log)".to_string()
        } else {
            self.to_string()
        }
    }
}

/// A failed deploy and its record. Its words are whole in its Display
/// (the cause is not repeated as a source).
#[derive(Debug, thiserror::Error)]
#[error("deploy {deploy} failed: {error}")]
pub struct Failed {
    pub deploy: String,
    pub error: DeployError,
}

/// A site's turn to deploy: while it is held, no other deploy to the site
/// runs. A git push holds it from before receive-pack starts until the
/// branch has moved, so the branch and the live site always agree.
pub struct SiteTurn {
    site: SiteName,
    _guard: OwnedMutexGuard<()>,
}

#[derive(Debug, Clone)]
pub struct Deployed {
    pub release: ReleaseId,
    pub version: Option<u32>,
    pub url: String,
    /// The deploy's record (`GET /deploys/{id}`).
    pub deploy: String,
}

impl Deployed {
    /// The line a user reads last: where it is live, which release, and
    /// the deploy's id.
    pub fn summary(&self) -> String {
        let version = self
            .version
            .map(|v| format!(", version {v}"))
            .unwrap_or_default();
        format!(
            "live at {} (release {}{version}); deploy {}",
            self.url, self.release, self.deploy
        )
    }
}

pub struct Engine {
    cfg: NodeConfig,
    layout: Layout,
    apache: Apache,
    builder: Builder,
    state: Mutex<NodeState>,
    /// The account of each cell (None on a node that runs sites as itself).
    accounts: Mutex<Vec<Option<Account>>>,
    /// One deploy per site at a time; the locks die with the process.
    turns: Mutex<HashMap<SiteName, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises cell assignment and pool growth (another Apache to start).
    pool_growth: tokio::sync::Mutex<()>,
    /// Every deploy, whatever door it came through.
    deploys: Arc<Registry>,
    /// Config vars and secrets of the sites.
    settings: settings::Settings,
    /// The PostgreSQL cluster sites' databases live on, once one asked.
    postgres: tokio::sync::Mutex<Option<services::postgres::Postgres>>,
    /// Kept releases loaded on demand: what failed lately.
    on_demand: ondemand::Loads,
    /// Certificates: what mod_md was told and which restarts are owed.
    https: https::Watch,
}

struct NodeState {
    pool: SlotPool,
    sites: BTreeMap<SiteName, SiteState>,
    /// Every site's aliases (node.toml's, changed by `domains`).
    domains: crate::domains::Domains,
}

/// `cells.toml`: cell number -> site.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CellsFile {
    #[serde(default)]
    cells: BTreeMap<String, String>,
}

/// Where an rsync upload lands, and who may write there.
pub struct UploadArea {
    pub path: PathBuf,
    pub account: Option<Account>,
}

impl NodeState {
    /// Slots holding a live or previous release, or claimed by a deploy.
    /// Slots holding a live or previous release.
    fn live_slots(&self) -> HashSet<Slot> {
        self.sites
            .values()
            .flat_map(|s| [&s.live, &s.prev])
            .flatten()
            .map(|p| p.slot)
            .collect()
    }

    fn routes(&self) -> apache::routes::Routes {
        let mut r = apache::routes::Routes::new();
        for (site, st) in &self.sites {
            r.extend(st.routes(site));
        }
        // Aliases after every site's own names, which they never replace.
        for (site, st) in &self.sites {
            for (alias, route) in https::alias_routes(site, st, &self.domains) {
                r.entry(alias).or_insert(route);
            }
        }
        r
    }
}

/// A deploy's record, and whether the engine keeps it (opens, starts and
/// finishes it) or the caller does.
struct Record {
    id: String,
    own: bool,
}

impl Record {
    /// Progress whose lines also go into the record, when it is ours.
    fn progress(&self, progress: &Progress, deploys: &Arc<Registry>) -> Progress {
        if self.own {
            let (deploys, id) = (deploys.clone(), self.id.clone());
            progress.recorded(Arc::new(move |line| deploys.log(&id, line)))
        } else {
            progress.clone()
        }
    }
}

/// The error for the caller, the record having its own copy of the words.
fn clone_error(e: &DeployError) -> DeployError {
    let again = |e: &anyhow::Error| anyhow::anyhow!("{e:#}");
    match e {
        DeployError::Source(e) => DeployError::Source(again(e)),
        DeployError::AppIni(e) => DeployError::AppIni(e.clone()),
        DeployError::Build(e) => DeployError::Build(again(e)),
        DeployError::Check(e) => DeployError::Check(again(e)),
        DeployError::Service(e) => DeployError::Service(again(e)),
        DeployError::Refused(e) => DeployError::Refused(again(e)),
        DeployError::Task(e) => DeployError::Task(again(e)),
        DeployError::Node(e) => DeployError::Node(again(e)),
    }
}

/// What must be undone if a deploy fails before its switch.
struct Attempt {
    release_dir: PathBuf,
    slot: Option<Slot>,
}

impl Engine {
    /// Reads every site's state and repairs what a crash may have left: a
    /// release dir that never went live, a staging area.
    pub fn open(cfg: NodeConfig) -> Result<Engine> {
        let layout = Layout::new(cfg.data_dir.clone());
        let https = https::Watch::new(&cfg.apache, layout.clone());
        let mut sites = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(layout.sites_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(site) = SiteName::parse(&name, &cfg.domain) else {
                    tracing::warn!("ignoring {}: not a site name", e.path().display());
                    continue;
                };
                let path = layout.site_state(&site);
                if !path.exists() {
                    // A site whose first deploy never went live, or a
                    // destroyed one: all but the files its app wrote.
                    if let Err(e) = lifecycle::remove_site_dir(&e.path(), true) {
                        tracing::warn!("{e:#}");
                    }
                    continue;
                }
                let st = SiteState::load(&path)?;
                remove_unrecorded_releases(&layout, &site, &st);
                sites.insert(site, st);
            }
        }
        let _ = std::fs::remove_dir_all(layout.tmp_dir());
        let owners = load_cells(&layout, &cfg.domain)?;
        let cell_size = cfg.apache.cell_size;
        let highest = sites
            .values()
            .flat_map(|s| [&s.live, &s.prev])
            .flatten()
            .map(|p| p.slot.cell(cell_size))
            .chain(owners.keys().copied())
            .max();
        // The size the pool grew to while the node ran (growth is a
        // function of the size alone, so the same steps give the same pool
        // and a restarted node finds Apache's configuration unchanged).
        let mut cells = cfg.apache.cells;
        while highest.is_some_and(|h| h >= cells) {
            cells = pool::grown(cells, cfg.apache.cells);
        }
        let domains = crate::domains::Domains::load(&cfg.sites, layout.domains_file())?;
        Ok(Engine {
            settings: settings::Settings::new(&layout.secrets_dir()),
            apache: Apache::new(cfg.apache.clone(), layout.clone()),
            builder: Builder::new(cfg.build.clone(), layout.clone()),
            layout,
            state: Mutex::new(NodeState {
                pool: SlotPool::new(cells, cell_size, owners),
                sites,
                domains,
            }),
            https,
            accounts: Mutex::new(Vec::new()),
            turns: Mutex::new(HashMap::new()),
            pool_growth: tokio::sync::Mutex::new(()),
            deploys: Arc::new(Registry::new()),
            postgres: tokio::sync::Mutex::new(None),
            on_demand: ondemand::Loads::default(),
            cfg,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn apache(&self) -> &Apache {
        &self.apache
    }

    pub fn domain(&self) -> &Domain {
        &self.cfg.domain
    }

    /// Deploys commit `sha` of the bare repository `repo` (seeing objects
    /// still in a push's `quarantine`), through a temporary export of its
    /// tree; for a caller holding the site's turn.
    #[allow(clippy::too_many_arguments)]
    pub async fn deploy_commit(
        &self,
        turn: &SiteTurn,
        repo: &Path,
        quarantine: Option<&Path>,
        sha: &str,
        origin: String,
        record: Option<String>,
        progress: &Progress,
    ) -> Result<Deployed, Failed> {
        let tmp = self.layout.tmp_dir();
        let tree = tmp.join(format!("commit-{}", hex::encode(rand::random::<[u8; 8]>())));
        let exported = {
            let (repo, q, sha, tree) = (
                repo.to_path_buf(),
                quarantine.map(Path::to_path_buf),
                sha.to_string(),
                tree.clone(),
            );
            tokio::task::spawn_blocking(move || {
                crate::engine::git::export(&repo, q.as_deref(), &sha, &tree)
            })
            .await
            .context("exporting was interrupted")
            .and_then(|r| r)
        };
        let req = DeployRequest {
            site: turn.site.clone(),
            source: tree.clone(),
            origin,
            sha: Some(sha.to_string()),
            record,
            config: None,
        };
        let deployed = match exported {
            Ok(()) => {
                if tree.join(".gitmodules").exists() {
                    progress
                        .say("warning: submodules are not fetched; their directories are empty");
                }
                self.deploy_in_turn(turn, req, progress).await
            }
            Err(e) => {
                let record = self.record_for(&req);
                let error = DeployError::Node(e.context(format!("cannot export {sha}")));
                self.close_record(&record, &Err(error))
            }
        };
        let _ = std::fs::remove_dir_all(&tree);
        deployed
    }

    /// The app files of the site's live release, if it has one.
    pub fn live_app_dir(&self, site: &SiteName) -> Option<PathBuf> {
        let st = self.state();
        let live = st.sites.get(site)?.live.as_ref()?;
        Some(release::app_dir(
            &self.layout.release_dir(site, live.release),
        ))
    }

    /// A snapshot of what the node records about every site, for the API.
    pub fn sites(&self) -> BTreeMap<SiteName, SiteState> {
        self.state().sites.clone()
    }

    /// The branch a site deploys from, when its config names one.
    pub fn site_branch(&self, site: &SiteName) -> Option<&str> {
        self.cfg.site_branch(site)
    }

    /// The branch a site deploys from: the configured one, else the branch
    /// its repository's HEAD names (`main` for a repository the node makes,
    /// `master` for one whose first push was only that).
    pub fn deploy_branch(&self, site: &SiteName) -> String {
        if let Some(b) = self.site_branch(site) {
            return b.to_string();
        }
        let repo = self.layout.repo(site);
        if repo.join("HEAD").exists()
            && let Ok(b) = git::head_branch(&repo)
        {
            return b;
        }
        "main".to_string()
    }

    /// Starts serving: the base interpreter, Apache, and the routes as
    /// recorded. Slots that hold neither a live nor a previous release lose
    /// their pointers before Apache (re)starts, so they come up empty.
    pub async fn start(&self) -> Result<()> {
        self.builder.ensure_base().await?;
        // Site code reaches nothing here but through its own paths.
        create_dir(&self.layout.sites_dir(), 0o711, None)?;
        create_dir(&self.layout.tmp_dir(), 0o700, None)?;
        let (cells, slots, live_slots, routes) = {
            let st = self.state();
            (
                st.pool.cells(),
                st.pool.slots(),
                st.live_slots(),
                st.routes(),
            )
        };
        let accounts = self.ensure_accounts(cells).await?;
        self.prepare_logs(&accounts);
        let idle: Vec<Slot> = slots
            .into_iter()
            .filter(|s| !live_slots.contains(s))
            .collect();
        self.apache.forget(&idle)?;
        create_dir(&self.layout.apache_dir(), 0o711, None)?;
        // Sites that have a database find it running before they serve; a
        // cluster that will not start must not keep the other sites down.
        if let Err(e) = self.start_services().await {
            tracing::error!("{e:#}");
        }
        apache::routes::write(&self.layout.routes_map(), &routes)?;
        self.prepare_https()?;
        self.apache.start(accounts).await?;
        if let Err(e) = self.apply_front().await {
            tracing::error!("https: {e:#}");
        }
        let sites: Vec<SiteName> = self.state().sites.keys().cloned().collect();
        for site in sites {
            self.collect_venvs(&site);
        }
        Ok(())
    }

    /// The accounts of cells `0..cells`, created where missing (a root
    /// node), or none at all (a node that runs every site as itself).
    async fn ensure_accounts(&self, cells: usize) -> Result<Vec<Option<Account>>> {
        let have = self
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        let mut more = Vec::new();
        for cell in have..cells {
            more.push(if accounts::isolating() {
                let name = accounts::cell_account_name(&self.cfg.apache.account_prefix, cell);
                Some(accounts::ensure(&name).await?)
            } else {
                None
            });
        }
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.extend(more);
        Ok(accounts.clone())
    }

    /// The cell the site owns, assigning a free one (growing the pool when
    /// there is none) the first time; recorded before any of the site's
    /// code runs as its account.
    async fn site_cell(&self, site: &SiteName, progress: &Progress) -> Result<usize> {
        let _growth = self.pool_growth.lock().await;
        loop {
            let grow_to = {
                let mut st = self.state();
                if let Some(c) = st.pool.cell_of(site) {
                    return Ok(c);
                }
                if let Some(cell) = st.pool.assign(site) {
                    if let Err(e) = save_cells(&self.layout, st.pool.owners()) {
                        st.pool.unassign(cell);
                        return Err(e);
                    }
                    return Ok(cell);
                }
                pool::grown(st.pool.cells(), self.cfg.apache.cells)
            };
            progress.say(format!(
                "-----> every cell of the pool is taken: growing it to {grow_to} cells (one more Apache; none restarts)"
            ));
            let accounts = self.ensure_accounts(grow_to).await?;
            self.apache.resize(accounts).await?;
            self.state().pool.grow(grow_to);
        }
    }

    /// The account that runs the site's code (None: the node's own user),
    /// with the site's directories made for it.
    async fn site_account(&self, site: &SiteName, progress: &Progress) -> Result<Option<Account>> {
        let cell = self.site_cell(site, progress).await?;
        let account = self
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cell)
            .cloned()
            .flatten();
        create_dir(&self.layout.site_dir(site), 0o711, None)?;
        create_dir(&self.layout.releases_dir(site), 0o711, None)?;
        logs::prepare(
            &self.layout.site_logs(site),
            account.as_ref().map(|a| a.gid),
        )?;
        Ok(account)
    }

    /// A fresh upload area for the site, seeded with its live release (so
    /// rsync sends only what changed) and writable by the site's account
    /// only. The caller removes it when done.
    pub async fn upload_area(&self, site: &SiteName, progress: &Progress) -> Result<UploadArea> {
        let account = self.site_account(site, progress).await?;
        let uploads = self.layout.uploads_dir(site);
        create_dir(&uploads, 0o711, None)?;
        let path = uploads.join(hex::encode(rand::random::<[u8; 8]>()));
        let seed = self.live_app_dir(site);
        let owner = account.as_ref().map(|a| (a.uid, a.gid));
        let area = path.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            create_dir(&area, 0o700, None)?;
            if let Some(live) = seed {
                release::seed(&live, &area)?;
            }
            // Deepest first: until the area itself changes hands, nobody
            // but root can reach anything in it.
            if let Some((uid, gid)) = owner {
                for dir in dirs_deepest_first(&area) {
                    std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))
                        .with_context(|| format!("cannot chown {}", dir.display()))?;
                }
            }
            Ok(())
        })
        .await
        .context("preparing the upload area was interrupted")??;
        Ok(UploadArea { path, account })
    }

    pub async fn stop(&self) {
        if self.cfg.apache.mode == crate::config::ApacheMode::Private {
            self.stop_front().await;
        }
        if let Err(e) = self.apache.stop().await {
            tracing::warn!("stopping Apache: {e:#}");
        }
        self.stop_services().await;
    }

    /// Where users reach `host` on this node.
    pub fn url(&self, host: &str) -> String {
        if let Some(url) = self.https_url(host) {
            return url;
        }
        format!("http://{host}{}/", self.apache.port_suffix())
    }

    /// Waits for the site's turn: one deploy per site, in arrival order.
    pub async fn turn(&self, site: &SiteName, progress: &Progress) -> SiteTurn {
        SiteTurn {
            site: site.clone(),
            _guard: self.wait_turn(site, progress).await,
        }
    }

    async fn wait_turn(&self, site: &SiteName, progress: &Progress) -> OwnedMutexGuard<()> {
        let lock = self
            .turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(site.clone())
            .or_default()
            .clone();
        match lock.clone().try_lock_owned() {
            Ok(turn) => turn,
            Err(_) => {
                progress.say(format!(
                    "-----> waiting: another deploy to {site} is in progress"
                ));
                lock.lock_owned().await
            }
        }
    }

    /// The registry of every deploy (`GET /deploys/{id}`).
    pub fn deploys(&self) -> &Arc<Registry> {
        &self.deploys
    }

    /// Makes `req.source` live at the site's hosts, or explains why not and
    /// leaves everything as it was. The deploy is recorded (queued) before
    /// it waits for the site's turn.
    pub async fn deploy(
        &self,
        req: DeployRequest,
        progress: &Progress,
    ) -> Result<Deployed, Failed> {
        let record = self.record_for(&req);
        let progress = record.progress(progress, &self.deploys);
        let turn = self.turn(&req.site, &progress).await;
        self.run_recorded(&turn, req, record, &progress).await
    }

    /// `deploy`, for a caller that already holds the site's turn.
    pub async fn deploy_in_turn(
        &self,
        turn: &SiteTurn,
        req: DeployRequest,
        progress: &Progress,
    ) -> Result<Deployed, Failed> {
        let record = self.record_for(&req);
        let progress = record.progress(progress, &self.deploys);
        self.run_recorded(turn, req, record, &progress).await
    }

    /// The site's config vars (names and values; callers show values only
    /// when asked).
    pub fn config_vars(&self, site: &SiteName) -> Result<BTreeMap<String, String>> {
        self.settings.vars(site)
    }

    /// Changes config vars: a new release of the live code with the new
    /// environment, through the whole pipeline (checked before the switch,
    /// recorded with who changed which names, never with values). The new
    /// values are stored once they are live.
    pub async fn configure(
        &self,
        site: &SiteName,
        change: &settings::ConfigChange,
        by: &str,
        progress: &Progress,
    ) -> Result<Deployed, Failed> {
        let verb = match change {
            settings::ConfigChange::Set(_) => "set",
            settings::ConfigChange::Unset(_) => "unset",
        };
        let origin = format!("config {verb} {} by {by}", change.names().join(", "));
        let record = Record {
            id: self
                .deploys
                .open(site, origin.clone(), release::now_rfc3339()),
            own: true,
        };
        let progress = record.progress(progress, &self.deploys);
        let turn = self.turn(site, &progress).await;
        let live = {
            let st = self.state();
            st.sites.get(site).and_then(|s| {
                let live = s.live.as_ref()?;
                Some((
                    live.release,
                    s.record(live.release).and_then(|r| r.sha.clone()),
                ))
            })
        };
        let Some((live, sha)) = live else {
            let e = anyhow::anyhow!("{site} has no live release yet: deploy it first");
            return self.close_record(&record, &Err(DeployError::Source(e)));
        };
        let vars = match self.settings.vars(site) {
            Ok(v) => change.apply(&v),
            Err(e) => return self.close_record(&record, &Err(DeployError::Node(e))),
        };
        progress.say(format!(
            "-----> {origin}: a new release of release {live}'s code"
        ));
        let req = DeployRequest {
            site: site.clone(),
            source: release::app_dir(&self.layout.release_dir(site, live)),
            origin,
            sha,
            // The record is this function's own: run_recorded starts and
            // finishes it.
            record: None,
            config: Some(vars.clone()),
        };
        let result = self.run_recorded(&turn, req, record, &progress).await;
        if result.is_ok()
            && let Err(e) = self.settings.save_vars(site, &vars)
        {
            tracing::error!(site = %site, "config vars are live but could not be stored: {e:#}");
        }
        result
    }

    /// Makes the previous release live again at once (its daemon is warm)
    /// and the live one previous: checked first, nothing rebuilt, no
    /// daemon retired. A deploy of its own, recorded with who asked.
    pub async fn rollback(
        &self,
        site: &SiteName,
        by: &str,
        progress: &Progress,
    ) -> Result<Deployed, Failed> {
        let origin = format!("rollback by {by}");
        self.run_kept(site, None, origin, progress).await
    }

    /// Makes kept release `release` live without rebuilding it: the live
    /// one is told so, the previous one is a rollback, any other is loaded
    /// into a spare of the site's cell and checked before the switch.
    pub async fn activate(
        &self,
        site: &SiteName,
        release: ReleaseId,
        by: &str,
        progress: &Progress,
    ) -> Result<Deployed, Failed> {
        let origin = format!("activate {release} by {by}");
        self.run_kept(site, Some(release), origin, progress).await
    }

    /// A rollback (`release` None) or an activation, in the site's turn,
    /// with a record the engine keeps.
    async fn run_kept(
        &self,
        site: &SiteName,
        release: Option<ReleaseId>,
        origin: String,
        progress: &Progress,
    ) -> Result<Deployed, Failed> {
        let record = Record {
            id: self
                .deploys
                .open(site, origin.clone(), release::now_rfc3339()),
            own: true,
        };
        let progress = record.progress(progress, &self.deploys);
        let _turn = self.turn(site, &progress).await;
        self.deploys.started(&record.id, release::now_rfc3339());
        let started = Instant::now();
        let span = tracing::info_span!("deploy", site = %site, deploy = %record.id);
        let result = self
            .make_kept_live(site, release, &record.id, &origin, &progress)
            .instrument(span)
            .await;
        if let Ok(d) = &result {
            self.log_deploy(
                site,
                &origin,
                d.release,
                &record.id,
                "live",
                started.elapsed(),
            );
        }
        self.close_record(&record, &result)
    }

    async fn make_kept_live(
        &self,
        site: &SiteName,
        release: Option<ReleaseId>,
        deploy: &str,
        origin: &str,
        progress: &Progress,
    ) -> Result<Deployed, DeployError> {
        let refuse = |m: String| DeployError::Source(anyhow::anyhow!(m));
        let (live, prev, kept) = {
            let st = self.state();
            let s = st.sites.get(site);
            (
                s.and_then(|s| s.live.clone()),
                s.and_then(|s| s.prev.clone()),
                s.map(|s| {
                    let mut ids: Vec<ReleaseId> = s
                        .releases
                        .iter()
                        .map(|r| r.id)
                        .filter(|id| self.layout.release_dir(site, *id).is_dir())
                        .collect();
                    ids.sort_unstable();
                    ids
                })
                .unwrap_or_default(),
            )
        };
        let Some(live) = live else {
            return Err(refuse(format!(
                "{site} has no live release yet: deploy it first"
            )));
        };
        let target = match release {
            None => match &prev {
                Some(p) => p.release,
                None => {
                    return Err(refuse(format!(
                        "{site} has only one release: nothing to roll back to"
                    )));
                }
            },
            Some(id) => id,
        };
        if !kept.contains(&target) {
            let list: Vec<String> = kept.iter().map(|id| id.to_string()).collect();
            return Err(refuse(format!(
                "{site} has no release {target} (kept: {})",
                list.join(", ")
            )));
        }
        let url = self.url(site.as_str());
        let version = self
            .state()
            .sites
            .get(site)
            .and_then(|s| s.version_of(target));
        let deployed = Deployed {
            release: target,
            version,
            url,
            deploy: deploy.to_string(),
        };
        if target == live.release {
            progress.say(format!(
                "-----> release {target} is live already: nothing to do"
            ));
            return Ok(deployed);
        }
        if let Some(p) = prev.as_ref().filter(|p| p.release == target) {
            let checks = self.checks_of_kept(site, target);
            progress.say(format!(
                "-----> {origin}: release {target} (previous, warm) becomes live (deploy {deploy})"
            ));
            self.check(site, target, p.slot, &checks, progress)
                .await
                .map_err(DeployError::Check)?;
            self.swap(site, &live, p).map_err(DeployError::Node)?;
            progress.say(format!(
                "-----> switched {site} to release {target}; release {} is previous",
                live.release
            ));
            self.say_if_disabled(site, progress);
            return Ok(deployed);
        }

        // Loaded on demand (its N.host was asked for): warm already.
        let warm = self.take_on_demand(site, target);
        progress.say(match warm {
            Some(_) => format!(
                "-----> {origin}: release {target} (loaded on demand, warm) becomes live (deploy {deploy})"
            ),
            None => format!("-----> {origin}: loading kept release {target} (deploy {deploy})"),
        });
        let slot = self.ready_kept(site, target, warm, progress).await?;
        let retire = self
            .switch(site, target, slot, None)
            .map_err(DeployError::Node)?;
        progress.say(format!("-----> switched {site} to release {target}"));
        self.say_if_disabled(site, progress);
        self.settle(site, retire).await;
        Ok(deployed)
    }

    /// After a switch: the slot of what used to be previous is retired (it
    /// becomes the next spare), then releases beyond `keep_releases` go,
    /// with the slots that held them on demand.
    async fn settle(&self, site: &SiteName, old_prev: Option<Slot>) {
        self.retire_all(site, old_prev).await;
        let freed = self.prune(site);
        self.retire_all(site, freed).await;
    }

    /// Makes kept release `id` ready to serve in a slot of the site's
    /// cell, checked as a deploy is: `warm`, the slot that holds it already,
    /// or a spare it is loaded into. A slot that fails is retired.
    async fn ready_kept(
        &self,
        site: &SiteName,
        id: ReleaseId,
        warm: Option<Slot>,
        progress: &Progress,
    ) -> Result<Slot, DeployError> {
        let dir = self.layout.release_dir(site, id);
        let checks = self.checks_of_kept(site, id);
        let slot = match warm {
            Some(slot) => slot,
            None => {
                let account = self
                    .site_account(site, progress)
                    .await
                    .map_err(DeployError::Node)?;
                // Its temporary directory went when it stopped serving.
                let tmp_root = self.layout.site_dir(site).join("tmp");
                create_dir(&tmp_root, 0o711, None)
                    .and_then(|()| {
                        create_dir(
                            &tmp_root.join(id.to_string()),
                            0o700,
                            account.as_ref().map(|a| (a.uid, a.gid)),
                        )
                    })
                    .map_err(DeployError::Node)?;
                self.claim_spare(site).await.map_err(DeployError::Node)?
            }
        };
        let ready = async {
            if warm.is_none() {
                self.load_into(slot, &dir, progress).await?;
            }
            self.check(site, id, slot, &checks, progress)
                .await
                .map_err(DeployError::Check)
        }
        .await;
        if let Err(e) = ready {
            self.give_back(site, slot).await;
            return Err(e);
        }
        Ok(slot)
    }

    /// What a kept release is checked at, from its own app.ini.
    fn checks_of_kept(&self, site: &SiteName, id: ReleaseId) -> Checks {
        AppIni::load(&release::app_dir(&self.layout.release_dir(site, id)))
            .map(|(ini, _)| Checks::of(&ini))
            .unwrap_or_default()
    }

    /// Live <-> previous: the state first, then the route map; both
    /// daemons keep running.
    fn swap(&self, site: &SiteName, live: &Placed, prev: &Placed) -> Result<()> {
        let mut st = self.state();
        let s = st.sites.entry(site.clone()).or_default();
        if s.live.as_ref() != Some(live) || s.prev.as_ref() != Some(prev) {
            bail!("internal error: {site} changed during its rollback");
        }
        let before = s.clone();
        std::mem::swap(&mut s.live, &mut s.prev);
        if let Err(e) = s.save(&self.layout.site_state(site)) {
            *s = before;
            return Err(e.context("cannot record the rollback; nothing was switched"));
        }
        apache::routes::write(&self.layout.routes_map(), &st.routes())
    }

    /// The request's own record, or a new one the engine keeps.
    fn record_for(&self, req: &DeployRequest) -> Record {
        match &req.record {
            Some(id) => Record {
                id: id.clone(),
                own: false,
            },
            None => Record {
                id: self
                    .deploys
                    .open(&req.site, req.origin.clone(), release::now_rfc3339()),
                own: true,
            },
        }
    }

    async fn run_recorded(
        &self,
        turn: &SiteTurn,
        req: DeployRequest,
        record: Record,
        progress: &Progress,
    ) -> Result<Deployed, Failed> {
        if turn.site != req.site {
            let e = anyhow::anyhow!(
                "internal error: holding the turn of {} to deploy {}",
                turn.site,
                req.site
            );
            return self.close_record(&record, &Err(DeployError::Node(e)));
        }
        if record.own {
            self.deploys.started(&record.id, release::now_rfc3339());
        }
        let result = self.deploy_now(req, &record.id, progress).await;
        self.close_record(&record, &result)
    }

    /// Records how a deploy ended (when the engine keeps its record) and
    /// hands the result on with the record's id.
    fn close_record(
        &self,
        record: &Record,
        result: &Result<Deployed, DeployError>,
    ) -> Result<Deployed, Failed> {
        if let Err(e) = result
            && e.is_node_fault()
        {
            tracing::error!(deploy = %record.id, "deploy failed on the node: {e}");
        }
        if record.own {
            let outcome = match result {
                Ok(d) => Outcome::Live {
                    release: d.release.get(),
                    sha: None,
                    message: d.summary(),
                },
                Err(e) => Outcome::Failed(e.public_message()),
            };
            if let Some(d) = self.deploys.get(&record.id) {
                self.deploys
                    .finish(&d.site, &record.id, outcome, release::now_rfc3339());
            }
        }
        match result {
            Ok(d) => Ok(d.clone()),
            Err(e) => Err(Failed {
                deploy: record.id.clone(),
                error: clone_error(e),
            }),
        }
    }

    /// The pipeline, with its one failure path: anything that fails before
    /// the switch removes the new release and gives its slot back.
    async fn deploy_now(
        &self,
        req: DeployRequest,
        deploy: &str,
        progress: &Progress,
    ) -> Result<Deployed, DeployError> {
        let started = Instant::now();
        let id = self.next_release(&req.site);
        let mut attempt = Attempt {
            release_dir: self.layout.release_dir(&req.site, id),
            slot: None,
        };
        let span = tracing::info_span!("deploy", site = %req.site, release = %id, deploy);
        let result = self
            .pipeline(&req, id, deploy, &mut attempt, progress)
            .instrument(span)
            .await;
        let outcome = match &result {
            Ok(_) => "live".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        if result.is_err() {
            if let Some(slot) = attempt.slot {
                self.give_back(&req.site, slot).await;
            }
            let _ = std::fs::remove_dir_all(&attempt.release_dir);
        }
        self.log_deploy(
            &req.site,
            &req.origin,
            id,
            deploy,
            &outcome,
            started.elapsed(),
        );
        result
    }

    async fn pipeline(
        &self,
        req: &DeployRequest,
        id: ReleaseId,
        deploy: &str,
        attempt: &mut Attempt,
        progress: &Progress,
    ) -> Result<Deployed, DeployError> {
        let site = &req.site;
        let dir = attempt.release_dir.clone();
        progress.say(format!(
            "-----> deploying {site}, release {id} (deploy {deploy})"
        ));

        self.check_free_space().map_err(DeployError::Refused)?;
        self.check_not_an_alias(site)
            .map_err(DeployError::Refused)?;

        // Stage: a fresh copy only root can change, links kept as links
        // and judged by where they really lead.
        if !req.source.is_dir() {
            return Err(DeployError::Source(anyhow::anyhow!(
                "{} is not a directory",
                req.source.display()
            )));
        }
        let account = self
            .site_account(site, progress)
            .await
            .map_err(DeployError::Node)?;
        let gid = account.as_ref().map(|a| a.gid);
        let app_dir = release::app_dir(&dir);
        let files = self.stage(site, &req.source, &dir).await?;
        progress.say(format!("-----> staged {files} files"));

        // app.ini
        let (ini, warnings) = AppIni::load(&app_dir).map_err(DeployError::AppIni)?;
        for w in &warnings {
            progress.say(format!("warning: {w}"));
        }
        let services = ini.services().map_err(DeployError::AppIni)?;

        // What the app gets besides its code: its environment, its services.
        let env = self
            .environment(
                site,
                id,
                &app_dir,
                &services,
                account.as_ref(),
                req,
                progress,
            )
            .await?;

        // Build: the app is sealed first (the build reads it as the site's
        // account and must not change it), then its venv is built as that
        // account and sealed in turn.
        self.builder.compile_app(&app_dir, progress).await;
        tree::seal(&app_dir, gid, Seal::App).map_err(DeployError::Node)?;
        seal_release_dir(&dir, gid).map_err(DeployError::Node)?;
        let who = BuildFor {
            site,
            account: account.as_ref(),
        };
        let lease = self
            .builder
            .build(&app_dir, &dir, &who, progress)
            .await
            .map_err(DeployError::Build)?;
        let created = release::now_rfc3339();
        ReleaseFile {
            id: id.get(),
            site: site.clone(),
            app_name: ini.app_name.clone(),
            version: ini.version,
            created: created.clone(),
            source: req.origin.clone(),
            sha: req.sha.clone(),
            venv: lease.key().to_string(),
            runner: RunnerSpec::from(&ini.runner),
            env: env.clone(),
        }
        .write(&dir)
        .and_then(|()| seal_release_dir(&dir, gid))
        .map_err(DeployError::Node)?;

        // Release tasks (migrations), before any request reaches the release.
        for task in &ini.release_tasks {
            self.run_task(task, &dir, &env, site, account.as_ref(), progress)
                .await
                .map_err(DeployError::Task)?;
        }

        // Load into a spare slot, warm, before any public host points at it.
        let slot = self.claim_spare(site).await.map_err(DeployError::Node)?;
        attempt.slot = Some(slot);
        self.load_into(slot, &dir, progress).await?;

        // Check
        self.check(site, id, slot, &Checks::of(&ini), progress)
            .await
            .map_err(DeployError::Check)?;

        // Switch (state first, then the map: start() rebuilds the map from
        // the state, so a crash in between heals).
        let record = ReleaseRecord {
            id,
            version: ini.version,
            created,
            source: req.origin.clone(),
            sha: req.sha.clone(),
        };
        // From here on the slot is the switch's to keep or give back.
        attempt.slot = None;
        let retire = self
            .switch(site, id, slot, Some(record))
            .map_err(DeployError::Node)?;
        let url = self.url(site.as_str());
        progress.say(format!("-----> switched {site} to release {id}"));
        self.say_if_disabled(site, progress);

        self.settle(site, retire).await;
        drop(lease);
        self.collect_venvs(site);
        Ok(Deployed {
            release: id,
            version: ini.version,
            url,
            deploy: deploy.to_string(),
        })
    }

    /// The release's environment: the node's names, the site's secret, its
    /// services (made on first use, kept after), its temporary directory
    /// and its config vars (`overrides`, when a config change is being
    /// deployed, replaces the stored ones). A `service.files` link is made
    /// in the app here, before the app is sealed.
    #[allow(clippy::too_many_arguments)]
    async fn environment(
        &self,
        site: &SiteName,
        id: ReleaseId,
        app_dir: &Path,
        services: &crate::app_ini::Services,
        account: Option<&Account>,
        req: &DeployRequest,
        progress: &Progress,
    ) -> Result<BTreeMap<String, String>, DeployError> {
        let node = DeployError::Node;
        let owner = account.map(|a| (a.uid, a.gid));
        let mut env = BTreeMap::new();
        env.insert("SITE".to_string(), site.to_string());
        env.insert("CANONICAL_HOST".to_string(), site.to_string());
        env.insert("TOPPCLOUD".to_string(), NODE_VERSION.to_string());
        let secret = self.settings.secret(site).map_err(node)?;
        env.insert("CONFIG_SECRET".to_string(), secret);

        // A temporary directory of the release's own: every deploy starts
        // with an empty one.
        let tmp_root = self.layout.site_dir(site).join("tmp");
        create_dir(&tmp_root, 0o711, None).map_err(node)?;
        let tmp = tmp_root.join(id.to_string());
        let _ = std::fs::remove_dir_all(&tmp);
        create_dir(&tmp, 0o700, owner).map_err(node)?;
        env.insert("TEMP".to_string(), tmp.display().to_string());
        env.insert("TMPDIR".to_string(), tmp.display().to_string());

        if let Some(link) = &services.files {
            let files = self.layout.site_dir(site).join("files");
            create_dir(&files, 0o700, owner).map_err(node)?;
            env.insert("CONFIG_FILES".to_string(), files.display().to_string());
            if let Some(path) = link {
                let at = app_dir.join(path);
                if std::fs::symlink_metadata(&at).is_ok() {
                    return Err(DeployError::Source(anyhow::anyhow!(
                        "service.files = {path}: the app has its own {path}; remove it from the app (or leave it out of the upload), or choose another path"
                    )));
                }
                if let Some(parent) = at.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))
                        .map_err(node)?;
                }
                std::os::unix::fs::symlink(&files, &at)
                    .with_context(|| format!("cannot link {path} to the files directory"))
                    .map_err(node)?;
                progress.say(format!("-----> {path} is the site's files directory"));
            }
        }

        if let Some(postgis) = services.postgres {
            let what = if postgis { "PostGIS" } else { "PostgreSQL" };
            progress.say(format!("-----> {what} database of {site}"));
            let creds = {
                let mut pg = self.postgres.lock().await;
                if pg.is_none() {
                    let cluster = services::postgres::Cluster::from_config(
                        &self.cfg.services.postgresql,
                        &self.layout,
                    )
                    .map_err(DeployError::Service)?;
                    *pg = Some(
                        services::postgres::Postgres::open(&cluster)
                            .await
                            .map_err(DeployError::Service)?,
                    );
                }
                let Some(pg) = pg.as_ref() else {
                    return Err(node(anyhow::anyhow!("the PostgreSQL cluster is gone")));
                };
                pg.ensure_site(site, postgis, &self.layout.secrets_dir())
                    .await
                    .map_err(DeployError::Service)?
            };
            env.extend(creds.env());
        }

        let vars = match &req.config {
            Some(vars) => vars.clone(),
            None => self.settings.vars(site).map_err(node)?,
        };
        env.extend(vars);
        Ok(env)
    }

    /// Runs a release task as the site's account, from the app's directory,
    /// in the release's environment with its venv first on PATH.
    async fn run_task(
        &self,
        task: &crate::app_ini::ReleaseTask,
        release_dir: &Path,
        env: &BTreeMap<String, String>,
        site: &SiteName,
        account: Option<&Account>,
        progress: &Progress,
    ) -> Result<()> {
        let shown = task.shown();
        progress.say(format!("-----> running {shown}"));
        let app_dir = release::app_dir(release_dir);
        let venv = std::fs::canonicalize(release_dir.join("venv"))
            .context("the release has no environment")?;
        let Some((file, args)) = task.argv.split_first() else {
            bail!("app.ini:{}: {shown} names no file", task.line);
        };
        let mut cmd = if file.ends_with(".py") {
            let mut c = tokio::process::Command::new(venv.join("bin/python"));
            c.arg(file);
            c
        } else {
            tokio::process::Command::new(app_dir.join(file))
        };
        cmd.args(args);
        crate::process::clean_env(&mut cmd)
            .envs(env)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    venv.join("bin").display(),
                    crate::process::CHILD_PATH
                ),
            )
            .env("VIRTUAL_ENV", &venv)
            .env("HOME", self.layout.site_home(site))
            // Python writes a pipe's stdout in blocks, its stderr at once:
            // unbuffered, what a task printed comes in the order it printed
            // it (its progress before the traceback that ended it), as in a
            // terminal.
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(&app_dir);
        if let Some(a) = account {
            a.apply(&mut cmd);
        }
        // The error names the task and how it ended ("script:manage.py
        // migrate failed (exit status: 1)"), with its last lines.
        crate::process::run_streamed(cmd, &shown, "       ", progress)
            .await
            .map_err(|e| anyhow::anyhow!("app.ini:{}: {e}", task.line))?;
        Ok(())
    }

    /// Starts a private PostgreSQL cluster at node start when sites already
    /// have databases on it (else it starts at the first deploy that asks).
    async fn start_services(&self) -> Result<()> {
        let cluster =
            services::postgres::Cluster::from_config(&self.cfg.services.postgresql, &self.layout)?;
        if matches!(cluster, services::postgres::Cluster::Private { .. })
            && self.layout.postgres_dir().exists()
        {
            let pg = services::postgres::Postgres::open(&cluster)
                .await
                .context("cannot start the sites' PostgreSQL cluster")?;
            *self.postgres.lock().await = Some(pg);
        }
        Ok(())
    }

    /// Stops what the node started for its sites (a private PostgreSQL).
    async fn stop_services(&self) {
        if let Some(pg) = self.postgres.lock().await.take()
            && let Err(e) = pg.stop().await
        {
            tracing::warn!("stopping PostgreSQL: {e:#}");
        }
    }

    /// Refuses a deploy when the data dir's filesystem is nearly full
    /// (`[build] min_free_mb`).
    fn check_free_space(&self) -> Result<()> {
        let want = self.cfg.build.min_free_mb;
        if want == 0 {
            return Ok(());
        }
        let path = std::ffi::CString::new(self.layout.root().as_os_str().as_encoded_bytes())
            .context("the data dir's path has a NUL byte")?;
        // SAFETY: statvfs is plain data filled by statvfs(3).
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!(
                    "cannot read the free space of {}",
                    self.layout.root().display()
                )
            });
        }
        let free_mb = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) / (1024 * 1024);
        if free_mb < want {
            bail!(
                "the node's disk has {free_mb} MiB free in {}, below [build] min_free_mb = {want}: nothing was deployed\nhint: free space on the node (old releases go with keep_releases), or lower min_free_mb",
                self.layout.root().display()
            );
        }
        Ok(())
    }

    /// Copies the tree into a new release dir only root can change, and
    /// refuses it if a link leads out of the app.
    async fn stage(
        &self,
        site: &SiteName,
        source: &Path,
        dir: &Path,
    ) -> Result<usize, DeployError> {
        let node = DeployError::Node;
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove {}", dir.display()))
                .map_err(node)?;
        }
        create_dir(dir, 0o700, None).map_err(node)?;
        let src = source.to_path_buf();
        let dest = release::app_dir(dir);
        let (files, outward) = tokio::task::spawn_blocking(move || {
            release::stage(&src, &dest).map(|n| (n, tree::outward_links(&dest)))
        })
        .await
        .context("staging was interrupted")
        .map_err(node)?
        // An upload area its site still changes makes the copy fail: the
        // site's doing, not the node's.
        .map_err(DeployError::Source)?;
        // A link to the site's own files directory is the node's (a release
        // redeployed with new config, an upload seeded from the live one):
        // it is made again from app.ini, never copied.
        let files_dir = self.layout.site_dir(site).join("files");
        let mut outward = outward;
        outward.retain(|(link, target)| {
            if *target == files_dir {
                let _ = std::fs::remove_file(release::app_dir(dir).join(link));
                false
            } else {
                true
            }
        });
        if let Some((link, target)) = outward.first() {
            let more = match outward.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(DeployError::Source(anyhow::anyhow!(
                "{link}: symlink points outside the app (-> {}){more}; links must stay inside the app",
                target.display()
            )));
        }
        Ok(files)
    }

    fn next_release(&self, site: &SiteName) -> ReleaseId {
        let mut st = self.state();
        let s = st.sites.entry(site.clone()).or_default();
        let on_disk = s.releases.iter().map(|r| r.id.get()).max().unwrap_or(0);
        let id = s.next_release.max(on_disk + 1).max(1);
        s.next_release = id + 1;
        ReleaseId::new(id)
    }

    /// An empty slot of the site's own cell: not live or previous, not
    /// loaded on demand, not claimed. Of the cell's spares, the one retired
    /// longest ago: a deploy right after another need not wait for the
    /// daemon that deploy retired (Apache re-forks it only on its 1 s
    /// maintenance tick). With no spare left, the slot loaded on demand
    /// longest ago is evicted (its host is loaded again when asked for).
    async fn claim_spare(&self, site: &SiteName) -> Result<Slot> {
        let evicted = {
            let mut st = self.state();
            let in_use = st.held_slots();
            if let Some(slot) = st.pool.claim(site, &in_use, |s| self.apache.retired_at(s)) {
                return Ok(slot);
            }
            self.evict_on_demand(&mut st, site)
        };
        let slot = evicted
            .with_context(|| format!("internal error: the cell of {site} has no spare daemon"))?;
        if let Err(e) = self.apache.retire(slot).await {
            self.state().pool.release(slot);
            return Err(e.context(format!("cannot retire slot {slot}")));
        }
        Ok(slot)
    }

    /// Points a claimed slot at a release once its daemon is known empty;
    /// the daemon becomes the release on the first request.
    async fn load_into(
        &self,
        slot: Slot,
        dir: &Path,
        progress: &Progress,
    ) -> Result<(), DeployError> {
        self.apache
            .wait_empty(
                slot,
                self.apache.request_timeout() + Duration::from_secs(10),
            )
            .await
            .and_then(|()| self.apache.set_pointer(slot, dir))
            .map_err(DeployError::Node)?;
        progress.say("-----> starting the release");
        Ok(())
    }

    /// Asks the new release, through Apache and with the site's real Host,
    /// for its health check path and each `update_fetch` path, and insists
    /// the answer comes from that release.
    async fn check(
        &self,
        site: &SiteName,
        id: ReleaseId,
        slot: Slot,
        checks: &Checks,
        progress: &Progress,
    ) -> Result<()> {
        let want = format!("{site} {id}");
        let limit = self.apache.request_timeout().max(Duration::from_secs(30));
        let deadline = Instant::now() + limit;
        let app_dir = release::app_dir(&self.layout.release_dir(site, id));
        // Users get static/ from Apache before the app: when the health
        // path is one of those files, the app behind it need only load.
        let health_is_static = static_serves(&app_dir, &checks.health);
        let mut paths = vec![(checks.health.as_str(), Expect::Healthy)];
        if health_is_static {
            paths[0].1 = Expect::Loaded;
        }
        paths.extend(checks.fetch.iter().map(|p| (p.as_str(), Expect::Fetched)));
        for (path, expect) in paths {
            loop {
                // The site's real Host: an app that checks it (Django's
                // ALLOWED_HOSTS) answers the node as it will answer users.
                let answer = self.apache.get_slot(slot, site.as_str(), path, limit).await;
                match answer {
                    Ok(r) if r.header("x-slot-state") == Some("failed") => {
                        bail!("the app failed to load:\n{}", indent(&r.body));
                    }
                    Ok(r) if r.header("x-toppcloud-release") == Some(want.as_str()) => {
                        if let Some(why) = expect.refusal(r.status, path, site) {
                            bail!("{why}:\n{}", indent(&r.body));
                        }
                        let how = if health_is_static && expect == Expect::Loaded {
                            " (served from static/)"
                        } else {
                            ""
                        };
                        progress.say(format!("-----> checked GET {path}: {}{how}", r.status));
                        break;
                    }
                    // An answer from another release or an error: the slot
                    // is still coming up.
                    Ok(_) | Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(r) => bail!(
                        "release {id} did not answer within {limit:?} (last answer: {} from {})",
                        r.status,
                        r.header("x-toppcloud-release").unwrap_or("no release")
                    ),
                    Err(e) => {
                        return Err(e.context(format!("release {id} did not answer")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Routes `host` to the new release and `prev.host` to the one that was
    /// live. Returns the slot that held the old previous release.
    /// `record` is a new release's (None: a kept release made live again).
    fn switch(
        &self,
        site: &SiteName,
        release: ReleaseId,
        slot: Slot,
        record: Option<ReleaseRecord>,
    ) -> Result<Option<Slot>> {
        let mut st = self.state();
        let s = st.sites.entry(site.clone()).or_default();
        let before = s.clone();
        let retire = s.prev.take().map(|p| p.slot);
        s.prev = s.live.take();
        s.live = Some(Placed { release, slot });
        s.releases.extend(record);
        let saved = s.save(&self.layout.site_state(site));
        if saved.is_err() {
            *s = before;
        }
        // Live now, or back in the pool (where the next deploy's wait_empty
        // recycles whatever it loaded).
        st.pool.release(slot);
        saved.map_err(|e| e.context("cannot record the switch; nothing was switched"))?;
        apache::routes::write(&self.layout.routes_map(), &st.routes())?;
        Ok(retire)
    }

    /// Deletes releases beyond `keep_releases` that are neither live nor
    /// previous, and frees the slots of releases loaded on demand that no
    /// host routes to any more (pruned, or a newer release of their
    /// version): their hosts go from the map before their files go, and
    /// the caller retires the slots returned.
    fn prune(&self, site: &SiteName) -> Vec<Slot> {
        let keep = self.cfg.build.keep_releases.max(1);
        let mut st = self.state();
        let Some(s) = st.sites.get_mut(site) else {
            return Vec::new();
        };
        let routed: HashSet<ReleaseId> = [&s.live, &s.prev]
            .into_iter()
            .flatten()
            .map(|p| p.release)
            .collect();
        // Temporary directories live as long as their release serves.
        let serving: HashSet<ReleaseId> = routed
            .iter()
            .copied()
            .chain(s.on_demand.iter().map(|o| o.placed.release))
            .collect();
        if let Ok(entries) = std::fs::read_dir(self.layout.site_dir(site).join("tmp")) {
            for e in entries.flatten() {
                let serves = ReleaseId::parse(&e.file_name().to_string_lossy())
                    .is_ok_and(|id| serving.contains(&id));
                if !serves {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let mut ids: Vec<ReleaseId> = s.releases.iter().map(|r| r.id).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let doomed: Vec<ReleaseId> = ids
            .into_iter()
            .skip(keep)
            .filter(|id| !routed.contains(id))
            .collect();
        if !doomed.is_empty() {
            let before = s.releases.clone();
            s.releases.retain(|r| !doomed.contains(&r.id));
            if let Err(e) = s.save(&self.layout.site_state(site)) {
                tracing::warn!(site = %site, "cannot record pruning: {e:#}");
                s.releases = before;
                return Vec::new();
            }
        }
        let freed = s.drop_unrouted_on_demand(site);
        if doomed.is_empty() && freed.is_empty() {
            return freed;
        }
        // Pruned versions' hosts go, freed ones route to `load` again.
        if let Err(e) = apache::routes::write(&self.layout.routes_map(), &st.routes()) {
            tracing::warn!(site = %site, "cannot write the route map after pruning: {e:#}");
        }
        for slot in &freed {
            if let Err(e) = self.apache.clear_pointer(*slot) {
                tracing::warn!(site = %site, "{e:#}");
            }
        }
        for id in doomed {
            tracing::info!(site = %site, release = %id, "pruning release");
            let _ = std::fs::remove_dir_all(self.layout.release_dir(site, id));
        }
        freed
    }

    fn collect_venvs(&self, site: &SiteName) {
        let mut referenced = HashSet::new();
        if let Ok(entries) = std::fs::read_dir(self.layout.releases_dir(site)) {
            for e in entries.flatten() {
                if let Some(k) = venv_key_of(&e.path()) {
                    referenced.insert(k);
                }
            }
        }
        self.builder.collect(site, &referenced);
    }

    fn log_deploy(
        &self,
        site: &SiteName,
        origin: &str,
        id: ReleaseId,
        deploy: &str,
        outcome: &str,
        took: Duration,
    ) {
        let line = serde_json::json!({
            "time": release::now_rfc3339(),
            "deploy": deploy,
            "release": id.get(),
            "origin": origin,
            "outcome": outcome,
            "seconds": took.as_secs_f64(),
        });
        let path = self.layout.deploy_log(site);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            writeln!(f, "{line}")
        };
        if let Err(e) = write() {
            tracing::warn!("cannot append to {}: {e}", path.display());
        }
    }
}

/// Removes release dirs a site's record does not know: leftovers of a
/// deploy that was interrupted before its switch.
fn remove_unrecorded_releases(layout: &Layout, site: &SiteName, st: &SiteState) {
    let Ok(entries) = std::fs::read_dir(layout.releases_dir(site)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let known = ReleaseId::parse(&name).is_ok_and(|id| st.record(id).is_some());
        if !known {
            tracing::info!(site = %site, "removing unfinished release {name}");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The release dir and its `release.toml`: readable by the site's group
/// (the shim reads the file), passable by Apache's workers on their way to
/// `static/`.
fn seal_release_dir(dir: &Path, gid: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (dir.join("release.toml"), 0o640),
        (dir.to_path_buf(), 0o751),
    ] {
        if !path.exists() {
            continue;
        }
        if let Some(g) = gid {
            std::os::unix::fs::lchown(&path, Some(0), Some(g))
                .with_context(|| format!("cannot chown {}", path.display()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
    }
    Ok(())
}

/// Directories under `root` (root included), children before parents.
fn dirs_deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let dir = out[i].clone();
        i += 1;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
    }
    out.reverse();
    out
}

pub(crate) fn load_cells(layout: &Layout, domain: &Domain) -> Result<BTreeMap<usize, SiteName>> {
    let path = layout.cells_file();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let file: CellsFile =
        toml::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
    let mut owners = BTreeMap::new();
    for (cell, site) in file.cells {
        let n: usize = cell
            .parse()
            .with_context(|| format!("{}: {cell:?} is not a cell number", path.display()))?;
        let site = SiteName::parse(&site, domain)
            .with_context(|| format!("{}: cell {n}", path.display()))?;
        owners.insert(n, site);
    }
    Ok(owners)
}

fn save_cells(layout: &Layout, owners: &BTreeMap<usize, SiteName>) -> Result<()> {
    let file = CellsFile {
        cells: owners
            .iter()
            .map(|(c, s)| (c.to_string(), s.to_string()))
            .collect(),
    };
    let text = toml::to_string(&file).context("cannot serialise the cell owners")?;
    crate::atomic::write(&layout.cells_file(), text.as_bytes())
}

fn indent(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(30);
    lines[start..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
