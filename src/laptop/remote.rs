//! Running a command on a node through its SSH door, as `toppcloud config`,
//! `toppcloud rollback` and `toppcloud activate` do: the node's configured ssh command, port and key, and the remote
//! command's words each quoted, so the node splits them back exactly as
//! they were (a value with spaces or quotes survives). What the node prints
//! comes through as it comes; its exit code is the command's.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::laptop::config::Node;
use crate::names::SiteName;
use crate::node::exec;

/// The ssh command that runs `words` on the node.
pub fn command(node: &Node, words: &[String]) -> Result<Command> {
    let argv = node.ssh_argv();
    let Some((program, options)) = argv.split_first().filter(|(p, _)| !p.starts_with('-')) else {
        bail!(
            "the ssh command of {} is empty\nhint: set ssh = \"ssh\" (or leave it out) in the node's entry",
            node.url()
        );
    };
    let line: Vec<String> = words
        .iter()
        .map(|w| shell_words::quote(w).into_owned())
        .collect();
    let mut cmd = Command::new(program);
    cmd.args(options)
        .arg(format!("{}@{}", node.user, node.host))
        .arg(line.join(" "));
    Ok(cmd)
}

/// Runs `words` on the node; the remote command's exit code. When ssh
/// itself fails (255: the node refused the key or cannot be reached), the
/// error says so with a hint instead.
pub fn run(node: &Node, words: &[String]) -> Result<i32> {
    let mut cmd = command(node, words)?;
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{} not found\nhint: apt-get install openssh-client",
                cmd.get_program().to_string_lossy()
            )
        }
        Err(e) => return Err(e).context("cannot run ssh"),
    };
    let status = relay_stderr(&mut child, node, "ssh", |s| s.code() == Some(255))?;
    let code = status.code().unwrap_or(1);
    Ok(code)
}

/// Shows the node's lines (which arrive on stderr) as they come, waits for
/// `child`, and, when `ssh_failed` says the exit status is ssh's own
/// failure, turns the ones that deserve a hint into errors: a key the node
/// refused, a node that cannot be reached.
pub fn relay_stderr(
    child: &mut std::process::Child,
    node: &Node,
    program: &str,
    ssh_failed: impl Fn(&std::process::ExitStatus) -> bool,
) -> Result<std::process::ExitStatus> {
    let mut refused = false;
    let mut unreachable = false;
    if let Some(err) = child.stderr.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            refused |= line.contains("Permission denied");
            unreachable |= line.contains("Connection refused")
                || line.contains("Could not resolve hostname")
                || line.contains("No route to host");
            eprintln!("{line}");
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {program}"))?;
    if ssh_failed(&status) {
        if refused {
            bail!(
                "the node at {} refused this key\nhint: on the node, add it with `toppcloud node keys add NAME KEY.pub`",
                node.url()
            );
        }
        if unreachable {
            bail!("cannot reach the node at {}: is it running?", node.url());
        }
    }
    Ok(status)
}

/// The words of `toppcloud config SITE [--values | set K=V... | unset K...]`
/// after the site, checked here as the node would check them, so a
/// mistake is told before anything (no value either) leaves the laptop.
pub fn config_words(site: &str, values: bool, change: &[String]) -> Result<Vec<String>> {
    SiteName::check_shape(site).map_err(|e| anyhow::anyhow!("{e}"))?;
    let words = if values {
        vec!["--values".to_string()]
    } else {
        change.to_vec()
    };
    exec::config_action(&words).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(words)
}

/// `toppcloud config`: the node lists (stdout) or deploys the change
/// (progress on stderr, ending with the deploy's summary); its exit code.
pub fn config(site: &str, values: bool, change: &[String], node: &Node) -> Result<i32> {
    let words = config_words(site, values, change)?;
    let mut remote = vec!["config".to_string(), site.to_string()];
    remote.extend(words);
    run(node, &remote)
}

/// `toppcloud rollback SITE` and `toppcloud activate SITE ID` (`release`
/// Some): checked here as the node would check them, then run through the
/// node's door; its progress and summary on stderr, its exit code.
pub fn make_live(site: &str, release: Option<&str>, node: &Node) -> Result<i32> {
    let words = release_words(site, release)?;
    run(node, &words)
}

/// The remote words of a rollback or an activation.
pub fn release_words(site: &str, release: Option<&str>) -> Result<Vec<String>> {
    SiteName::check_shape(site).map_err(|e| anyhow::anyhow!("{e}"))?;
    let words = match release {
        None => vec!["rollback".to_string(), site.to_string()],
        Some(id) => {
            crate::names::ReleaseId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
            vec!["activate".to_string(), site.to_string(), id.to_string()]
        }
    };
    Ok(words)
}

/// `toppcloud disable|enable SITE` and `toppcloud destroy SITE --yes
/// [--data]`: checked here as the node would check them (a destroy
/// without `--yes` never leaves the laptop), then run through the node's
/// door; its progress and summary on stderr, its exit code.
pub fn lifecycle(words: &[String], node: &Node) -> Result<i32> {
    check_lifecycle(words)?;
    run(node, words)
}

/// A lifecycle command's words, refused as the node would refuse them.
pub fn check_lifecycle(words: &[String]) -> Result<()> {
    if let Some(site) = words.get(1) {
        SiteName::check_shape(site).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    exec::lifecycle_command(words, &crate::names::Domain::localhost())
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The remote words of `destroy`.
pub fn destroy_words(site: &str, yes: bool, data: bool) -> Vec<String> {
    let mut words = vec!["destroy".to_string(), site.to_string()];
    if yes {
        words.push("--yes".to_string());
    }
    if data {
        words.push("--data".to_string());
    }
    words
}

/// `toppcloud status [--json]`: the node's report of every site this key
/// may use (stdout); its exit code.
pub fn status(json: bool, node: &Node) -> Result<i32> {
    run(node, &report_words("status", None, json)?)
}

/// `toppcloud releases SITE [--json]`: the site's kept releases (stdout);
/// its exit code.
pub fn releases(site: &str, json: bool, node: &Node) -> Result<i32> {
    run(node, &report_words("releases", Some(site), json)?)
}

/// The remote words of `toppcloud logs`, checked here as the node would
/// check them.
pub fn logs_words(site: &str, follow: bool, lines: usize, access: bool) -> Result<Vec<String>> {
    SiteName::check_shape(site).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut words = vec![
        "logs".to_string(),
        site.to_string(),
        "-n".to_string(),
        lines.to_string(),
    ];
    if follow {
        words.push("-f".to_string());
    }
    if access {
        words.push("--access".to_string());
    }
    exec::logs_words(&words[1..], &crate::names::Domain::localhost())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(words)
}

/// `toppcloud domains SITE [add NAME | remove NAME]`: checked here as the
/// node checks it, then run through the node's door; its exit code.
pub fn domains(site: &str, change: &[String], node: &Node) -> Result<i32> {
    SiteName::check_shape(site).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut words = vec!["domains".to_string(), site.to_string()];
    words.extend(change.iter().cloned());
    exec::domains_command(&words, &crate::names::Domain::localhost())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    run(node, &words)
}

/// The remote words of a report command, the site's shape checked first.
fn report_words(command: &str, site: Option<&str>, json: bool) -> Result<Vec<String>> {
    let mut words = vec![command.to_string()];
    if let Some(site) = site {
        SiteName::check_shape(site).map_err(|e| anyhow::anyhow!("{e}"))?;
        words.push(site.to_string());
    }
    if json {
        words.push("--json".to_string());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_remote_line_splits_back_into_the_same_words() {
        let mut node = Node::parse_url("ssh://deploy@node.example.com:2201").unwrap();
        node.key = Some("/home/me/my keys/id".into());
        node.ssh = words(&["ssh", "-o", "BatchMode=yes"]);
        let sent = words(&[
            "config",
            "blog.example.com",
            "set",
            "GREETING=hello world",
            "Q=it's \"quoted\" $HOME `id`; rm -rf /",
            "EMPTY=",
        ]);
        let cmd = command(&node, &sent).unwrap();
        assert_eq!(cmd.get_program(), "ssh");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[..args.len() - 1],
            words(&[
                "-o",
                "BatchMode=yes",
                "-p",
                "2201",
                "-i",
                "/home/me/my keys/id",
                "-o",
                "IdentitiesOnly=yes",
                "deploy@node.example.com",
            ])
        );
        let line = args.last().unwrap();
        assert_eq!(shell_words::split(line).unwrap(), sent);
        // And the node reads it as the same change.
        let d = crate::names::Domain::localhost();
        match exec::parse(line, &d).unwrap() {
            exec::Request::Config {
                action:
                    exec::ConfigAction::Change(crate::engine::settings::ConfigChange::Set(pairs)),
                ..
            } => assert_eq!(pairs[0].1, "hello world"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn logs_words_are_checked_and_read_back_by_the_node() {
        let d = crate::names::Domain::localhost();
        let w = logs_words("blog", true, 20, true).unwrap();
        assert_eq!(w, ["logs", "blog", "-n", "20", "-f", "--access"]);
        let line: Vec<String> = w
            .iter()
            .map(|x| shell_words::quote(x).into_owned())
            .collect();
        let logs = exec::parse_logs(&line.join(" "), &d).unwrap().unwrap();
        assert_eq!(logs.site.as_str(), "blog.localhost");
        assert_eq!((logs.lines, logs.follow, logs.access), (20, true, true));
        let e = logs_words("blog", false, 20_000, false).unwrap_err();
        assert!(e.to_string().contains("at most 10000"), "{e}");
        assert!(logs_words("../etc", false, 5, false).is_err());
    }

    #[test]
    fn release_words_are_checked_and_read_back_by_the_node() {
        let d = crate::names::Domain::localhost();
        let w = release_words("blog.example.com", None).unwrap();
        assert_eq!(w, ["rollback", "blog.example.com"]);
        assert!(matches!(
            exec::parse(&shell_words::join(&w), &d).unwrap(),
            exec::Request::Rollback(_)
        ));
        let w = release_words("blog", Some("12")).unwrap();
        assert_eq!(w, ["activate", "blog", "12"]);
        assert!(matches!(
            exec::parse(&shell_words::join(&w), &d).unwrap(),
            exec::Request::Activate { .. }
        ));
        assert!(release_words("blog", Some("x")).is_err());
        assert!(release_words("blog", Some("0")).is_err());
        assert!(release_words("-oProxyCommand=x", None).is_err());
    }

    #[test]
    fn lifecycle_words_are_checked_before_they_leave() {
        assert!(check_lifecycle(&words(&["disable", "blog.example.com"])).is_ok());
        assert!(check_lifecycle(&words(&["enable", "blog"])).is_ok());
        assert!(check_lifecycle(&destroy_words("blog", true, true)).is_ok());
        let e = check_lifecycle(&destroy_words("blog", false, true)).unwrap_err();
        assert!(e.to_string().contains("--yes"), "{e}");
        assert!(check_lifecycle(&words(&["disable", "-oProxyCommand=x"])).is_err());
    }

    #[test]
    fn report_words_are_what_the_node_reads() {
        let d = crate::names::Domain::localhost();
        let line = |w: Vec<String>| {
            let quoted: Vec<String> = w
                .iter()
                .map(|w| shell_words::quote(w).into_owned())
                .collect();
            exec::parse_report(&quoted.join(" "), &d).unwrap().unwrap()
        };
        assert_eq!(
            line(report_words("status", None, true).unwrap()),
            exec::Report::Status { json: true }
        );
        assert_eq!(
            line(report_words("releases", Some("blog"), false).unwrap()),
            exec::Report::Releases {
                site: SiteName::parse("blog", &d).unwrap(),
                json: false
            }
        );
        assert!(report_words("releases", Some("-oProxyCommand=x"), false).is_err());
    }

    #[test]
    fn config_words_are_checked_before_anything_is_sent() {
        assert_eq!(config_words("blog", true, &[]).unwrap(), ["--values"]);
        assert!(config_words("blog", false, &[]).unwrap().is_empty());
        let set = words(&["set", "DEBUG=0"]);
        assert_eq!(config_words("blog.example.com", false, &set).unwrap(), set);
        let e = config_words("blog", false, &words(&["set", "lower=1"])).unwrap_err();
        assert!(e.to_string().contains("not a config var name"), "{e}");
        let e = config_words("-oProxyCommand=x", false, &[]).unwrap_err();
        assert!(!e.to_string().is_empty());
        let mut node = Node::parse_url("ssh://u@h").unwrap();
        node.ssh = Vec::new();
        assert!(command(&node, &set).is_err());
    }
}
