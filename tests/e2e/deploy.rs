//! Deploys that succeed: what `host`, `N.host` and `prev.host` serve.

use std::time::Duration;

use crate::support::{Answer, App, Background, Gate, Node};

#[test]
fn first_deploy_serves_host_and_version_host() {
    let node = Node::start();
    let app = App::plain("blog", 1, "blog v1\n");
    node.deploy("blog", &app)
        .success()
        .stdout_has("live at http://blog.localhost:")
        .stdout_has("(release 1, version 1)");
    assert_eq!(node.body("blog.localhost"), "blog v1\n");
    assert_eq!(node.body("1.blog.localhost"), "blog v1\n");
    let code = node.get("prev.blog.localhost", "/").code;
    assert_eq!(code, 404, "nothing was live before the first deploy");
}

#[test]
fn three_deploys_rotate_host_prev_and_versions() {
    let node = Node::start();
    let app = App::plain("blog", 1, "first\n");
    node.deploy("blog", &app).success();
    app.set_plain("blog", 1, "second\n");
    node.deploy("blog", &app)
        .success()
        .stdout_has("(release 2, version 1)");
    assert_eq!(node.body("blog.localhost"), "second\n");
    assert_eq!(node.body("prev.blog.localhost"), "first\n");
    assert_eq!(
        node.body("1.blog.localhost"),
        "second\n",
        "N.host is the newest of version N"
    );

    app.set_plain("blog", 2, "third\n");
    node.deploy("blog", &app)
        .success()
        .stdout_has("(release 3, version 2)");
    assert_eq!(node.body("blog.localhost"), "third\n");
    assert_eq!(node.body("prev.blog.localhost"), "second\n");
    assert_eq!(node.body("2.blog.localhost"), "third\n");
    assert_eq!(node.body("1.blog.localhost"), "second\n");
}

#[test]
fn unknown_hosts_get_the_nodes_404_page() {
    let node = Node::start();
    node.deploy("blog", &App::plain("blog", 1, "blog\n"))
        .success();
    for host in ["other.localhost", "3.blog.localhost", "localhost"] {
        let Answer { code, body, .. } = node.get(host, "/");
        assert_eq!(code, 404, "{host}");
        assert!(
            body.contains("No site is served at this address"),
            "{host}: {body}"
        );
        assert!(
            !body.contains("blog"),
            "{host} must not show another site: {body}"
        );
    }
}

#[test]
fn two_sites_deploy_side_by_side() {
    let node = Node::start();
    let a = App::plain("alpha", 1, "alpha\n");
    let b = App::plain("beta", 1, "beta\n");
    std::thread::scope(|s| {
        let ra = s.spawn(|| node.deploy("alpha", &a));
        let rb = s.spawn(|| node.deploy("beta.localhost", &b));
        ra.join().expect("alpha").success();
        rb.join().expect("beta").success();
    });
    assert_eq!(node.body("alpha.localhost"), "alpha\n");
    assert_eq!(node.body("beta.localhost"), "beta\n");
    // A later deploy of one leaves the other exactly as it was.
    a.set_plain("alpha", 1, "alpha 2\n");
    node.deploy("alpha", &a).success();
    assert_eq!(node.body("alpha.localhost"), "alpha 2\n");
    assert_eq!(node.body("beta.localhost"), "beta\n");
}

#[test]
fn two_deploys_to_one_site_take_turns() {
    let node = Node::start();
    let first = App::plain("blog", 1, "one\n");
    // The first deploy's app waits at a gate while it is imported, so the
    // second deploy arrives while the first is still running; the gate
    // opens once the second says it waits its turn.
    let gate = Gate::new();
    first.file("main.py", &gate.main_py("one\n"));
    let second = App::plain("blog", 1, "two\n");
    let waiting = "waiting: another deploy to blog.localhost is in progress";
    std::thread::scope(|s| {
        let r1 = s.spawn(|| node.deploy("blog", &first));
        gate.wait_reached(Duration::from_secs(60));
        let mut r2 = Background::start(
            "the second deploy",
            node.deploy_command("blog", &second.path),
        );
        r2.wait_printed(waiting, Duration::from_secs(60));
        gate.open();
        r2.finish(Duration::from_secs(240))
            .success()
            .stdout_has(waiting);
        r1.join().expect("first").success();
    });
    assert_eq!(node.body("blog.localhost"), "two\n");
    assert_eq!(node.body("prev.blog.localhost"), "one\n");
}

#[test]
fn old_releases_beyond_keep_releases_are_pruned() {
    let node = Node::start_with("[build]\nkeep_releases = 2\n");
    let app = App::plain("blog", 1, "r\n");
    for i in 1..=4 {
        app.set_plain("blog", 1, &format!("r{i}\n"));
        node.deploy("blog", &app).success();
    }
    assert_eq!(node.releases("blog.localhost"), vec!["3", "4"]);
    assert_eq!(node.body("blog.localhost"), "r4\n");
    assert_eq!(node.body("prev.blog.localhost"), "r3\n");
}

#[test]
fn the_app_sees_its_environment() {
    let node = Node::start();
    let app = App::plain("envy", 1, "");
    app.file(
        "main.py",
        "import os\n\
         def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         keys = ['SITE', 'CANONICAL_HOST', 'TOPPCLOUD']\n    \
         return [('\\n'.join('%s=%s' % (k, os.environ.get(k)) for k in keys) + '\\n').encode()]\n",
    );
    node.deploy("envy", &app).success();
    let body = node.body("envy.localhost");
    assert!(body.contains("SITE=envy.localhost\n"), "{body}");
    assert!(body.contains("CANONICAL_HOST=envy.localhost\n"), "{body}");
    assert!(body.contains("TOPPCLOUD=toppcloud/"), "{body}");
}

#[test]
fn a_full_pool_grows_by_cells_and_each_site_keeps_its_own() {
    // One cell in the pool: the first site takes it; the second finds no
    // free cell and the pool grows, while the first keeps serving.
    let node = Node::start_with("[apache]\ncells = 1\n");
    node.deploy("one", &App::plain("one", 1, "one\n"))
        .success()
        .stdout_lacks("growing");
    node.deploy("two", &App::plain("two", 1, "two\n"))
        .success()
        .stdout_has("every cell of the pool is taken: growing it to 2 cells");
    // Back-to-back deploys of one site go through its own spares.
    for i in 2..5 {
        node.deploy("one", &App::plain("one", 1, &format!("one v{i}\n")))
            .success()
            .stdout_lacks("growing");
    }
    assert_eq!(node.body("one.localhost"), "one v4\n");
    assert_eq!(node.body("prev.one.localhost"), "one v3\n");
    assert_eq!(node.body("two.localhost"), "two\n");
}
