//! The node process itself: readiness, its API's health check, running as
//! an unprivileged user, and a clean stop that takes its Apache with it.

use std::path::Path;
use std::time::Duration;

use crate::support::{App, Node, wait_for};

#[test]
fn healthz_answers_once_ready() {
    let node = Node::start();
    let health = node.http_request("GET", "/healthz", &[], None);
    assert_eq!(health.code_body(), (200, "ok\n"));
}

#[test]
fn stopping_the_node_stops_its_apache() {
    let mut node = Node::start();
    node.deploy("blog", &App::plain("blog", 1, "x\n")).success();
    let pid: u32 = std::fs::read_to_string(node.data.join("apache/run/httpd.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    node.stop();
    wait_for("Apache to exit", Duration::from_secs(30), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(!node.data.join("node.ready").exists());
}

#[test]
fn a_node_runs_as_an_unprivileged_user() {
    if unsafe { libc::geteuid() } != 0 {
        // Not root: every other test already runs the node unprivileged.
        return;
    }
    // nobody:nogroup on Debian.
    let node = Node::start_as(Some((65534, 65534)), "");
    node.deploy("blog", &App::plain("blog", 1, "unprivileged\n"))
        .success();
    assert_eq!(node.body("blog.localhost"), "unprivileged\n");
    let pid = std::fs::read_to_string(node.data.join("apache/run/httpd.pid")).expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert!(
        uid_line.contains("65534"),
        "Apache runs as the node's user: {uid_line}"
    );
    // It cannot give sites accounts of their own, and says so, once.
    let log = node.log();
    assert_eq!(
        log.matches("cannot create an account per site").count(),
        1,
        "{log}"
    );
}

#[test]
fn missing_apache_names_the_packages_to_install() {
    let err = crate::support::node_run_refused("[apache]\napache2 = \"/nonexistent/apache2\"\n");
    assert!(err.contains("/nonexistent/apache2 not found"), "{err}");
    assert!(
        err.contains("apt-get install apache2 libapache2-mod-wsgi-py3"),
        "{err}"
    );
}

#[test]
fn the_node_sees_only_the_tests_environment_and_no_index() {
    let node = Node::start();
    let environ = std::fs::read(format!("/proc/{}/environ", node.pid())).expect("environ");
    let mut names: Vec<String> = environ
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let home = names
        .iter()
        .find_map(|v| v.strip_prefix("HOME="))
        .expect("HOME")
        .to_string();
    assert!(
        Path::new(&home).starts_with(node.dir.path()),
        "the node's HOME is {home}, not the test's own"
    );
    names.iter_mut().for_each(|v| {
        v.truncate(v.find('=').unwrap_or(v.len()));
    });
    names.sort();
    assert_eq!(names, ["HOME", "LANG", "PATH", "TOPPCLOUD_LOG"]);
    // Packages never come from an index in these tests.
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(&node.config).expect("config")).expect("toml");
    assert_eq!(config["build"]["no_index"].as_bool(), Some(true));
}
