//! The slot pool grows without restarting the Apache that clients reach:
//! with one cell to start with, every new site grows the pool, and the
//! cells a growth adds are served by an Apache of their own on a loopback
//! port (`apache/shard-K/`), which the clients' Apache forwards to. So
//! adding sites fails no request on the sites already there; a site in a
//! grown part of the pool deploys, rolls back and outlives a node restart
//! with its daemons; and a client talking straight to a grown part's
//! Apache cannot claim HTTPS or another client's address.

use std::path::PathBuf;
use std::time::Instant;

use crate::support::{App, Load, Node, Request};

/// One cell to start with: the second site already grows the pool.
const ONE_CELL: &str = "[apache]\ncells = 1\n";

/// The directory of the Apache the pool's `k`-th growth added.
fn shard(node: &Node, k: usize) -> PathBuf {
    node.data.join(format!("apache/shard-{k}"))
}

/// The loopback port the Apache of the `k`-th growth listens on, from its
/// `listen` file (`127.0.0.1:PORT`).
fn shard_port(node: &Node, k: usize) -> u16 {
    let path = shard(node, k).join("listen");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the pool grew without an Apache of its own)",
            path.display()
        )
    });
    let (host, port) = text
        .trim()
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{}: not HOST:PORT: {text:?}", path.display()));
    assert_eq!(host, "127.0.0.1", "{}: {text:?}", path.display());
    port.parse()
        .unwrap_or_else(|e| panic!("{}: port {port:?}: {e}", path.display()))
}

/// The lines of Apache's error log that say it restarted (graceful:
/// SIGUSR1, AH00493; hard: SIGHUP, AH00492).
fn restart_lines(error_log: &str) -> Vec<&str> {
    error_log
        .lines()
        .filter(|l| l.contains("Doing graceful restart") || l.contains("Attempting to restart"))
        .collect()
}

#[test]
fn growing_the_pool_fails_no_request_on_the_sites_already_there() {
    let node = Node::start_with(ONE_CELL);
    node.deploy("a", &App::plain("a", 1, "a\n")).success();
    assert_eq!(node.body("a.localhost"), "a\n");

    // Each of these sites needs a cell the pool does not have yet: the
    // pool grows 1 -> 2 -> 3 -> 4 -> 6 cells, four growths in all.
    let load = Load::start(node.apache_port, "a.localhost", "a\n", 2);
    let started = Instant::now();
    for site in ["b", "c", "d", "e", "f"] {
        let body = format!("{site}\n");
        node.deploy(site, &App::plain(site, 1, &body)).success();
        assert_eq!(node.body(&format!("{site}.localhost")), body);
    }
    let count = load.finish();
    eprintln!(
        "a.localhost while 5 sites were added in {:?}: {count}",
        started.elapsed()
    );
    let apache_log =
        std::fs::read_to_string(node.data.join("apache/logs/error.log")).unwrap_or_default();
    let restarts = restart_lines(&apache_log);
    assert!(
        count.failed.is_empty(),
        "requests failed on a.localhost while the pool grew: {count}\n\
         Apache restarted {} time(s):\n{}",
        restarts.len(),
        restarts.join("\n")
    );
    // Five deploys take seconds; two threads on kept-alive connections
    // make hundreds of requests a second even on a busy machine.
    assert!(count.sent >= 100, "too little load to tell: {count}");

    for site in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(node.body(&format!("{site}.localhost")), format!("{site}\n"));
    }
    assert!(
        restarts.is_empty(),
        "the clients' Apache restarted as the pool grew:\n{}",
        restarts.join("\n")
    );
    shard_port(&node, 1);
}

/// An app answering its `tag` and the pid of the daemon that serves it.
fn pid_app(name: &str, version: u32, tag: &str) -> App {
    let app = App::plain(name, version, "unused\n");
    app.file(
        "main.py",
        &format!(
            "import os\n\n\
             def application(environ, start_response):\n    \
             body = ({tag:?} + ' ' + str(os.getpid()) + '\\n').encode()\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [body]\n"
        ),
    );
    app
}

#[test]
fn a_site_in_a_grown_part_of_the_pool_deploys_rolls_back_and_survives_a_node_restart() {
    let mut node = Node::start_with(ONE_CELL);
    node.deploy("a", &pid_app("a", 1, "a")).success();
    // b takes the cell the first growth adds.
    node.deploy("b", &pid_app("b", 1, "v1")).success();
    let b1 = node.body("b.localhost");
    assert!(b1.starts_with("v1 "), "{b1}");
    node.deploy("b", &pid_app("b", 2, "v2")).success();
    let b2 = node.body("b.localhost");
    assert!(b2.starts_with("v2 "), "{b2}");
    assert_eq!(
        node.body("prev.b.localhost"),
        b1,
        "prev runs in its warm daemon"
    );
    assert!(node.body("1.b.localhost").starts_with("v1 "));
    assert!(node.body("2.b.localhost").starts_with("v2 "));

    // Rollback: v1 live again at once, in the daemon that served it.
    node.node_cmd(&["rollback", "b"])
        .success()
        .stdout_has(&format!(
            "live at http://b.localhost:{}/ (release 1, version 1)",
            node.apache_port
        ));
    assert_eq!(node.body("b.localhost"), b1);
    assert_eq!(node.body("prev.b.localhost"), b2);

    // A node that restarts leaves every daemon of every part of the pool
    // running.
    let a = node.body("a.localhost");
    node.kill9();
    node.spawn();
    assert_eq!(node.body("a.localhost"), a, "a's daemon was restarted");
    assert_eq!(
        node.body("b.localhost"),
        b1,
        "b's live daemon was restarted"
    );
    assert_eq!(
        node.body("prev.b.localhost"),
        b2,
        "b's previous daemon was restarted"
    );
    // The restarted node still drives the grown part: a deploy goes live.
    node.deploy("b", &pid_app("b", 3, "v3")).success();
    assert!(node.body("b.localhost").starts_with("v3 "));
    assert_eq!(node.body("prev.b.localhost"), b1);
    assert_eq!(node.body("a.localhost"), a);

    shard_port(&node, 1);
}

/// An app answering what it was told of the request: scheme, client
/// address, and whether a forwarding header (or the hop's secret) reached
/// it.
fn environ_app() -> App {
    App::wsgi(
        "env",
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         seen = [h for h in ('HTTP_X_FORWARDED_FOR', 'HTTP_X_FORWARDED_PROTO',\n                         \
         'HTTP_X_TOPPCLOUD_HOP') if h in environ]\n    \
         words = [environ['wsgi.url_scheme'], environ.get('REMOTE_ADDR', '-'),\n             \
         ','.join(seen) or 'none']\n    \
         return [(' '.join(words) + '\\n').encode()]\n",
    )
}

/// `request` with the headers a client forges to pass for the clients'
/// Apache forwarding an HTTPS request from another address.
fn forged(request: Request) -> Request {
    request
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-For", "203.0.113.9")
        .header("X-Toppcloud-Hop", "0123456789abcdef0123456789abcdef")
}

#[test]
fn attack_a_request_straight_to_a_grown_apache_cannot_claim_https_or_a_client_address() {
    let node = Node::start_with(ONE_CELL);
    node.deploy("a", &App::plain("a", 1, "a\n")).success();
    // b takes the cell the first growth adds.
    node.deploy("b", &environ_app()).success();
    let plain = "http 127.0.0.1 none\n";
    assert_eq!(node.body("b.localhost"), plain);

    // The client's own address reaches the app in the grown part, not the
    // address of the Apache that forwarded the request.
    let a = node.site("b.localhost", "/").interface("127.0.0.2").send();
    assert_eq!(a.code_body(), (200, "http 127.0.0.2 none\n"));

    // Through the clients' Apache: what a client claims is not passed on
    // (an app that trusts X-Forwarded-Proto would take plain HTTP for
    // HTTPS), and the hop's secret never reaches an app.
    let a = forged(node.site("b.localhost", "/")).send();
    assert_eq!(
        a.code_body(),
        (200, plain),
        "through the node's port, a client's forged headers reached the app"
    );
    let a = node
        .site("b.localhost", "/")
        .header("X-Toppcloud-Hop", "0123456789abcdef0123456789abcdef")
        .send();
    assert_eq!(
        a.code_body(),
        (200, plain),
        "through the node's port, a client's X-Toppcloud-Hop reached the app"
    );

    // Straight to the grown part's Apache on its loopback port, with a
    // guessed secret: taken for what it is, a plain HTTP request from
    // loopback.
    let port = shard_port(&node, 1);
    let direct = Request::get(&format!("http://b.localhost:{port}/"))
        .resolve(&format!("b.localhost:{port}:127.0.0.1"));
    let a = forged(direct).send();
    assert_eq!(
        a.code_body(),
        (200, plain),
        "straight to shard 1's port, forged headers were believed or passed on"
    );
}
