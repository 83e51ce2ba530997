//! The SSH exec line, parsed into the one request it may name: a push, a
//! fetch or an rsync upload, each on a validated site. Pure (no I/O, no
//! connection state), so the fuzz targets can reach it; `ssh.rs` serves
//! the request.

use crate::names::{Domain, SiteName};
use crate::node::upload::Upload;

/// What a client may ask the node to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `git-receive-pack SITE`: a push.
    Receive(SiteName),
    /// `git-upload-pack SITE`: a fetch or clone.
    Fetch(SiteName),
    /// `rsync --server ...`: `toppcloud update`.
    Rsync(Upload),
}

impl Request {
    pub fn site(&self) -> &SiteName {
        match self {
            Request::Receive(s) | Request::Fetch(s) => s,
            Request::Rsync(u) => &u.site,
        }
    }
}

/// Parses an exec line into a git command and the site it names, or an
/// upload; the error is the refusal to show the client.
pub fn parse(line: &str, domain: &Domain) -> Result<Request, String> {
    let words = shell_words::split(line).map_err(|_| format!("cannot parse command {line:?}"))?;
    if words.first().is_some_and(|w| w == "rsync") {
        return crate::node::upload::parse(&words, domain).map(Request::Rsync);
    }
    let (cmd, path) = match words.as_slice() {
        [cmd, path] => (cmd.as_str(), path.as_str()),
        _ => return Err(refusal_of(line)),
    };
    let name = path.strip_prefix('/').unwrap_or(path);
    let name = name.strip_suffix(".git").unwrap_or(name);
    let site = || SiteName::parse(name, domain).map_err(|e| e.to_string());
    match cmd {
        "git-receive-pack" => Ok(Request::Receive(site()?)),
        "git-upload-pack" => Ok(Request::Fetch(site()?)),
        _ => Err(refusal_of(line)),
    }
}

fn refusal_of(line: &str) -> String {
    let shown: String = line.chars().take(60).collect();
    format!(
        "{shown:?} is not something this node runs; it accepts git push, git fetch and toppcloud update"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_commands_name_a_site() {
        let d = &crate::names::Domain::localhost();
        assert_eq!(
            parse("git-receive-pack '/blog.git'", d).unwrap(),
            Request::Receive(SiteName::parse("blog", d).unwrap())
        );
        assert_eq!(
            parse("git-upload-pack 'blog.example.com'", d).unwrap(),
            Request::Fetch(SiteName::parse("blog.example.com", d).unwrap())
        );
        let e = parse("sh -c 'id'", d).unwrap_err();
        assert!(e.contains("is not something this node runs"), "{e}");
        let e = parse("git-receive-pack '../etc'", d).unwrap_err();
        assert!(e.contains("invalid site name"), "{e}");
        let e = parse("git-receive-pack 'unterminated", d).unwrap_err();
        assert!(e.contains("cannot parse command"), "{e}");
    }
}
