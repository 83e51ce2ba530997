//! What must hold of what the node's edge parsers accept, beyond not
//! panicking. Each fuzz target (in `fuzz_targets/`) feeds one parser and
//! calls a check here; the checks re-derive the rules from the outside
//! (a closed grammar for rsync's arguments, a renderer for app.ini) rather
//! than reuse the parser's own code, so that a parser bug cannot hide
//! itself.

use std::path::{Component, Path};

use toppcloud::app_ini::{AppIni, Runner};
use toppcloud::engine::settings::ConfigChange;
use toppcloud::layout::Layout;
use toppcloud::names::{Domain, MAX_SITE_NAME_LEN, SiteName};
use toppcloud::node::exec::{self, ConfigAction, Request};
use toppcloud::node::keys;
use toppcloud::node::upload::{self, Upload};

/// The node's default domain in every target.
/// The domain every target parses names against (a dev node's).
pub fn domain() -> Domain {
    Domain::localhost()
}

/// Where the node would put an upload area; any absolute path will do.
const AREA: &str = "/var/lib/toppcloud/tmp/upload-0123456789abcdef";

/// A site name is a DNS name of bounded length, parses back to itself, and
/// names a directory inside the node's data.
pub fn check_site(site: &SiteName) {
    let name = site.as_str();
    assert!(
        !name.is_empty() && name.len() <= MAX_SITE_NAME_LEN,
        "{name:?}"
    );
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
        "{name:?}"
    );
    assert!(name.split('.').all(|label| !label.is_empty()), "{name:?}");
    assert_eq!(SiteName::parse(name, &domain()).as_ref(), Ok(site));
    let root = Path::new("/var/lib/toppcloud");
    let repo = Layout::new(root.to_path_buf()).repo(site);
    assert!(
        repo.starts_with(root)
            && repo
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{repo:?}"
    );
}

/// The exec line: whatever it is parsed into (a report included) is a valid site, an rsync
/// upload satisfies [`check_upload`], and a config command satisfies
/// [`check_config`].
pub fn check_exec_line(line: &str) {
    if let Some(Ok(exec::Report::Releases { site, .. })) = exec::parse_report(line, &domain()) {
        check_site(&site);
    }
    if let Some(Ok(logs)) = exec::parse_logs(line, &domain()) {
        check_site(&logs.site);
        assert!(logs.lines <= exec::MAX_LOG_LINES, "{line:?}");
    }
    match exec::parse(line, &domain()) {
        Ok(Request::Receive(site)) | Ok(Request::Fetch(site)) => {
            check_site(&site);
            let words = shell_words::split(line).expect("an accepted line splits");
            assert_eq!(words.len(), 2, "{line:?}");
            assert!(
                ["git-receive-pack", "git-upload-pack"].contains(&words[0].as_str()),
                "{line:?}"
            );
        }
        Ok(Request::Rsync(upload)) => {
            let words = shell_words::split(line).expect("an accepted line splits");
            check_upload(&words, &upload);
        }
        Ok(Request::Config { site, action }) => {
            check_site(&site);
            let words = shell_words::split(line).expect("an accepted line splits");
            check_config(&words, &action);
        }
        Ok(Request::Rollback(site)) => {
            check_site(&site);
            let words = shell_words::split(line).expect("an accepted line splits");
            assert_eq!(words.len(), 2, "{line:?}");
            assert_eq!(words[0], "rollback", "{line:?}");
        }
        Ok(Request::Activate { site, release }) => {
            check_site(&site);
            let words = shell_words::split(line).expect("an accepted line splits");
            assert_eq!(words.len(), 3, "{line:?}");
            assert_eq!(words[0], "activate", "{line:?}");
            assert!(release.get() > 0, "{line:?}");
            assert_eq!(words[2], release.to_string(), "{line:?}");
        }
        Ok(Request::Disable(site)) | Ok(Request::Enable(site)) => {
            check_site(&site);
            let words = shell_words::split(line).expect("an accepted line splits");
            assert_eq!(words.len(), 2, "{line:?}");
            assert!(
                ["disable", "enable"].contains(&words[0].as_str()),
                "{line:?}"
            );
        }
        Ok(Request::Destroy { site, data }) => {
            check_site(&site);
            let words = shell_words::split(line).expect("an accepted line splits");
            assert_eq!(words[0], "destroy", "{line:?}");
            // Never without the confirmation; --data only when written.
            assert!(words.iter().any(|w| w == "--yes"), "{line:?}");
            assert_eq!(data, words.iter().any(|w| w == "--data"), "{line:?}");
        }
        Ok(Request::Domains { site, action }) => {
            check_site(&site);
            let words = shell_words::split(line).expect("an accepted line splits");
            assert_eq!(words[0], "domains", "{line:?}");
            match action {
                exec::DomainsAction::List => assert_eq!(words.len(), 2, "{line:?}"),
                exec::DomainsAction::Add(name) | exec::DomainsAction::Remove(name) => {
                    // A host name a certificate can be for: no wildcard,
                    // no IP address, no empty label, nothing but DNS's.
                    let n = name.as_str();
                    assert_eq!(words.len(), 4, "{line:?}");
                    assert_eq!(n, words[3].to_ascii_lowercase(), "{line:?}");
                    assert!(
                        n.contains('.')
                            && n.split('.').all(|l| !l.is_empty())
                            && n.bytes().all(|b| b.is_ascii_lowercase()
                                || b.is_ascii_digit()
                                || b == b'-'
                                || b == b'.')
                            && n.parse::<std::net::Ipv4Addr>().is_err(),
                        "{line:?}"
                    );
                }
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }
}

/// An accepted config command: `config SITE` and then `--values` alone, or
/// `set` with NAME=VALUE words, or `unset` with names, each name an
/// environment variable name the node does not set itself, and each value
/// the client's word after the first `=`, whole.
pub fn check_config(words: &[String], action: &ConfigAction) {
    assert!(words.len() >= 2 && words[0] == "config", "{words:?}");
    let rest = &words[2..];
    let name_ok = |name: &str| {
        !name.is_empty()
            && name.len() <= 128
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !name.starts_with("CONFIG_")
            && !name.starts_with("TOPPCLOUD_")
            && ![
                "SITE",
                "CANONICAL_HOST",
                "TOPPCLOUD",
                "TEMP",
                "TMPDIR",
                "HOME",
                "PATH",
            ]
            .contains(&name)
    };
    match action {
        ConfigAction::List { values } => {
            let expected: &[&str] = if *values { &["--values"] } else { &[] };
            assert_eq!(rest, expected, "{words:?}");
        }
        ConfigAction::Change(ConfigChange::Set(pairs)) => {
            assert_eq!(rest.first().map(String::as_str), Some("set"), "{words:?}");
            assert_eq!(pairs.len(), rest.len() - 1, "{words:?}");
            for ((name, value), word) in pairs.iter().zip(&rest[1..]) {
                assert!(name_ok(name), "{name:?} from {words:?}");
                assert_eq!(word, &format!("{name}={value}"), "{words:?}");
                assert!(!value.contains('\0'), "{words:?}");
            }
        }
        ConfigAction::Change(ConfigChange::Unset(names)) => {
            assert_eq!(rest.first().map(String::as_str), Some("unset"), "{words:?}");
            assert_eq!(names.as_slice(), &rest[1..], "{words:?}");
            assert!(!names.is_empty(), "{words:?}");
            for name in names {
                assert!(name_ok(name), "{name:?} from {words:?}");
            }
        }
    }
}

/// `rsync --server` words: when they parse, check the upload.
pub fn check_rsync_words(words: &[String]) {
    if let Ok(upload) = upload::parse(words, &domain()) {
        check_upload(words, &upload);
    }
}

/// An accepted upload: rsync's arguments are `--server`, words of a closed
/// grammar (the options the node accepts, rebuilt), `.` and the area; no
/// word of the client that is not an option reaches rsync; and the built
/// words parse back to the same upload.
pub fn check_upload(words: &[String], upload: &Upload) {
    check_site(&upload.site);
    let argv: Vec<String> = upload
        .argv(Path::new(AREA))
        .into_iter()
        .map(|w| w.into_string().expect("rsync's arguments are UTF-8"))
        .collect();
    let n = argv.len();
    assert!(n >= 3, "{argv:?}");
    assert_eq!(argv[0], "--server");
    assert_eq!(&argv[n - 2..], [".", AREA], "{argv:?}");
    // Every option the node accepts, once each, plus the short word.
    assert!(n <= 3 + 1 + LONG.len(), "{argv:?}");
    for word in &argv[1..n - 2] {
        assert!(
            is_built_option(word),
            "{word:?} is not an option the node builds (from {words:?})"
        );
    }
    for word in words.iter().skip(2) {
        let bare = !word.starts_with('-') && word != ".";
        assert!(
            !(bare && argv[..n - 1].contains(word)),
            "{word:?} from the client reached rsync: {argv:?}"
        );
    }
    let mut again = vec!["rsync".to_string()];
    again.extend(
        upload
            .argv(Path::new(&format!("{}/", upload.site)))
            .into_iter()
            .map(|w| w.into_string().expect("UTF-8")),
    );
    assert_eq!(
        upload::parse(&again, &domain()).as_ref(),
        Ok(upload),
        "{again:?} from {words:?}"
    );
}

/// Long options the node may pass to rsync, whole.
const LONG: &[&str] = &[
    "--delete",
    "--delete-before",
    "--delete-during",
    "--delete-delay",
    "--delete-after",
    "--delete-excluded",
    "--ignore-errors",
    "--force",
    "--safe-links",
    "--no-implied-dirs",
    "--size-only",
    "--existing",
    "--ignore-existing",
    "--log-format=%i",
    "--log-format=%i%I",
    "--log-format=%o",
    "--log-format=X",
];

/// Short options the node may pass to rsync, before `e`.
const SHORT: &str = "vqunlOWtrcCIxzhi";

/// What may follow `e` (after `.` or `PROTOCOL.SUB`).
const CLIENT_INFO: &str = "iLsfxCIvuV";

fn is_built_option(word: &str) -> bool {
    if LONG.contains(&word) {
        return true;
    }
    for prefix in ["--compress-level=", "--timeout="] {
        if let Some(n) = word.strip_prefix(prefix) {
            return is_number(n, 10);
        }
    }
    let Some(cluster) = word.strip_prefix('-') else {
        return false;
    };
    let (flags, info) = match cluster.split_once('e') {
        Some((flags, info)) => (flags, Some(info)),
        None => (cluster, None),
    };
    !cluster.is_empty()
        && flags.chars().all(|c| SHORT.contains(c))
        && info.is_none_or(is_client_info)
}

fn is_client_info(info: &str) -> bool {
    let letters = match info.strip_prefix('.') {
        Some(letters) => letters,
        None => {
            let Some((protocol, rest)) = info.split_once('.') else {
                return false;
            };
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if !is_number(protocol, 3) || !is_number(&rest[..digits], 3) {
                return false;
            }
            &rest[digits..]
        }
    };
    letters.chars().all(|c| CLIENT_INFO.contains(c))
}

fn is_number(text: &str, digits: usize) -> bool {
    !text.is_empty() && text.len() <= digits && text.bytes().all(|b| b.is_ascii_digit())
}

/// app.ini: errors point at a line of the file; what is accepted obeys the
/// rules the node relies on (names, relative runner paths that exist, URL
/// paths) and, written back out as app.ini, parses to the same thing.
pub fn check_app_ini(text: &str, main_py: bool, other_files: bool) {
    let exists = |path: &str| {
        if path == "main.py" {
            main_py
        } else {
            other_files
        }
    };
    let lines = text.lines().count().max(1);
    let (app, warnings) = match AppIni::parse(text, &exists) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(!e.message.is_empty());
            if let Some(line) = e.line {
                assert!((1..=lines).contains(&line), "line {line} of {lines}: {e}");
            }
            return;
        }
    };
    for w in &warnings {
        assert!((1..=lines).contains(&w.line), "{w}");
    }
    assert!(
        (1..=64).contains(&app.app_name.len())
            && app
                .app_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{:?}",
        app.app_name
    );
    match &app.runner {
        Runner::Python { file, object } => {
            assert!(file.ends_with(".py") && is_safe_relative(file) && exists(file));
            assert!(
                object.split('.').all(|part| {
                    let mut chars = part.chars();
                    chars
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                }),
                "{object:?}"
            );
        }
        Runner::PasteDeploy { file, section } => {
            assert!(file.ends_with(".ini") && is_safe_relative(file) && exists(file));
            assert!(section.as_ref().is_none_or(|s| !s.is_empty()));
        }
        Runner::Static => {}
    }
    for path in &app.update_fetch {
        assert!(
            path.starts_with('/') && !path.contains(char::is_whitespace),
            "{path:?}"
        );
    }
    for task in &app.release_tasks {
        let file = task.argv.first().expect("a task names a file");
        assert!(is_safe_relative(file) && exists(file), "{file:?}");
    }
    for package in &app.packages {
        assert!(
            !package.is_empty() && !package.contains(char::is_whitespace),
            "{package:?}"
        );
    }
    for service in &app.services {
        assert!(!service.name.is_empty());
        assert!((1..=lines).contains(&service.line));
    }
    let rendered = render_app_ini(&app);
    // Services keep their line, which the rendering moves.
    let without_lines = |mut app: AppIni| {
        app.services.iter_mut().for_each(|s| s.line = 0);
        app
    };
    match AppIni::parse(&rendered, &exists) {
        Ok((again, _)) => assert_eq!(without_lines(again), without_lines(app), "{rendered}"),
        Err(e) => panic!("{e}: the app.ini written back does not parse:\n{rendered}"),
    }
}

/// The runner path ends up in Apache's configuration under the app.
fn is_safe_relative(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(|c| c.is_whitespace() || c.is_control())
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// app.ini text for a parsed app, written the plain way.
fn render_app_ini(app: &AppIni) -> String {
    let mut out = String::from("[production]\n");
    out.push_str(&format!("app_name = {}\n", app.app_name));
    if let Some(version) = app.version {
        out.push_str(&format!("version = {version}\n"));
    }
    let runner = match &app.runner {
        Runner::Python { file, object } => format!("{file}#{object}"),
        Runner::PasteDeploy {
            file,
            section: Some(section),
        } => format!("{file}#{section}"),
        Runner::PasteDeploy {
            file,
            section: None,
        } => file.clone(),
        Runner::Static => "static".into(),
    };
    out.push_str(&format!("runner = {runner}\n"));
    if !app.update_fetch.is_empty() || !app.release_tasks.is_empty() {
        out.push_str("update_fetch =\n");
        for task in &app.release_tasks {
            let words: Vec<String> = task
                .argv
                .iter()
                .map(|w| shell_words::quote(w).into_owned())
                .collect();
            out.push_str(&format!("    script:{}\n", words.join(" ")));
        }
        if !app.update_fetch.is_empty() {
            out.push_str(&format!("    {}\n", app.update_fetch.join(" ")));
        }
    }
    if let Some(host) = &app.default_host {
        out.push_str(&format!("default_host = {host}\n"));
    }
    if !app.packages.is_empty() {
        out.push_str(&format!("packages = {}\n", app.packages.join(" ")));
    }
    for service in &app.services {
        let value = service.value.replace('\n', "\n    ");
        out.push_str(&format!("service.{} = {value}\n", service.name));
    }
    out
}

/// One `authorized_keys` line: an accepted key has a name, and written
/// back the way `toppcloud node keys add` writes it, parses to the same
/// key, name and sites.
pub fn check_authorized_keys_line(line: &str) {
    let Ok(key) = keys::parse_line(line) else {
        return;
    };
    assert!(!key.name.is_empty());
    // A refused line (an option the node does not implement) says why.
    let grant = match &key.grant {
        Ok(g) => g,
        Err(why) => {
            assert!(!why.is_empty());
            return;
        }
    };
    let plain_sites = grant.sites.as_ref().is_none_or(|sites| {
        sites.iter().all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"*.-_".contains(&b))
        })
    });
    if !plain_sites || keys::validate_name(&key.name).is_err() {
        return;
    }
    let text = keys::render_line(&key.name, &key.key, grant).expect("a parsed key renders");
    let back = keys::parse_line(&text).expect("a rendered line parses");
    assert_eq!(back.name, key.name, "{text}");
    assert_eq!(back.key.key_data(), key.key.key_data(), "{text}");
    assert_eq!(back.grant.as_ref().ok(), Some(grant), "{text}");
}
