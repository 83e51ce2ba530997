//! Who runs a site's code. A node run as root gives every cell of the slot
//! pool a Unix account of its own (`tc-c0001`, ...); a site takes a cell for
//! its life, and everything that runs its code (its mod_wsgi daemons, its
//! builds, its rsync receiver) runs as that account, never as root and never
//! as another site's. A node run by a normal user cannot create accounts:
//! it runs every site as itself, and says so once at start.

use std::ffi::{CStr, CString};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A Unix account that runs one site's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// Makes `cmd` run as this account, with no supplementary groups (the
    /// standard library drops them when a root parent sets a uid).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.uid(self.uid).gid(self.gid);
    }
}

/// Whether this node can give sites accounts of their own.
pub fn isolating() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The account name of pool cell `cell`: `<prefix><cell, 4 digits>`.
pub fn cell_account_name(prefix: &str, cell: usize) -> String {
    format!("{prefix}{cell:04}")
}

/// Checks an account prefix from the config: the names it makes must be
/// valid, short Unix user names.
pub fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 20
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "account prefix {prefix:?} is not usable: lowercase letters, digits, '-' and '_', starting with a letter, at most 20 characters"
        );
    }
    Ok(())
}

/// Looks an account up in the system's user database.
pub fn lookup(name: &str) -> Result<Option<Account>> {
    let cname = CString::new(name).context("account name contains a NUL byte")?;
    // SAFETY: getpwnam_r's arguments are the ones `getpw` hands it.
    getpw(&format!("account {name}"), |pwd, buf, len, result| unsafe {
        libc::getpwnam_r(cname.as_ptr(), pwd, buf, len, result)
    })
}

/// The account the node itself runs as (its effective uid).
pub fn current() -> Result<Account> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: getpwuid_r's arguments are the ones `getpw` hands it.
    getpw(&format!("uid {uid}"), |pwd, buf, len, result| unsafe {
        libc::getpwuid_r(uid, pwd, buf, len, result)
    })?
    .with_context(|| format!("uid {uid} has no entry in the user database"))
}

/// Runs one of the `getpw*_r` calls with a buffer of its own and reads
/// the entry it found.
fn getpw(
    what: &str,
    call: impl FnOnce(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> Result<Option<Account>> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; the call fills it and points its
    // strings into `buf`, which outlives every use below.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = call(&mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result);
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("cannot look up {what}"));
    }
    if result.is_null() {
        return Ok(None);
    }
    // SAFETY: the call succeeded, so pw_name is a valid C string in buf.
    let found = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Ok(Some(Account {
        name: found,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

/// The account `name`, created (a system account with its own group, no
/// home, no login shell) if it does not exist yet. Safe to race with
/// another node creating the same account.
pub async fn ensure(name: &str) -> Result<Account> {
    if let Some(a) = lookup(name)? {
        return refuse_privileged(a);
    }
    let mut last = String::new();
    // useradd takes a lock on /etc/passwd and gives up at once when another
    // useradd holds it: a few tries with a short pause, bounded.
    for attempt in 0..20 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
        }
        let mut cmd = tokio::process::Command::new("useradd");
        cmd.args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "toppcloud site",
        ])
        .arg(name);
        crate::process::clean_env(&mut cmd);
        match crate::process::run_captured(cmd, "useradd").await {
            Ok(_) => {}
            Err(e) => last = e.to_string(),
        }
        if let Some(a) = lookup(name)? {
            tracing::info!(account = %a.name, uid = a.uid, "created the account of a pool cell");
            return refuse_privileged(a);
        }
    }
    bail!(
        "cannot create the account {name}: {last}\nhint: the node needs useradd (Debian's passwd package) and must run as root"
    )
}

fn refuse_privileged(a: Account) -> Result<Account> {
    if a.uid == 0 || a.gid == 0 {
        bail!(
            "account {} has uid {} / gid {}: a site never runs as root",
            a.name,
            a.uid,
            a.gid
        );
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_user_names() {
        assert_eq!(cell_account_name("tc-c", 7), "tc-c0007");
        assert!(check_prefix("tc-c").is_ok());
        for bad in ["", "Tc", "1tc", "tc c", "tc/", "averyveryverylongprefix1"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn root_is_found_and_refused() {
        let root = lookup("root").unwrap().expect("root exists");
        assert_eq!(root.uid, 0);
        assert!(refuse_privileged(root).is_err());
        assert_eq!(lookup("no-such-account-here").unwrap(), None);
        let me = current().unwrap();
        assert_eq!(me.uid, unsafe { libc::geteuid() });
        assert_eq!(lookup(&me.name).unwrap(), Some(me));
    }
}
