//! Writing a file the way every piece of node state is written: to a
//! temporary file beside it, synced, then renamed over it. Node state is
//! root's alone (0600) unless a caller says otherwise.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Replaces `path` with `contents`: readers see the old file or the new
/// one, never a part, and the new one survives a crash once this returns.
pub fn write(path: &Path, contents: &[u8]) -> Result<()> {
    write_mode(path, contents, 0o600)
}

/// `write`, the new file getting exactly `mode` (whatever the umask).
pub fn write_mode(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    write_owned(path, contents, mode, None)
}

/// `write_mode`, the new file also getting `owner` (uid, gid) before it
/// takes the name, so no reader ever sees it with other rights.
pub fn write_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", tmp.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", tmp.display()))?;
    }
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
