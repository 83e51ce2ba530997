//! The SSH exec line, parsed into the one request it may name: a push, a
//! fetch, an rsync upload, a config command, a rollback or an activation,
//! each on a validated site.
//! Pure (no I/O, no connection state), so the fuzz targets can reach it;
//! `ssh.rs` serves the request.

use crate::engine::settings::ConfigChange;
use crate::names::{Domain, HostName, ReleaseId, SiteName};
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
    /// `config SITE [--values | set K=V... | unset K...]`: `toppcloud config`.
    Config {
        site: SiteName,
        action: ConfigAction,
    },
    /// `rollback SITE`: the previous release becomes live.
    Rollback(SiteName),
    /// `activate SITE ID`: a kept release becomes live, without a rebuild.
    Activate { site: SiteName, release: ReleaseId },
    /// `disable SITE`: every host answers the maintenance page.
    Disable(SiteName),
    /// `enable SITE`: the routes of a disabled site back.
    Enable(SiteName),
    /// `destroy SITE --yes [--data]`: the site gone (its files, secrets and
    /// database kept unless `--data`; the database always).
    Destroy { site: SiteName, data: bool },
    /// `domains SITE [add NAME | remove NAME]`: the site's names.
    Domains {
        site: SiteName,
        action: DomainsAction,
    },
}

/// What a `domains` command asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainsAction {
    /// The names, what each serves and its certificate.
    List,
    Add(HostName),
    Remove(HostName),
}

/// How `domains` is written, for the messages that refuse one.
pub const DOMAINS_USAGE: &str = "domains SITE [add NAME | remove NAME]";

/// The words after `domains SITE`.
pub fn domains_action(words: &[String]) -> Result<DomainsAction, String> {
    let host = |n: &str| HostName::parse(n).map_err(|e| e.to_string());
    match words {
        [] => Ok(DomainsAction::List),
        [verb, name] if verb == "add" => Ok(DomainsAction::Add(host(name)?)),
        [verb, name] if verb == "remove" => Ok(DomainsAction::Remove(host(name)?)),
        _ => Err(format!("usage: {DOMAINS_USAGE}")),
    }
}

/// `domains SITE ...` as words, the command first.
pub fn domains_command(words: &[String], domain: &Domain) -> Result<Request, String> {
    let Some(name) = words.get(1) else {
        return Err(format!("domains: name a site; usage: {DOMAINS_USAGE}"));
    };
    let site = SiteName::parse(name, domain).map_err(|e| e.to_string())?;
    let action = domains_action(&words[2..])?;
    Ok(Request::Domains { site, action })
}

/// What a config command asks of a site's config vars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigAction {
    /// `config SITE`: the names; with `--values`, `NAME=VALUE`.
    List { values: bool },
    /// `set K=V...` or `unset K...`: a new release with the new environment.
    Change(ConfigChange),
}

impl Request {
    pub fn site(&self) -> &SiteName {
        match self {
            Request::Receive(s) | Request::Fetch(s) => s,
            Request::Rsync(u) => &u.site,
            Request::Config { site, .. } => site,
            Request::Rollback(site) | Request::Activate { site, .. } => site,
            Request::Disable(site) | Request::Enable(site) | Request::Destroy { site, .. } => site,
            Request::Domains { site, .. } => site,
        }
    }
}

/// How a config command is written, for the messages that refuse one.
pub const CONFIG_USAGE: &str = "config SITE [--values | set K=V... | unset K...]";

/// How rollback and activate are written, for the messages that refuse one.
pub const ROLLBACK_USAGE: &str = "rollback SITE";
pub const ACTIVATE_USAGE: &str = "activate SITE RELEASE";

/// `rollback SITE` or `activate SITE ID`, as words (the command first).
pub fn release_command(words: &[String], domain: &Domain) -> Result<Request, String> {
    let site = |name: &str| SiteName::parse(name, domain).map_err(|e| e.to_string());
    match words {
        [cmd, name] if cmd == "rollback" => Ok(Request::Rollback(site(name)?)),
        [cmd, ..] if cmd == "rollback" => Err(format!("usage: {ROLLBACK_USAGE}")),
        [cmd, name, id] if cmd == "activate" => Ok(Request::Activate {
            site: site(name)?,
            release: ReleaseId::parse(id).map_err(|e| e.to_string())?,
        }),
        [cmd, ..] if cmd == "activate" => Err(format!("usage: {ACTIVATE_USAGE}")),
        _ => Err(format!("usage: {ROLLBACK_USAGE} | {ACTIVATE_USAGE}")),
    }
}

/// How the lifecycle commands are written, for the messages that refuse one.
pub const DISABLE_USAGE: &str = "disable SITE";
pub const ENABLE_USAGE: &str = "enable SITE";
pub const DESTROY_USAGE: &str = "destroy SITE --yes [--data]";

/// `disable SITE`, `enable SITE` or `destroy SITE --yes [--data]`, as words
/// (the command first). A destroy without `--yes` is refused here.
pub fn lifecycle_command(words: &[String], domain: &Domain) -> Result<Request, String> {
    let site = |name: &str| SiteName::parse(name, domain).map_err(|e| e.to_string());
    match words {
        [cmd, name] if cmd == "disable" => Ok(Request::Disable(site(name)?)),
        [cmd, ..] if cmd == "disable" => Err(format!("usage: {DISABLE_USAGE}")),
        [cmd, name] if cmd == "enable" => Ok(Request::Enable(site(name)?)),
        [cmd, ..] if cmd == "enable" => Err(format!("usage: {ENABLE_USAGE}")),
        [cmd, rest @ ..] if cmd == "destroy" => {
            let (mut yes, mut data, mut names) = (false, false, Vec::new());
            for w in rest {
                match w.as_str() {
                    "--yes" => yes = true,
                    "--data" => data = true,
                    w if w.starts_with('-') => {
                        return Err(format!(
                            "destroy: {:?} is not understood here; usage: {DESTROY_USAGE}",
                            w.chars().take(40).collect::<String>()
                        ));
                    }
                    _ => names.push(w),
                }
            }
            let [name] = names.as_slice() else {
                return Err(format!("destroy: name one site; usage: {DESTROY_USAGE}"));
            };
            let site = site(name)?;
            if !yes {
                return Err(format!(
                    "destroy removes {site}'s routes, releases and repository for good: add --yes to confirm (usage: {DESTROY_USAGE})"
                ));
            }
            Ok(Request::Destroy { site, data })
        }
        _ => Err(format!(
            "usage: {DISABLE_USAGE} | {ENABLE_USAGE} | {DESTROY_USAGE}"
        )),
    }
}

/// The words after `config SITE`: nothing (list the names), `--values`
/// alone, or a change for [`ConfigChange::parse`].
pub fn config_action(words: &[String]) -> Result<ConfigAction, String> {
    match words {
        [] => Ok(ConfigAction::List { values: false }),
        [w] if w == "--values" => Ok(ConfigAction::List { values: true }),
        [w, ..] if w.starts_with('-') => Err(format!(
            "config: {:?} is not understood here; usage: {CONFIG_USAGE}",
            w.chars().take(40).collect::<String>()
        )),
        _ => ConfigChange::parse(words).map(ConfigAction::Change),
    }
}

/// Parses an exec line into a git command and the site it names, or an
/// upload; the error is the refusal to show the client.
pub fn parse(line: &str, domain: &Domain) -> Result<Request, String> {
    let words = shell_words::split(line).map_err(|_| format!("cannot parse command {line:?}"))?;
    if words.first().is_some_and(|w| w == "rsync") {
        return crate::node::upload::parse(&words, domain).map(Request::Rsync);
    }
    if words.first().is_some_and(|w| w == "config") {
        let Some(name) = words.get(1) else {
            return Err(format!("config: name a site; usage: {CONFIG_USAGE}"));
        };
        let site = SiteName::parse(name, domain).map_err(|e| e.to_string())?;
        let action = config_action(&words[2..])?;
        return Ok(Request::Config { site, action });
    }
    if words.first().is_some_and(|w| w == "domains") {
        return domains_command(&words, domain);
    }
    if words
        .first()
        .is_some_and(|w| w == "rollback" || w == "activate")
    {
        return release_command(&words, domain);
    }
    if words
        .first()
        .is_some_and(|w| w == "disable" || w == "enable" || w == "destroy")
    {
        return lifecycle_command(&words, domain);
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
        "{shown:?} is not something this node runs; it accepts git push, git fetch, toppcloud update, toppcloud config, status, releases, logs, rollback, activate, disable, enable, destroy and domains"
    )
}

/// A read-only report a key may ask for: `status [--json]` (every site the
/// key may use) or `releases SITE [--json]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Status { json: bool },
    Releases { site: SiteName, json: bool },
}

/// How the report commands are written, for the messages that refuse one.
pub const STATUS_USAGE: &str = "status [--json]";
pub const RELEASES_USAGE: &str = "releases SITE [--json]";

/// The words after `status` or `releases`: `--json` and, for releases,
/// the site (in any order).
pub fn report_words(command: &str, words: &[String], domain: &Domain) -> Result<Report, String> {
    let mut json = false;
    let mut names = Vec::new();
    for w in words {
        if w == "--json" {
            json = true;
        } else if w.starts_with('-') {
            let usage = if command == "status" {
                STATUS_USAGE
            } else {
                RELEASES_USAGE
            };
            return Err(format!(
                "{command}: {:?} is not understood here; usage: {usage}",
                w.chars().take(40).collect::<String>()
            ));
        } else {
            names.push(w);
        }
    }
    match (command, names.as_slice()) {
        ("status", []) => Ok(Report::Status { json }),
        ("status", _) => Err(format!("status takes no site; usage: {STATUS_USAGE}")),
        ("releases", [name]) => {
            let site = SiteName::parse(name, domain).map_err(|e| e.to_string())?;
            Ok(Report::Releases { site, json })
        }
        _ => Err(format!("releases: name one site; usage: {RELEASES_USAGE}")),
    }
}

/// The exec line as a report command: None when it is not one (then
/// [`parse`] reads it), else the report or the refusal.
pub fn parse_report(line: &str, domain: &Domain) -> Option<Result<Report, String>> {
    let words = shell_words::split(line).ok()?;
    let (command, rest) = words.split_first()?;
    match command.as_str() {
        "status" | "releases" => Some(report_words(command, rest, domain)),
        _ => None,
    }
}

/// `logs SITE [-f] [-n LINES] [--access]`: the last lines of one of a
/// site's logs, and with `-f` what is appended after, until the client
/// goes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logs {
    pub site: SiteName,
    /// How many lines from the end.
    pub lines: usize,
    pub follow: bool,
    /// The access log instead of the error log.
    pub access: bool,
}

/// How the logs command is written, for the messages that refuse one.
pub const LOGS_USAGE: &str = "logs SITE [-f] [-n LINES] [--access]";

/// Lines shown when `-n` is not given, and the most `-n` may ask for.
pub const DEFAULT_LOG_LINES: usize = 100;
pub const MAX_LOG_LINES: usize = 10_000;

/// The words after `logs`: the site and the options, in any order
/// (`-n 50`, `-n50`, `--lines 50`, `--lines=50`, `-f`, `--follow`,
/// `--access`).
pub fn logs_words(words: &[String], domain: &Domain) -> Result<Logs, String> {
    let (mut follow, mut access, mut lines, mut names) =
        (false, false, DEFAULT_LOG_LINES, Vec::new());
    let count = |w: &str| -> Result<usize, String> {
        match w.parse::<usize>() {
            Ok(n) if n <= MAX_LOG_LINES => Ok(n),
            Ok(_) => Err(format!(
                "logs: -n takes at most {MAX_LOG_LINES} lines; usage: {LOGS_USAGE}"
            )),
            Err(_) => Err(format!(
                "logs: -n takes a number of lines, not {:?}; usage: {LOGS_USAGE}",
                w.chars().take(40).collect::<String>()
            )),
        }
    };
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "-f" | "--follow" => follow = true,
            "--access" => access = true,
            "-n" | "--lines" => {
                let Some(n) = it.next() else {
                    return Err(format!("logs: -n needs a number; usage: {LOGS_USAGE}"));
                };
                lines = count(n)?;
            }
            w if w.starts_with("--lines=") => lines = count(&w["--lines=".len()..])?,
            w if w.starts_with("-n") && w.len() > 2 => lines = count(&w[2..])?,
            w if w.starts_with('-') => {
                return Err(format!(
                    "logs: {:?} is not understood here; usage: {LOGS_USAGE}",
                    w.chars().take(40).collect::<String>()
                ));
            }
            _ => names.push(w),
        }
    }
    let [name] = names.as_slice() else {
        return Err(format!("logs: name one site; usage: {LOGS_USAGE}"));
    };
    let site = SiteName::parse(name, domain).map_err(|e| e.to_string())?;
    Ok(Logs {
        site,
        lines,
        follow,
        access,
    })
}

/// The exec line as a logs command: None when it is not one.
pub fn parse_logs(line: &str, domain: &Domain) -> Option<Result<Logs, String>> {
    let words = shell_words::split(line).ok()?;
    let (command, rest) = words.split_first()?;
    (command == "logs").then(|| logs_words(rest, domain))
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
        assert!(e.contains("toppcloud config"), "{e}");
        let e = parse("git-receive-pack '../etc'", d).unwrap_err();
        assert!(e.contains("invalid site name"), "{e}");
        let e = parse("git-receive-pack 'unterminated", d).unwrap_err();
        assert!(e.contains("cannot parse command"), "{e}");
    }

    #[test]
    fn rollback_and_activate_name_a_site_and_a_release() {
        let d = &crate::names::Domain::localhost();
        let blog = SiteName::parse("blog", d).unwrap();
        assert_eq!(
            parse("rollback blog", d).unwrap(),
            Request::Rollback(blog.clone())
        );
        assert_eq!(
            parse("rollback 'blog.localhost'", d).unwrap(),
            Request::Rollback(blog.clone())
        );
        assert_eq!(
            parse("activate blog.localhost 12", d).unwrap(),
            Request::Activate {
                site: blog.clone(),
                release: ReleaseId::new(12)
            }
        );
        assert_eq!(parse("activate blog 3", d).unwrap().site(), &blog);
        for (line, why) in [
            ("rollback", "usage: rollback SITE"),
            ("rollback blog 2", "usage: rollback SITE"),
            ("rollback ../etc", "invalid site name"),
            ("activate blog", "usage: activate SITE RELEASE"),
            ("activate blog 1 2", "usage: activate SITE RELEASE"),
            ("activate blog 0", "greater than 0"),
            ("activate blog 007", "leading zeros"),
            ("activate blog -1", "whole number"),
            ("activate blog ../1", "whole number"),
            ("activate -oX 1", "invalid site name"),
        ] {
            let e = parse(line, d).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn lifecycle_lines_name_a_site() {
        let d = &crate::names::Domain::localhost();
        let blog = SiteName::parse("blog", d).unwrap();
        assert_eq!(
            parse("disable blog", d).unwrap(),
            Request::Disable(blog.clone())
        );
        assert_eq!(
            parse("enable 'blog.localhost'", d).unwrap(),
            Request::Enable(blog.clone())
        );
        assert_eq!(
            parse("destroy blog --yes", d).unwrap(),
            Request::Destroy {
                site: blog.clone(),
                data: false
            }
        );
        assert_eq!(
            parse("destroy --data --yes blog.localhost", d).unwrap(),
            Request::Destroy {
                site: blog,
                data: true
            }
        );
        for (line, why) in [
            ("disable", "usage: disable SITE"),
            ("disable a b", "usage: disable SITE"),
            ("enable", "usage: enable SITE"),
            ("disable ../etc", "invalid site name"),
            ("destroy blog", "add --yes to confirm"),
            ("destroy blog --data", "add --yes to confirm"),
            ("destroy --yes", "name one site"),
            ("destroy a b --yes", "name one site"),
            ("destroy blog --yes --force", "not understood"),
            ("destroy ../etc --yes", "invalid site name"),
        ] {
            let e = parse(line, d).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    fn config(line: &str) -> Result<(SiteName, ConfigAction), String> {
        match parse(line, &crate::names::Domain::localhost())? {
            Request::Config { site, action } => Ok((site, action)),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn config_lines_name_a_site_and_an_action() {
        let d = &crate::names::Domain::localhost();
        let blog = SiteName::parse("blog", d).unwrap();
        assert_eq!(blog.as_str(), "blog.localhost");
        assert_eq!(
            config("config blog").unwrap(),
            (blog.clone(), ConfigAction::List { values: false })
        );
        assert_eq!(
            config("config blog.localhost --values").unwrap(),
            (blog.clone(), ConfigAction::List { values: true })
        );
        // Shell-split: a quoted value keeps its spaces and quotes.
        assert_eq!(
            config("config blog set GREETING='hello world' DEBUG=0 Q=\"it's\"").unwrap(),
            (
                blog.clone(),
                ConfigAction::Change(ConfigChange::Set(vec![
                    ("GREETING".into(), "hello world".into()),
                    ("DEBUG".into(), "0".into()),
                    ("Q".into(), "it's".into()),
                ]))
            )
        );
        assert_eq!(
            config("config blog unset DEBUG GREETING").unwrap(),
            (
                blog,
                ConfigAction::Change(ConfigChange::Unset(vec!["DEBUG".into(), "GREETING".into()]))
            )
        );
        for (line, why) in [
            ("config", "name a site"),
            ("config ../etc", "invalid site name"),
            ("config blog set lower=1", "not a config var name"),
            ("config blog set SITE=x", "set by the node"),
            ("config blog set", "name at least one"),
            ("config blog drop X", "not a config command"),
            ("config blog --values set X=1", "usage: config SITE"),
            ("config blog --delete", "usage: config SITE"),
            ("config blog 'unterminated", "cannot parse command"),
        ] {
            let e = parse(line, d).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn report_lines_name_what_they_show() {
        let d = &crate::names::Domain::localhost();
        let blog = SiteName::parse("blog", d).unwrap();
        assert_eq!(parse_report("git-receive-pack blog", d), None);
        assert_eq!(parse_report("config blog", d), None);
        assert_eq!(parse_report("'unterminated", d), None);
        assert_eq!(
            parse_report("status", d),
            Some(Ok(Report::Status { json: false }))
        );
        assert_eq!(
            parse_report("status --json", d),
            Some(Ok(Report::Status { json: true }))
        );
        assert_eq!(
            parse_report("releases blog.localhost", d),
            Some(Ok(Report::Releases {
                site: blog.clone(),
                json: false
            }))
        );
        assert_eq!(
            parse_report("releases --json 'blog'", d),
            Some(Ok(Report::Releases {
                site: blog,
                json: true
            }))
        );
        for (line, why) in [
            ("status blog", "status takes no site"),
            ("status --all", "usage: status [--json]"),
            ("releases", "name one site"),
            ("releases a b", "name one site"),
            ("releases ../etc", "invalid site name"),
            (
                "releases blog --oProxyCommand=x",
                "usage: releases SITE [--json]",
            ),
        ] {
            let e = parse_report(line, d).unwrap().unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn logs_lines_name_a_site_and_what_to_show() {
        let d = &crate::names::Domain::localhost();
        let blog = SiteName::parse("blog", d).unwrap();
        assert_eq!(parse_logs("status", d), None);
        assert_eq!(
            parse_logs("logs blog", d),
            Some(Ok(Logs {
                site: blog.clone(),
                lines: DEFAULT_LOG_LINES,
                follow: false,
                access: false
            }))
        );
        for line in [
            "logs -f -n 50 --access blog.localhost",
            "logs blog --follow --lines=50 --access",
            "logs --access blog -n50 -f",
            "logs blog --lines 50 --access -f",
        ] {
            assert_eq!(
                parse_logs(line, d),
                Some(Ok(Logs {
                    site: blog.clone(),
                    lines: 50,
                    follow: true,
                    access: true
                })),
                "{line}"
            );
        }
        for (line, why) in [
            ("logs", "name one site"),
            ("logs a b", "name one site"),
            ("logs ../etc", "invalid site name"),
            ("logs blog -n", "-n needs a number"),
            ("logs blog -n x", "takes a number of lines"),
            ("logs blog -n -5", "takes a number of lines"),
            ("logs blog -n 10001", "at most 10000"),
            ("logs blog --oProxyCommand=x", "usage: logs SITE"),
        ] {
            let e = parse_logs(line, d).unwrap().unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn domains_lines_name_a_site_and_a_host() {
        let d = &crate::names::Domain::localhost();
        let blog = SiteName::parse("blog", d).unwrap();
        assert_eq!(
            parse("domains blog", d).unwrap(),
            Request::Domains {
                site: blog.clone(),
                action: DomainsAction::List
            }
        );
        assert_eq!(
            parse("domains blog add WWW.blog.example.com", d).unwrap(),
            Request::Domains {
                site: blog.clone(),
                action: DomainsAction::Add(HostName::parse("www.blog.example.com").unwrap())
            }
        );
        for (line, why) in [
            ("domains", "name a site"),
            ("domains blog add", "usage: domains SITE"),
            ("domains blog add '*.example.com'", "wildcards"),
            ("domains blog remove 10.0.0.1", "an IP address"),
            ("domains blog add a..b", "empty label"),
            ("domains blog drop x.example.com", "usage"),
            ("domains ../etc", "invalid site name"),
        ] {
            let e = parse(line, d).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }
}
