//! Every path under the node's data directory, in one place, so no other
//! module joins a path from outside onto the data dir by hand.

use std::path::{Path, PathBuf};

use crate::names::{ReleaseId, SiteName};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Layout {
        Layout { root }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("node.lock")
    }
    /// Written once the node is ready: its pid and bound addresses.
    pub fn ready_file(&self) -> PathBuf {
        self.root.join("node.ready")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }
    pub fn sites_dir(&self) -> PathBuf {
        self.root.join("sites")
    }
    pub fn site_dir(&self, site: &SiteName) -> PathBuf {
        self.sites_dir().join(site.as_str())
    }
    pub fn site_state(&self, site: &SiteName) -> PathBuf {
        self.site_dir(site).join("site.toml")
    }
    pub fn deploy_log(&self, site: &SiteName) -> PathBuf {
        self.site_dir(site).join("deploys.jsonl")
    }
    pub fn releases_dir(&self, site: &SiteName) -> PathBuf {
        self.site_dir(site).join("releases")
    }
    pub fn release_dir(&self, site: &SiteName, id: ReleaseId) -> PathBuf {
        self.releases_dir(site).join(id.to_string())
    }
    pub fn repo(&self, site: &SiteName) -> PathBuf {
        self.root
            .join("repos")
            .join(format!("{}.git", site.as_str()))
    }
    pub fn host_key(&self) -> PathBuf {
        self.root.join("ssh_host_ed25519_key")
    }
    pub fn slots_dir(&self) -> PathBuf {
        self.root.join("slots")
    }
    /// The symlink a pool slot's shim follows to find its release.
    pub fn slot_pointer(&self, slot: &str) -> PathBuf {
        self.slots_dir().join(slot).join("release")
    }
    /// Which site owns which cell of the slot pool, for the node's life.
    pub fn cells_file(&self) -> PathBuf {
        self.root.join("cells.toml")
    }
    /// The site's virtualenvs, shared by its releases, never by other sites.
    pub fn site_venvs(&self, site: &SiteName) -> PathBuf {
        self.site_dir(site).join("venvs")
    }
    /// HOME of the site's builds: its account's own, with its uv cache and
    /// temporary files.
    pub fn site_home(&self, site: &SiteName) -> PathBuf {
        self.site_dir(site).join("home")
    }
    /// The site's own logs: `error.log`, `access.log` and their previous
    /// generations (`.1`).
    pub fn site_logs(&self, site: &SiteName) -> PathBuf {
        self.site_dir(site).join("logs")
    }
    /// Request lines of no site: hosts the node does not serve, disabled
    /// sites' maintenance pages.
    pub fn node_access_log(&self) -> PathBuf {
        self.apache_dir().join("logs").join("access.log")
    }
    /// Where the site's rsync uploads land before they are staged.
    pub fn uploads_dir(&self, site: &SiteName) -> PathBuf {
        self.site_dir(site).join("uploads")
    }
    /// The empty interpreter every slot starts as (mod_wsgi's python-home).
    pub fn base_venv(&self) -> PathBuf {
        self.root.join("base-venv")
    }
    /// uv's cache on a node that runs every site as itself.
    pub fn uv_cache(&self) -> PathBuf {
        self.root.join("cache").join("uv")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn apache_dir(&self) -> PathBuf {
        self.root.join("apache")
    }
    /// Shim, error pages: files Apache reads, copied from the binary.
    pub fn share_dir(&self) -> PathBuf {
        self.apache_dir().join("share")
    }
    /// The inode numbers of the access-log pipes Apache gave its children,
    /// written by the log pipe, read by the shim, which closes them before
    /// any app code runs.
    pub fn access_pipes(&self) -> PathBuf {
        self.share_dir().join("access-pipes")
    }
    /// The names `toppcloud domains` added to and removed from sites.
    pub fn domains_file(&self) -> PathBuf {
        self.root.join("domains.toml")
    }
    /// Names with a certificate: plain HTTP answers them with a 301 to HTTPS.
    pub fn https_map(&self) -> PathBuf {
        self.apache_dir().join("https.map")
    }
    /// mod_md's store: accounts, keys, certificates.
    pub fn md_store(&self) -> PathBuf {
        self.apache_dir().join("md")
    }
    /// The node's check and load secrets, for Apache's workers only.
    pub fn apache_secrets(&self) -> PathBuf {
        self.apache_dir().join("secrets.map")
    }
    /// Which of the node's other Apaches runs each slot of theirs.
    pub fn shards_map(&self) -> PathBuf {
        self.apache_dir().join("shards.map")
    }
    pub fn routes_map(&self) -> PathBuf {
        self.apache_dir().join("routes.map")
    }
    /// The node's private PostgreSQL cluster: its data, socket and log.
    pub fn postgres_dir(&self) -> PathBuf {
        self.root.join("postgresql")
    }
    /// Credentials the node made for its sites' services (root's, 0700),
    /// apart from the sites' own directories so that nothing which tidies
    /// those ever takes a password the services still know.
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
}
