//! `toppcloud update DIR --host=SITE`, the original upload path: the real
//! rsync, over the real ssh, sends what changed since the live release to
//! the node, which deploys it through the same engine as a git push. The
//! node's progress arrives on stderr; rsync's exit code says whether it went
//! live.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::app_ini::AppIni;
use crate::laptop::config::Node;

pub fn run(dir: &Path, host: Option<&str>, node: &Node, etc_hosts: bool) -> Result<()> {
    let (ini, warnings) = AppIni::load(dir).map_err(anyhow::Error::new)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let site = match host.map(str::to_string).or(ini.default_host.clone()) {
        Some(h) => h,
        None => bail!(
            "no --host given and app.ini has no default_host\nhint: toppcloud update {} --host=SITE",
            dir.display()
        ),
    };
    // The node adds its own domain to a bare name; here the name must only
    // be a site name at all (never an rsync option or a path).
    crate::names::SiteName::check_shape(&site).map_err(|e| anyhow::anyhow!("--host: {e}"))?;
    let mut cmd = Command::new("rsync");
    // No -p: the node refuses it (see upload.rs); staging sets permissions.
    // -c: files are compared by content, not by size and time: an edit in
    // the second of the last upload that kept the size would otherwise be
    // skipped (and the old file deployed).
    cmd.args(["-rltzc", "--delete", "-i"]);
    for e in crate::app_ini::EXCLUDED {
        cmd.arg(format!("--exclude={e}"));
    }
    cmd.arg("-e")
        .arg(node.ssh_command())
        .arg(format!("{}/", dir.display()))
        .arg(format!("{}@{}:{site}/", node.user, node.host));
    println!(
        "-----> uploading {} to {site} on {}",
        dir.display(),
        node.url()
    );
    cmd.stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("rsync not found\nhint: apt-get install rsync")
        }
        Err(e) => return Err(e).context("cannot run rsync"),
    };
    let status = crate::laptop::remote::relay_stderr(&mut child, node, "rsync", |s| !s.success())?;
    if !status.success() {
        bail!("update of {site} failed (the reason is above); the live release is unchanged");
    }
    if !resolves(&site) {
        let ip = format!("{}:22", node.host)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| node.host.clone());
        let names = host_names(&site, ini.version);
        let line = format!("{ip} {names}");
        if etc_hosts {
            append_etc_hosts(&line)?;
            println!("added to /etc/hosts: {line}");
        } else {
            println!(
                "note: {site} has no DNS entry here; to reach it from this machine, add to /etc/hosts:"
            );
            println!("  {line}");
            println!("  (or rerun with --etc-hosts to add it)");
        }
    }
    Ok(())
}

fn host_names(site: &str, version: Option<u32>) -> String {
    let mut names = vec![site.to_string()];
    if let Some(v) = version {
        names.push(format!("{v}.{site}"));
    }
    names.push(format!("prev.{site}"));
    names.join(" ")
}

fn resolves(host: &str) -> bool {
    // RFC 6761: *.localhost never goes to DNS. Browsers and curl map it to
    // loopback themselves, but the C library only knows /etc/hosts.
    if host == "localhost" || host.ends_with(".localhost") {
        return std::fs::read_to_string("/etc/hosts").is_ok_and(|t| {
            t.lines()
                .map(|l| l.split('#').next().unwrap_or_default())
                .any(|l| {
                    l.split_whitespace()
                        .skip(1)
                        .any(|n| n.eq_ignore_ascii_case(host))
                })
        });
    }
    (host, 80)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.next().is_some())
}

fn append_etc_hosts(line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open("/etc/hosts")
        .context("cannot write /etc/hosts (run as root, or add the line yourself)")?;
    writeln!(f, "{line}  # added by toppcloud update").context("cannot write /etc/hosts")
}

/// `toppcloud remote [SITE]`: adds the `toppcloud` git remote.
pub fn add_remote(site: Option<&str>, node: &Node) -> Result<()> {
    let site = match site {
        Some(s) => s.to_string(),
        None => {
            let (ini, _) = AppIni::load(Path::new(".")).map_err(anyhow::Error::new)?;
            ini.default_host
                .context("no SITE given and app.ini has no default_host\nhint: toppcloud remote blog.example.com")?
        }
    };
    if site.is_empty()
        || !site
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
    {
        bail!("invalid site {site:?}");
    }
    let url = format!("{}/{site}", node.url());
    let out = Command::new("git")
        .args(["remote", "add", "toppcloud", &url])
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("already exists") {
            bail!(
                "a remote named toppcloud exists already\nhint: git remote set-url toppcloud {url}"
            );
        }
        bail!("git remote add failed: {}", err.trim());
    }
    println!("added git remote toppcloud -> {url}\nnext: git push toppcloud main");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_hosts_names_follow_the_original() {
        assert_eq!(
            host_names("blog.example.com", Some(2)),
            "blog.example.com 2.blog.example.com prev.blog.example.com"
        );
        assert_eq!(host_names("b.x", None), "b.x prev.b.x");
    }
}
