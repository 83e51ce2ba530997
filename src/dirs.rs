//! Directories the node makes, each with the owner and mode it means it to
//! have: who may pass through, list or write is part of the security model
//! (README, "Security model"), so it is said where the directory is made.

use std::path::Path;

use anyhow::{Context, Result};

/// Creates `dir` if missing, with `mode`, owned by `owner` when given.
pub fn create_dir(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", dir.display()))
}
