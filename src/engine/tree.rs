//! Trees of files from outside: copied without ever following a link,
//! checked for links that leave them by resolving each one against the real
//! tree, and sealed (owned by root, readable by one site's group) before any
//! site code runs.
//!
//! A site's own processes may still be changing a tree the node reads (an
//! upload area, a build directory), so the copy walks it by file descriptor:
//! every directory and file is opened relative to its parent with
//! `O_NOFOLLOW`, and a name swapped for a link mid-copy is an error, never a
//! path into the rest of the node.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Deeper trees than this are refused (and never recursed into).
const MAX_DEPTH: usize = 64;
/// Links followed while resolving one link, as the kernel's own limit.
const MAX_HOPS: usize = 40;

#[derive(Debug, Default)]
pub struct Copied {
    pub files: usize,
}

/// What `copy_untrusted` keeps: a name and whether it is a directory.
pub type Filter<'a> = &'a dyn Fn(&str, bool) -> bool;

fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid C string and a directory fd (or AT_FDCWD).
    let fd = unsafe { libc::openat(at, c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<libc::stat> {
    let c = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: stat is plain data filled by fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn read_link_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<PathBuf> {
    let c = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is writable for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

fn names_in(dir: &OwnedFd) -> std::io::Result<Vec<OsString>> {
    // The directory the descriptor holds, whatever its path has become.
    let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut names: Vec<OsString> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    Ok(names)
}

/// Copies the tree at `src` into `dest` (which must not exist) without
/// following any link: directories, regular files (content, mtime, the
/// executable bit) and symlinks (as links, targets unchanged; check them
/// with `outward_links` on the copy). Other kinds of file are left out, as
/// are names `keep` refuses.
pub fn copy_untrusted(src: &Path, dest: &Path, keep: Filter<'_>) -> Result<Copied> {
    let root = open_at(None, src.as_os_str(), libc::O_RDONLY | libc::O_DIRECTORY)
        .with_context(|| format!("cannot open {}", src.display()))?;
    std::fs::create_dir(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut copied = Copied::default();
    copy_dir(&root, dest, Path::new(""), 0, keep, &mut copied)?;
    Ok(copied)
}

fn copy_dir(
    dir: &OwnedFd,
    dest: &Path,
    rel: &Path,
    depth: usize,
    keep: Filter<'_>,
    copied: &mut Copied,
) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!(
            "{}: directories nest deeper than {MAX_DEPTH}",
            rel.display()
        );
    }
    let changed = |what: &Path, e: std::io::Error| {
        anyhow::anyhow!(
            "{}: cannot read it ({e}); was it changed while the node copied it?",
            what.display()
        )
    };
    for name in names_in(dir).map_err(|e| changed(rel, e))? {
        let here = rel.join(&name);
        let to = dest.join(&name);
        let name_str = name.to_string_lossy();
        let st = stat_at(dir, &name).map_err(|e| changed(&here, e))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if !keep(&name_str, true) {
                    continue;
                }
                let sub = open_at(Some(dir), &name, libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| changed(&here, e))?;
                std::fs::create_dir(&to)
                    .with_context(|| format!("cannot create {}", to.display()))?;
                copy_dir(&sub, &to, &here, depth + 1, keep, copied)?;
            }
            libc::S_IFREG => {
                if !keep(&name_str, false) {
                    continue;
                }
                // O_NONBLOCK: a fifo swapped in after the stat must not hang us.
                let fd = open_at(Some(dir), &name, libc::O_RDONLY | libc::O_NONBLOCK)
                    .map_err(|e| changed(&here, e))?;
                let mut from = File::from(fd);
                let meta = from.metadata()?;
                if !meta.is_file() {
                    bail!("{}: changed while the node copied it", here.display());
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&to)
                    .with_context(|| format!("cannot create {}", to.display()))?;
                std::io::copy(&mut from, &mut out)
                    .with_context(|| format!("cannot copy {}", here.display()))?;
                // Kept so a later rsync upload sees unchanged files as unchanged.
                if let Ok(mtime) = meta.modified() {
                    let _ = out.set_modified(mtime);
                }
                let mode = if meta.mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                out.set_permissions(std::fs::Permissions::from_mode(mode))?;
                copied.files += 1;
            }
            libc::S_IFLNK => {
                if !keep(&name_str, false) {
                    continue;
                }
                let target = read_link_at(dir, &name).map_err(|e| changed(&here, e))?;
                std::os::unix::fs::symlink(&target, &to)
                    .with_context(|| format!("cannot create {}", to.display()))?;
            }
            // Sockets, fifos and devices have no place in an app.
            _ => {}
        }
    }
    Ok(())
}

/// Symlinks under `root` that resolve outside it, relative to `root`,
/// each with where it leads. `root` must be a tree nobody else can change
/// (a fresh copy): every link is resolved against the real tree, link by
/// link, the way the kernel would, so `z -> .` followed by
/// `leak -> z/z/../..` is caught however it is spelled.
pub fn outward_links(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in entries.flatten() {
            let here = rel.join(e.file_name());
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(here);
            } else if ft.is_symlink() && !resolves_inside(root, &here) {
                let target = std::fs::read_link(root.join(&here)).unwrap_or_default();
                out.push((here.display().to_string(), target));
            }
        }
    }
    out.sort();
    out
}

/// Whether the link at `rel` (relative to `root`) resolves inside `root`.
/// A link that loops, or leads through an absolute target, does not.
pub fn resolves_inside(root: &Path, rel: &Path) -> bool {
    let mut cur: Vec<OsString> = Vec::new();
    // The link's own directory is a real directory of the tree.
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            match c {
                Component::Normal(n) => cur.push(n.to_os_string()),
                Component::CurDir => {}
                _ => return false,
            }
        }
    }
    let Some(name) = rel.file_name() else {
        return false;
    };
    let mut todo: Vec<OsString> = vec![name.to_os_string()];
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                if cur.pop().is_none() {
                    return false;
                }
                continue;
            }
            _ => {}
        }
        let mut candidate: PathBuf = cur.iter().collect();
        candidate.push(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return false;
                }
                let Ok(target) = std::fs::read_link(&full) else {
                    return false;
                };
                if target.is_absolute() {
                    return false;
                }
                // Resolve the target's parts next, from the link's directory.
                let mut parts: Vec<OsString> = Vec::new();
                for c in target.components() {
                    match c {
                        Component::Normal(n) => parts.push(n.to_os_string()),
                        Component::ParentDir => parts.push(OsString::from("..")),
                        Component::CurDir => {}
                        _ => return false,
                    }
                }
                todo.extend(parts.into_iter().rev());
            }
            // A real entry, or nothing yet (a dangling link is harmless
            // while it stays inside).
            _ => cur.push(part),
        }
    }
    true
}

/// How a sealed tree may be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// A release's app: readable by its site's group; Apache's workers may
    /// pass through directories (not list them) to reach `static/`, whose
    /// files are public anyway.
    App,
    /// Readable by the site's group only (a virtualenv).
    Private,
}

/// Makes a tree read-only to everyone but root: owned by root (when `gid`
/// is given, the node being root) with the site's group, no write bit for
/// anyone but the owner. Walks by file descriptor with `O_NOFOLLOW`, and
/// seals each directory before reading its entries, so a site process still
/// writing into the tree (a build it left running) can neither redirect the
/// walk onto another file nor add entries behind it.
pub fn seal(root: &Path, gid: Option<u32>, how: Seal) -> Result<()> {
    let fd = open_at(None, root.as_os_str(), libc::O_RDONLY | libc::O_DIRECTORY)
        .with_context(|| format!("cannot open {}", root.display()))?;
    seal_dir(&fd, root, Path::new(""), 0, gid, how)
}

fn set_owner_mode(fd: &OwnedFd, gid: Option<u32>, mode: u32) -> std::io::Result<()> {
    if let Some(g) = gid {
        // SAFETY: fchown on a descriptor we own.
        if unsafe { libc::fchown(fd.as_raw_fd(), 0, g) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn seal_dir(
    dir: &OwnedFd,
    root: &Path,
    rel: &Path,
    depth: usize,
    gid: Option<u32>,
    how: Seal,
) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!(
            "{}: directories nest deeper than {MAX_DEPTH}",
            rel.display()
        );
    }
    let shown = || root.join(rel).display().to_string();
    let dir_mode = match how {
        Seal::App => 0o751,
        Seal::Private => 0o750,
    };
    set_owner_mode(dir, gid, dir_mode).with_context(|| format!("cannot seal {}", shown()))?;
    let public = how == Seal::App && rel.starts_with("static");
    for name in names_in(dir).with_context(|| format!("cannot read {}", shown()))? {
        let here = rel.join(&name);
        let st = stat_at(dir, &name)
            .with_context(|| format!("cannot read {}", root.join(&here).display()))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let sub = open_at(Some(dir), &name, libc::O_RDONLY | libc::O_DIRECTORY)
                    .with_context(|| format!("cannot open {}", root.join(&here).display()))?;
                seal_dir(&sub, root, &here, depth + 1, gid, how)?;
            }
            libc::S_IFREG => {
                let fd = open_at(Some(dir), &name, libc::O_RDONLY | libc::O_NONBLOCK)
                    .with_context(|| format!("cannot open {}", root.join(&here).display()))?;
                let exec = st.st_mode & 0o111 != 0;
                let public = public || how == Seal::App && here.starts_with("static");
                let mode = match (public, exec) {
                    (true, true) => 0o755,
                    (true, false) => 0o644,
                    (false, true) => 0o750,
                    (false, false) => 0o640,
                };
                set_owner_mode(&fd, gid, mode)
                    .with_context(|| format!("cannot seal {}", root.join(&here).display()))?;
            }
            _ => {
                // Links (and anything else) change owner only; a link's own
                // mode means nothing.
                if let Some(g) = gid {
                    let c = CString::new(name.as_bytes()).context("a file name contains NUL")?;
                    // SAFETY: a valid name relative to a directory fd we own.
                    let rc = unsafe {
                        libc::fchownat(dir.as_raw_fd(), c.as_ptr(), 0, g, libc::AT_SYMLINK_NOFOLLOW)
                    };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error()).with_context(|| {
                            format!("cannot chown {}", root.join(&here).display())
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_resolved_not_counted() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("static/sub")).unwrap();
        std::fs::write(r.join("static/a.txt"), "a").unwrap();
        // The attack: a link to its own directory, then enough of it to make
        // the `..`s look balanced when counted as text.
        symlink(".", r.join("static/z")).unwrap();
        symlink("z/z/z/z/../../../../..", r.join("static/leak")).unwrap();
        symlink("a.txt", r.join("static/ok")).unwrap();
        symlink("../static/a.txt", r.join("static/sub/up")).unwrap();
        symlink("/etc/passwd", r.join("abs")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        symlink("missing/inside", r.join("dangling")).unwrap();
        symlink("../outside", r.join("dangling-out")).unwrap();
        let out: Vec<String> = outward_links(r).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            out,
            vec!["abs", "dangling-out", "loop1", "loop2", "static/leak"]
        );
    }

    #[test]
    fn a_counted_link_that_looks_balanced_is_outside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        // a/b/c -> .. is a; a/b/c/../.. is then the tree's parent.
        symlink("..", r.join("a/b/c")).unwrap();
        symlink("c/../..", r.join("a/b/x")).unwrap();
        assert!(resolves_inside(r, Path::new("a/b/c")));
        assert!(!resolves_inside(r, Path::new("a/b/x")));
    }

    #[test]
    fn copy_keeps_links_as_links_and_leaves_out_the_rest() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join(".git/objects")).unwrap();
        std::fs::create_dir_all(s.join("static")).unwrap();
        std::fs::write(s.join("main.py"), "x").unwrap();
        std::fs::write(s.join("static/a.txt"), "a").unwrap();
        symlink("/etc/passwd", s.join("static/p")).unwrap();
        symlink("a.txt", s.join("static/b")).unwrap();
        let out = dst.path().join("app");
        let keep = |name: &str, dir: bool| !(dir && name == ".git");
        let c = copy_untrusted(s, &out, &keep).unwrap();
        assert_eq!(c.files, 2);
        assert_eq!(
            std::fs::read_link(out.join("static/p")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(std::fs::read_to_string(out.join("static/b")).unwrap(), "a");
        assert!(!out.join(".git").exists());
    }

    #[test]
    fn a_source_that_is_a_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        symlink("real", d.path().join("area")).unwrap();
        let keep = |_: &str, _: bool| true;
        assert!(copy_untrusted(&d.path().join("area"), &d.path().join("out"), &keep).is_err());
    }

    #[test]
    fn seal_sets_modes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("app");
        std::fs::create_dir_all(r.join("static")).unwrap();
        std::fs::write(r.join("main.py"), "x").unwrap();
        std::fs::write(r.join("static/a.css"), "a").unwrap();
        seal(&r, None, Seal::App).unwrap();
        let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("main.py"), 0o640);
        assert_eq!(mode("static/a.css"), 0o644);
        assert_eq!(mode("static"), 0o751);
    }
}
