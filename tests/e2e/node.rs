//! The node process itself: readiness, its API's health check, running as
//! an unprivileged user, and a clean stop that takes its Apache with it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{App, Node, run_with_timeout, wait_for};

#[test]
fn healthz_answers_once_ready() {
    let node = Node::start();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "%{http_code}"])
        .arg(format!("http://{}/healthz", node.http));
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n200");
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
