//! Each site's own logs, in `sites/<site>/logs/`: `error.log` (what the
//! site's daemons write to stderr and stdout, and the tracebacks the shim
//! prints for them) and `access.log` (Apache's request lines for the site's
//! hosts, split off by the node's log pipe).
//!
//! Who may touch them is the point: the directory is root's with the site's
//! group (0750), so the site's account can read its logs but can neither
//! replace a file with a link nor reach another site's; `error.log` is
//! writable by the site's group (the shim appends to it), `access.log` only
//! by root. Every open here refuses a symlink, as the node reads them as
//! root for `toppcloud logs`.
//!
//! Rotation is copy-then-truncate to one previous generation (`.1`): the
//! writers hold their files open with `O_APPEND`, so a truncated file is
//! simply written from its new end, and no writer needs to be told.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::apache::Slot;
use crate::layout::Layout;
use crate::names::SiteName;

/// The size a current log file may reach before it is rotated.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// How often the node looks at every log's size.
pub const ROTATE_EVERY: Duration = Duration::from_secs(15);

/// The longest access line the pipe keeps (the rest is cut).
const MAX_LINE: usize = 16 * 1024;

/// Which of a site's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Error,
    Access,
}

impl Kind {
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::Error => "error.log",
            Kind::Access => "access.log",
        }
    }

    /// The file's mode: with a site group (`shared`), the site reads both
    /// and writes its error log (its daemons append to it).
    fn mode(self, shared: bool) -> u32 {
        match (self, shared) {
            (_, false) => 0o600,
            (Kind::Error, true) => 0o660,
            (Kind::Access, true) => 0o640,
        }
    }
}

/// The previous generation of a log file: `error.log.1`.
pub fn previous(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    path.with_file_name(name)
}

/// Opens an existing log file without following a symlink (and without
/// blocking, should anything but a regular file be there: the callers
/// check what they opened).
fn open_nofollow(path: &Path, write: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Makes the site's log directory and files with their owners and modes
/// (again, each deploy: a mode changed by hand is put back). `group` is the
/// site account's group; None on a node that runs every site as itself.
pub fn prepare(dir: &Path, group: Option<u32>) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() };
    let owner = group.map(|g| (root, g));
    let dir_mode = if group.is_some() { 0o750 } else { 0o700 };
    crate::dirs::create_dir(dir, dir_mode, owner)?;
    for kind in [Kind::Error, Kind::Access] {
        let path = dir.join(kind.file_name());
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if !f.metadata()?.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .with_context(|| format!("cannot chown {}", path.display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(kind.mode(group.is_some())))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
    }
    Ok(())
}

/// Rotates `path` when it is over `cap` bytes: its content is copied to
/// `path.1` (replacing the previous generation) and the file truncated in
/// place. Lines written between the copy and the truncation are lost; a
/// burst between two checks can take a file past `cap` until the next one.
pub fn rotate_if_over(path: &Path, cap: u64) -> Result<bool> {
    let mut f = match open_nofollow(path, true) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.len() <= cap {
        return Ok(false);
    }
    let prev = previous(path);
    let mut tmp_name = prev.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = prev.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    // The old generation is read-only for the site: nobody writes to it.
    std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("cannot chown {}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    out.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o640))?;
    f.seek(SeekFrom::Start(0))?;
    std::io::copy(&mut f, &mut out).with_context(|| format!("cannot copy {}", path.display()))?;
    out.flush()?;
    std::fs::rename(&tmp, &prev).with_context(|| format!("cannot replace {}", prev.display()))?;
    f.set_len(0)
        .with_context(|| format!("cannot truncate {}", path.display()))?;
    Ok(true)
}

/// Rotates every site's logs that are over the cap; what failed is logged.
pub fn rotate_all(layout: &Layout, cap: u64) {
    let Ok(entries) = std::fs::read_dir(layout.sites_dir()) else {
        return;
    };
    let node_access = layout.node_access_log();
    let dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("logs")).collect();
    for dir in dirs {
        for kind in [Kind::Error, Kind::Access] {
            if let Err(e) = rotate_if_over(&dir.join(kind.file_name()), cap) {
                tracing::warn!("rotating a log: {e:#}");
            }
        }
    }
    if let Err(e) = rotate_if_over(&node_access, cap) {
        tracing::warn!("rotating a log: {e:#}");
    }
}

/// At most this much of a file's end is read for a tail.
const TAIL_WINDOW: u64 = 8 * 1024 * 1024;

/// Reads up to the last [`TAIL_WINDOW`] bytes of `path` (nothing if it is
/// missing), and the file's length.
fn read_end(path: &Path) -> Result<(Vec<u8>, u64)> {
    let mut f = match open_nofollow(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let len = meta.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(len - start).read_to_end(&mut buf)?;
    if start > 0 {
        // Drop the partial first line.
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                buf.drain(..=i);
            }
            None => buf.clear(),
        }
    }
    Ok((buf, len))
}

/// The last `n` lines of a log (its previous generation first, when the
/// current file has fewer), and the current file's length, where a follow
/// starts.
pub fn tail(path: &Path, n: usize) -> Result<(Vec<String>, u64)> {
    let (current, len) = read_end(path)?;
    let mut lines = split_lines(&current);
    if lines.len() < n {
        let (old, _) = read_end(&previous(path))?;
        let mut all = split_lines(&old);
        all.append(&mut lines);
        lines = all;
    }
    let skip = lines.len().saturating_sub(n);
    Ok((lines.split_off(skip), len))
}

fn split_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().map(str::to_string).collect()
}

/// Reads what is appended to a log after a point, across rotations: a file
/// shorter than what was read was truncated (rotated), and is read from
/// its start; a file replaced by another (a site destroyed and deployed
/// again) likewise.
pub struct Follower {
    path: PathBuf,
    pos: u64,
    ino: Option<u64>,
    partial: Vec<u8>,
}

impl Follower {
    pub fn new(path: &Path, from: u64) -> Follower {
        let ino = std::fs::symlink_metadata(path).ok().map(|m| m.ino());
        Follower {
            path: path.to_path_buf(),
            pos: from,
            ino,
            partial: Vec::new(),
        }
    }

    /// The complete lines appended since the last call.
    pub fn poll(&mut self) -> Result<Vec<String>> {
        let mut f = match open_nofollow(&self.path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open {}", self.path.display()));
            }
        };
        let meta = f.metadata()?;
        if !meta.is_file() {
            bail!("{} is not a regular file", self.path.display());
        }
        if self.ino != Some(meta.ino()) || meta.len() < self.pos {
            self.ino = Some(meta.ino());
            self.pos = 0;
            self.partial.clear();
        }
        if meta.len() == self.pos {
            return Ok(Vec::new());
        }
        // At most a window per poll, so one huge burst cannot hold memory.
        let want = (meta.len() - self.pos).min(TAIL_WINDOW);
        f.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        f.take(want).read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last) = self.partial.iter().rposition(|&b| b == b'\n') else {
            if self.partial.len() > MAX_LINE {
                let lines = split_lines(&std::mem::take(&mut self.partial));
                return Ok(lines);
            }
            return Ok(Vec::new());
        };
        let rest = self.partial.split_off(last + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        Ok(split_lines(&done))
    }
}

/// `toppcloud node log-pipe`: what Apache's `CustomLog` runs (as root). Each
/// line starts with the slot that served it (`s007`, or `none`,
/// `disabled`, `-`); the rest goes to the access log of the site that owns
/// the slot's cell (`cells.toml`, read again when it changes), or to the
/// node's own access log. Runs until Apache closes the pipe.
pub fn run_pipe(layout: &Layout, cell_size: usize, input: impl BufRead) -> Result<()> {
    if let Err(e) = record_pipe(layout) {
        eprintln!("toppcloud log-pipe: {e:#}");
    }
    let mut pipe = Pipe::new(layout.clone(), cell_size.max(1));
    let mut input = input;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut input)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .context("reading Apache's log lines")?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            // Too long: keep the start, skip to the end of the line.
            let mut rest = Vec::new();
            let _ = input.read_until(b'\n', &mut rest);
            line.push(b'\n');
        }
        pipe.write(&line);
    }
}

/// Apache's children inherit both ends of the log pipe, and so would the
/// apps in its mod_wsgi daemons: one could write lines in another site's
/// name, or read the lines of every site. So the pipe tells the shim which
/// pipe it is (its inode, in a file every daemon reads), and the shim
/// closes those descriptors before it loads any app.
fn record_pipe(layout: &Layout) -> Result<()> {
    let stdin = std::io::stdin();
    let meta = std::fs::File::from(
        stdin
            .as_fd()
            .try_clone_to_owned()
            .context("cannot look at stdin")?,
    )
    .metadata()?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_fifo() {
        return Ok(());
    }
    let path = layout.access_pipes();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    // The last few: a graceful restart starts a new pipe while the old
    // generation's daemons finish.
    let mut inodes: Vec<String> = old.lines().map(str::to_string).collect();
    inodes.push(meta.ino().to_string());
    let skip = inodes.len().saturating_sub(8);
    let text: String = inodes[skip..].iter().map(|i| format!("{i}\n")).collect();
    crate::atomic::write_mode(&path, text.as_bytes(), 0o644)
}

struct Pipe {
    layout: Layout,
    cell_size: usize,
    owners: HashMap<usize, SiteName>,
    cells_mtime: Option<SystemTime>,
    open: HashMap<PathBuf, (File, u64, Instant)>,
}

impl Pipe {
    fn new(layout: Layout, cell_size: usize) -> Pipe {
        Pipe {
            layout,
            cell_size,
            owners: HashMap::new(),
            cells_mtime: None,
            open: HashMap::new(),
        }
    }

    /// Reads `cells.toml` again if it changed since it was last read. A
    /// cell's owner never changes in the node's life, so this is needed
    /// only for a cell not seen yet (a site's first deploy).
    fn refresh_cells(&mut self) {
        let path = self.layout.cells_file();
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime == self.cells_mtime {
            return;
        }
        match super::load_cells(&self.layout, &crate::names::Domain::localhost()) {
            Ok(owners) => {
                self.owners = owners.into_iter().collect();
                self.cells_mtime = mtime;
            }
            Err(e) => eprintln!("toppcloud log-pipe: {e:#}"),
        }
    }

    /// The file a line goes to.
    fn target(&mut self, slot: &str) -> PathBuf {
        let cell = Slot::try_from(slot.to_string())
            .ok()
            .map(|s| s.cell(self.cell_size));
        if cell.is_some_and(|c| !self.owners.contains_key(&c)) {
            self.refresh_cells();
        }
        cell.and_then(|c| self.owners.get(&c))
            .map(|site| self.layout.site_logs(site).join(Kind::Access.file_name()))
            .filter(|p| p.parent().is_some_and(Path::is_dir))
            .unwrap_or_else(|| self.layout.node_access_log())
    }

    fn write(&mut self, line: &[u8]) {
        let (slot, rest) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&b"-"[..], line),
        };
        let slot = String::from_utf8_lossy(slot).into_owned();
        let path = self.target(&slot);
        if let Err(e) = self.append(&path, rest) {
            eprintln!("toppcloud log-pipe: {e:#}");
            self.open.remove(&path);
        }
    }

    /// Appends to `path`, through a handle kept open and checked against
    /// the file at that path once a second (a destroyed and redeployed
    /// site has a new file).
    fn append(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let stale = match self.open.get(path) {
            None => true,
            Some((_, ino, at)) if at.elapsed() > Duration::from_secs(1) => {
                std::fs::symlink_metadata(path).map(|m| m.ino()).ok() != Some(*ino)
            }
            Some(_) => false,
        };
        if stale {
            if let Some(dir) = path.parent().filter(|d| !d.exists()) {
                // Only the node's own log directory is made here.
                if let Some(parent) = dir.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                crate::dirs::create_dir(dir, 0o700, None)?;
            }
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let meta = f.metadata()?;
            if !meta.is_file() {
                bail!("{} is not a regular file", path.display());
            }
            self.open
                .insert(path.to_path_buf(), (f, meta.ino(), Instant::now()));
        } else if let Some(entry) = self.open.get_mut(path)
            && entry.2.elapsed() > Duration::from_secs(1)
        {
            // Checked just now: the same file.
            entry.2 = Instant::now();
        }
        let (f, ..) = self.open.get_mut(path).context("log file not open")?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// How often a follow looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Hands the last `lines` lines of `path` to `send`, then with `follow`
/// whatever is appended, until `send` says the client is gone or `stop` is
/// cancelled (the client's channel closed): a follow lives exactly as long
/// as someone reads it.
pub async fn stream<F, Fut>(
    path: PathBuf,
    lines: usize,
    follow: bool,
    mut send: F,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let p = path.clone();
    let (last, len) = tokio::task::spawn_blocking(move || tail(&p, lines))
        .await
        .context("reading the log was interrupted")??;
    if !last.is_empty() && !send(last).await {
        return Ok(());
    }
    if !follow {
        return Ok(());
    }
    let mut follower = Follower::new(&path, len);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        let new = follower.poll()?;
        if !new.is_empty() && !send(new).await {
            return Ok(());
        }
    }
}

impl super::Engine {
    /// Makes the log directories of the sites that have a cell (after an
    /// upgrade, a site has none until its next deploy otherwise).
    pub(super) fn prepare_logs(&self, accounts: &[Option<crate::accounts::Account>]) {
        let owners = self.state().pool.owners().clone();
        for (cell, site) in owners {
            if !self.layout.site_dir(&site).is_dir() {
                continue;
            }
            let group = accounts.get(cell).cloned().flatten().map(|a| a.gid);
            if let Err(e) = prepare(&self.layout.site_logs(&site), group) {
                tracing::warn!("{e:#}");
            }
        }
    }

    /// The path of one of a site's logs, rotated first if it is over the
    /// cap; None for a site the node does not have.
    pub fn site_log(&self, site: &SiteName, kind: Kind) -> Option<PathBuf> {
        if !self.state().sites.contains_key(site) {
            return None;
        }
        let path = self.layout.site_logs(site).join(kind.file_name());
        if let Err(e) = rotate_if_over(&path, MAX_BYTES) {
            tracing::warn!("rotating a log: {e:#}");
        }
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_log_over_the_cap_is_copied_to_its_previous_generation_and_truncated() {
        let d = temp();
        let log = d.path().join("error.log");
        std::fs::write(&log, "one\ntwo\n").unwrap();
        assert!(!rotate_if_over(&log, 100).unwrap());
        assert!(!previous(&log).exists());
        // A writer holding the file with O_APPEND goes on after rotation.
        let mut writer = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writer.write_all(&[b'x'; 200]).unwrap();
        writer.write_all(b"\n").unwrap();
        assert!(rotate_if_over(&log, 100).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        let old = std::fs::read_to_string(previous(&log)).unwrap();
        assert!(old.starts_with("one\ntwo\nxxx"), "{old}");
        writer.write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "three\n");
        // The next rotation replaces the previous generation: one kept.
        writer.write_all(&[b'y'; 200]).unwrap();
        assert!(rotate_if_over(&log, 100).unwrap());
        let old = std::fs::read_to_string(previous(&log)).unwrap();
        assert!(old.starts_with("three\nyyy"), "{old}");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A missing log is nothing to rotate.
        assert!(!rotate_if_over(&d.path().join("none.log"), 1).unwrap());
    }

    #[test]
    fn a_symlinked_log_is_never_followed() {
        let d = temp();
        let secret = d.path().join("secret");
        std::fs::write(&secret, "x".repeat(500)).unwrap();
        let log = d.path().join("error.log");
        std::os::unix::fs::symlink(&secret, &log).unwrap();
        assert!(rotate_if_over(&log, 10).is_err());
        assert!(tail(&log, 10).is_err());
        assert!(Follower::new(&log, 0).poll().is_err());
        assert_eq!(std::fs::metadata(&secret).unwrap().len(), 500);
    }

    #[test]
    fn tail_reaches_into_the_previous_generation() {
        let d = temp();
        let log = d.path().join("error.log");
        std::fs::write(previous(&log), "a\nb\nc\n").unwrap();
        std::fs::write(&log, "d\ne\n").unwrap();
        assert_eq!(tail(&log, 2).unwrap(), (vec!["d".into(), "e".into()], 4));
        assert_eq!(tail(&log, 3).unwrap().0, vec!["c", "d", "e"]);
        assert_eq!(tail(&log, 100).unwrap().0.len(), 5);
        assert!(tail(&d.path().join("none"), 5).unwrap().0.is_empty());
    }

    #[test]
    fn a_follower_sees_appended_lines_across_a_rotation() {
        let d = temp();
        let log = d.path().join("access.log");
        std::fs::write(&log, "old\n").unwrap();
        let mut f = Follower::new(&log, 4);
        assert!(f.poll().unwrap().is_empty());
        let mut w = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        w.write_all(b"new 1\nnew ").unwrap();
        assert_eq!(f.poll().unwrap(), vec!["new 1"]);
        w.write_all(b"2\n").unwrap();
        assert_eq!(f.poll().unwrap(), vec!["new 2"]);
        w.write_all(&[b'z'; 50]).unwrap();
        w.write_all(b"\n").unwrap();
        assert!(rotate_if_over(&log, 10).unwrap());
        w.write_all(b"after\n").unwrap();
        assert_eq!(f.poll().unwrap(), vec!["after"]);
    }

    #[test]
    fn the_pipe_writes_each_line_to_the_site_that_owns_the_slot() {
        let d = temp();
        let layout = Layout::new(d.path().to_path_buf());
        std::fs::write(
            layout.cells_file(),
            "[cells]\n0 = \"a.localhost\"\n1 = \"b.localhost\"\n",
        )
        .unwrap();
        let d_ = &crate::names::Domain::localhost();
        for s in ["a", "b"] {
            let site = SiteName::parse(s, d_).unwrap();
            std::fs::create_dir_all(layout.site_dir(&site).join("logs")).unwrap();
        }
        let input = "s000 GET /a\ns005 GET /b\nnone GET /nobody\ns003 GET /a2\ndisabled GET /x\ns099 GET /gone\n";
        run_pipe(&layout, 4, input.as_bytes()).unwrap();
        let read = |s: &str| {
            let site = SiteName::parse(s, d_).unwrap();
            std::fs::read_to_string(layout.site_dir(&site).join("logs/access.log")).unwrap()
        };
        assert_eq!(read("a"), "GET /a\nGET /a2\n");
        assert_eq!(read("b"), "GET /b\n");
        assert_eq!(
            std::fs::read_to_string(layout.node_access_log()).unwrap(),
            "GET /nobody\nGET /x\nGET /gone\n"
        );
    }
}
