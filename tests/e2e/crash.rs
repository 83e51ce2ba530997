//! A node killed with SIGKILL mid-deploy: on restart the live release is
//! still served, the half-made release is gone, and nothing stays locked.

use std::time::Duration;

use crate::support::{App, Gate, Node};

#[test]
fn kill_9_during_a_deploy_leaves_the_live_release() {
    let mut node = Node::start();
    let app = App::plain("blog", 1, "stable\n");
    node.deploy("blog", &app).success();

    // A release whose import waits at a gate the test never opens: the
    // node is killed while it checks the release.
    let gate = Gate::new();
    app.file("main.py", &gate.main_py("never\n"));
    std::thread::scope(|s| {
        let deploy = s.spawn(|| node.deploy("blog", &app));
        gate.wait_reached(Duration::from_secs(60));
        assert!(node.data.join("sites/blog.localhost/releases/2").exists());
        unsafe { libc::kill(node.pid() as i32, libc::SIGKILL) };
        let r = deploy.join().expect("deploy thread");
        assert_ne!(
            r.code,
            Some(0),
            "the interrupted deploy must not report success"
        );
    });
    node.kill9();
    // Apache outlived the node and still serves the live release.
    assert_eq!(node.body("blog.localhost"), "stable\n");

    node.spawn();
    assert_eq!(node.body("blog.localhost"), "stable\n");
    assert_eq!(
        node.releases("blog.localhost"),
        vec!["1"],
        "the half-made release is cleaned up"
    );
    app.set_plain("blog", 1, "after the crash\n");
    node.deploy("blog", &app).success().stdout_has("(release 2");
    assert_eq!(node.body("blog.localhost"), "after the crash\n");
    assert_eq!(node.body("prev.blog.localhost"), "stable\n");
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let node = Node::start();
    let out = crate::support::run_with_timeout(
        {
            let mut c = node.command();
            c.args(["node", "run", "--config"]).arg(&node.config);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another node is running on"), "{err}");
}

/// A node that restarts (systemd after a crash) finds its Apache serving
/// the configuration it would write: it must not restart Apache, which
/// would restart every site's daemons (their requests in flight fail, and
/// with hundreds of sites every site stalls for seconds).
#[test]
fn a_restarted_node_leaves_every_daemon_running() {
    let mut node = Node::start();
    let app = App::plain("blog", 1, "unused\n");
    app.file(
        "main.py",
        "import os\n\ndef application(environ, start_response):\n    body = str(os.getpid()).encode()\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [body]\n",
    );
    node.deploy("blog", &app).success();
    let daemon = node.body("blog.localhost");
    assert!(daemon.parse::<u32>().is_ok(), "{daemon}");

    node.kill9();
    node.spawn();
    node.wait_logged("Apache runs the current configuration already: not restarted");
    assert_eq!(
        node.body("blog.localhost"),
        daemon,
        "the live daemon was restarted with the node"
    );
    // The node still drives the pool it found: a deploy goes live.
    app.set_plain("blog", 1, "after the restart\n");
    node.deploy("blog", &app).success();
    assert_eq!(node.body("blog.localhost"), "after the restart\n");
}
