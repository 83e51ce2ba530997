//! Disable, enable and destroy: a disabled site's hosts answer the node's
//! 503 maintenance page while its releases stay (a deploy still goes live,
//! behind the page), enable brings the live release back; destroy removes
//! the site's routes, releases and repository and keeps its files unless
//! asked, leaving every other site served. Through the node, the laptop
//! and the SSH door, with the key's site rights.

use crate::support::{App, Node, git};
use crate::support::{Laptop, ssh};

/// Asserts `host` answers the maintenance page.
fn assert_maintenance(node: &Node, host: &str) {
    let a = node.get(host, "/");
    assert_eq!(a.code, 503, "GET http://{host}/: {}", a.body);
    assert!(a.body.contains("Down for maintenance"), "{}", a.body);
    assert_eq!(a.header("retry-after"), Some("600"), "{:?}", a.headers);
}

/// The `disabled` flag of the site in the node's API, `GET /sites`.
fn api_disabled(node: &Node, site: &str) -> Option<bool> {
    let a = node.http_request(
        "GET",
        "/sites",
        &[("Authorization", "Bearer lifecycle-token")],
        None,
    );
    assert_eq!(a.code, 200, "GET /sites: {}", a.body);
    let sites: serde_json::Value = serde_json::from_str(&a.body).expect("JSON from GET /sites");
    sites
        .as_array()
        .or_else(|| sites["sites"].as_array())
        .expect("a list of sites")
        .iter()
        .find(|s| s["site"] == site)
        .and_then(|s| s["disabled"].as_bool())
}

#[test]
fn disable_serves_the_maintenance_page_and_enable_brings_the_live_release_back() {
    let node = Node::start_with("[http]\nadmin_token = \"lifecycle-token\"\n");
    let app = App::new();
    for body in ["v1\n", "v2\n"] {
        app.set_plain("blog", 1, body);
        node.deploy("blog", &app).success();
    }
    node.deploy("other", &App::plain("other", 1, "other\n"))
        .success();

    node.node_cmd(&["disable", "blog"])
        .success()
        .stdout_has("blog.localhost is disabled");
    for host in ["blog.localhost", "prev.blog.localhost", "1.blog.localhost"] {
        assert_maintenance(&node, host);
    }
    assert_eq!(node.body("other.localhost"), "other\n");
    assert_eq!(api_disabled(&node, "blog.localhost"), Some(true));
    assert_eq!(api_disabled(&node, "other.localhost"), Some(false));
    // Releases stay; disabling again says so.
    assert_eq!(node.releases("blog.localhost"), ["1", "2"]);
    node.node_cmd(&["disable", "blog.localhost"])
        .success()
        .stdout_has("already disabled");
    // Other sites get no Retry-After.
    assert_eq!(node.get("other.localhost", "/").header("retry-after"), None);

    // A deploy still goes live, behind the page.
    app.set_plain("blog", 1, "v3\n");
    node.deploy("blog", &app)
        .success()
        .stdout_has("blog.localhost is disabled");
    assert_maintenance(&node, "blog.localhost");
    assert_eq!(node.releases("blog.localhost"), ["1", "2", "3"]);

    node.node_cmd(&["enable", "blog"])
        .success()
        .stdout_has("blog.localhost is enabled");
    assert_eq!(node.body("blog.localhost"), "v3\n");
    assert_eq!(api_disabled(&node, "blog.localhost"), Some(false));
    assert_eq!(node.body("prev.blog.localhost"), "v2\n");
    node.node_cmd(&["enable", "blog"])
        .success()
        .stdout_has("already enabled");

    // From a laptop and through the SSH door.
    let key = node.authorized_key("laptop");
    let laptop = Laptop::new(&node, &key);
    laptop
        .toppcloud(&["disable", "blog.localhost"])
        .success()
        .stderr_has("blog.localhost is disabled");
    assert_maintenance(&node, "blog.localhost");
    laptop
        .toppcloud(&["status"])
        .success()
        .stdout_has("disabled (maintenance page)");
    ssh(&node, &key, "enable blog").success();
    assert_eq!(node.body("blog.localhost"), "v3\n");

    // A key limited to another site may not disable this one.
    let other = node.limited_key("other", "other.localhost");
    let refused = "site blog.localhost not found, or this key (other) may not use it";
    Laptop::new(&node, &other)
        .toppcloud(&["disable", "blog.localhost"])
        .failure()
        .stderr_has(refused);
    ssh(&node, &other, "disable blog")
        .failure()
        .stderr_has(refused);
    assert_eq!(node.body("blog.localhost"), "v3\n");

    // A site never deployed cannot be disabled.
    node.node_cmd(&["disable", "nosuch"])
        .failure()
        .stderr_has("site nosuch.localhost not found");
}

#[test]
fn destroy_removes_the_site_and_keeps_its_files_unless_asked() {
    let mut node = Node::start();
    let key = node.authorized_key("laptop");
    let laptop = Laptop::new(&node, &key);
    node.deploy("other", &App::plain("other", 1, "other\n"))
        .success();
    let pushed = App::plain("blog", 1, "pushed\n");
    pushed.git_init(&key);
    git(&pushed.path, &key, &["push", &node.ssh_url("blog"), "main"]).success();
    assert_eq!(node.body("blog.localhost"), "pushed\n");
    let site_dir = node.data.join("sites/blog.localhost");
    let repo = node.data.join("repos/blog.localhost.git");
    assert!(repo.join("HEAD").exists());
    std::fs::create_dir_all(site_dir.join("files")).unwrap();
    std::fs::write(site_dir.join("files/keep.txt"), "kept\n").unwrap();

    // Refused without --yes, through every door; nothing changes.
    for r in [
        laptop.toppcloud(&["destroy", "blog.localhost"]),
        ssh(&node, &key, "destroy blog"),
        node.node_cmd(&["destroy", "blog"]),
    ] {
        r.failure().stderr_has("add --yes to confirm");
    }
    assert_eq!(node.body("blog.localhost"), "pushed\n");

    // A key limited to another site may not destroy this one.
    let other = node.limited_key("other", "other.localhost");
    let refused = "site blog.localhost not found, or this key (other) may not use it";
    Laptop::new(&node, &other)
        .toppcloud(&["destroy", "blog.localhost", "--yes"])
        .failure()
        .stderr_has(refused);
    ssh(&node, &other, "destroy blog --yes")
        .failure()
        .stderr_has(refused);
    assert_eq!(node.body("blog.localhost"), "pushed\n");

    laptop
        .toppcloud(&["destroy", "blog.localhost", "--yes"])
        .success()
        .stderr_has("blog.localhost is destroyed; kept: its files directory");
    assert_eq!(node.get("blog.localhost", "/").code, 404);
    assert_eq!(node.get("prev.blog.localhost", "/").code, 404);
    assert!(node.releases("blog.localhost").is_empty());
    assert!(!repo.exists(), "the repository is still there");
    assert!(!site_dir.join("site.toml").exists());
    assert!(!site_dir.join("releases").exists());
    assert!(!site_dir.join("venvs").exists());
    assert_eq!(
        std::fs::read_to_string(site_dir.join("files/keep.txt")).unwrap(),
        "kept\n"
    );
    assert_eq!(node.body("other.localhost"), "other\n");

    // A restart neither brings the site back nor removes its files.
    node.stop();
    node.spawn();
    assert_eq!(node.get("blog.localhost", "/").code, 404);
    assert!(site_dir.join("files/keep.txt").exists());
    assert_eq!(node.body("other.localhost"), "other\n");

    // The name can be pushed again; --data removes the files too.
    git(&pushed.path, &key, &["push", &node.ssh_url("blog"), "main"]).success();
    assert_eq!(node.body("blog.localhost"), "pushed\n");
    node.node_cmd(&["destroy", "blog", "--yes", "--data"])
        .success()
        .stdout_has("blog.localhost is destroyed");
    assert_eq!(node.get("blog.localhost", "/").code, 404);
    assert!(!site_dir.exists(), "the site's directory is still there");
    assert!(!repo.exists());
    assert_eq!(node.body("other.localhost"), "other\n");
    node.node_cmd(&["destroy", "blog", "--yes"])
        .failure()
        .stderr_has("site blog.localhost not found");
}
