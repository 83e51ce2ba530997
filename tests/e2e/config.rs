//! Config vars: `toppcloud config SITE ...` from a laptop through the
//! node's SSH door, and `toppcloud node config ...` on the node. A change
//! is a new release of the live code with the new environment; values are
//! shown only when asked for, and never reach the node's log, its deploy
//! records or its API.

use std::path::PathBuf;

use crate::support::{App, Laptop, Node, deploy_id, ssh};

const TOKEN: &str = "config-token";

fn node() -> Node {
    Node::start_with(&format!("[http]\nadmin_token = {TOKEN:?}\n"))
}

/// An app answering with the config vars it sees (`-` for a missing one).
fn env_app() -> App {
    let app = App::plain("blog", 1, "");
    app.file(
        "main.py",
        "import os\n\
         def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         keys = ['GREETING', 'DEBUG']\n    \
         return [(' '.join('%s=%s' % (k, os.environ.get(k, '-')) for k in keys) + '\\n').encode()]\n",
    );
    app
}

/// An API answer (admin token) as text, and as JSON.
fn api(node: &Node, path: &str) -> (String, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let a = node.http_request("GET", path, &[("Authorization", &auth)], None);
    assert_eq!(a.code, 200, "GET {path}: {}", a.body);
    (a.body.clone(), a.json())
}

fn secrets_file(node: &Node) -> PathBuf {
    node.data.join("secrets/blog.localhost.config.toml")
}

#[test]
fn config_set_makes_a_new_release_with_the_new_values_and_keeps_them_out_of_sight() {
    let node = node();
    let key = node.authorized_key("laptop");
    let laptop = Laptop::new(&node, &key);
    node.deploy("blog", &env_app()).success();
    assert_eq!(node.body("blog.localhost"), "GREETING=- DEBUG=-\n");

    // `toppcloud config blog.localhost set GREETING='hello world' DEBUG=0`
    let set = laptop.toppcloud(&[
        "config",
        "blog.localhost",
        "set",
        "GREETING=hello world",
        "DEBUG=0",
    ]);
    set.success()
        .stderr_has(
            "-----> config set GREETING, DEBUG by laptop: a new release of release 1's code",
        )
        .stderr_has(&format!(
            "live at http://blog.localhost:{}/ (release 2, version 1); deploy ",
            node.apache_port
        ))
        .stderr_lacks("hello world");
    assert_eq!(
        node.body("blog.localhost"),
        "GREETING=hello world DEBUG=0\n"
    );
    // The previous release keeps its own environment: a rollback target.
    assert_eq!(node.body("prev.blog.localhost"), "GREETING=- DEBUG=-\n");

    // Names only, unless the values are asked for.
    let list = laptop.toppcloud(&["config", "blog.localhost"]);
    list.success();
    assert_eq!(list.stdout, "DEBUG\nGREETING\n");
    let values = laptop.toppcloud(&["config", "blog", "--values"]);
    values.success();
    assert_eq!(values.stdout, "DEBUG=0\nGREETING=hello world\n");

    // The values are kept in the node's secrets directory, root's alone.
    use std::os::unix::fs::PermissionsExt;
    let kept = secrets_file(&node);
    assert!(
        std::fs::read_to_string(&kept)
            .expect("read")
            .contains("hello world")
    );
    let mode = std::fs::metadata(&kept).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The deploy record names who changed which names, never the values.
    let id = deploy_id(&set.stderr);
    let (text, record) = api(&node, &format!("/deploys/{id}"));
    assert_eq!(record["status"], "live", "{record:#}");
    assert!(
        text.contains("config set GREETING, DEBUG by laptop"),
        "{record:#}"
    );
    assert!(!text.contains("hello world"), "{record:#}");
    let (site, _) = api(&node, "/sites/blog.localhost");
    assert!(!site.contains("hello world"), "{site}");

    // unset: another release without it.
    laptop
        .toppcloud(&["config", "blog.localhost", "unset", "DEBUG"])
        .success()
        .stderr_has("-----> config unset DEBUG by laptop")
        .stderr_has("(release 3, version 1)");
    assert_eq!(
        node.body("blog.localhost"),
        "GREETING=hello world DEBUG=-\n"
    );
    assert_eq!(
        node.body("prev.blog.localhost"),
        "GREETING=hello world DEBUG=0\n"
    );
    let list = laptop.toppcloud(&["config", "blog.localhost"]);
    list.success();
    assert_eq!(list.stdout, "GREETING\n");

    let log = node.log();
    assert!(
        log.contains("config set GREETING, DEBUG by laptop"),
        "{log}"
    );
    assert!(
        !log.contains("hello world"),
        "the node's log shows a value:\n{log}"
    );
}

#[test]
fn node_config_changes_and_lists_on_the_node() {
    let node = node();
    node.deploy("blog", &env_app()).success();
    node.config_cmd(&["blog"])
        .success()
        .stderr_has("blog.localhost has no config vars");
    let set = node.config_cmd(&["blog", "set", "GREETING=hello world"]);
    set.success()
        .stdout_has("-----> config set GREETING by node config")
        .stdout_has("(release 2, version 1); deploy ")
        .stdout_lacks("hello world");
    assert_eq!(
        node.body("blog.localhost"),
        "GREETING=hello world DEBUG=-\n"
    );
    let (record, _) = api(&node, &format!("/deploys/{}", deploy_id(&set.stdout)));
    assert!(
        record.contains("config set GREETING by node config"),
        "{record}"
    );
    assert!(!record.contains("hello world"), "{record}");
    let list = node.config_cmd(&["blog.localhost"]);
    list.success();
    assert_eq!(list.stdout, "GREETING\n");
    let values = node.config_cmd(&["blog", "--values"]);
    values.success();
    assert_eq!(values.stdout, "GREETING=hello world\n");
    node.config_cmd(&["blog", "unset", "GREETING"]).success();
    assert_eq!(node.body("blog.localhost"), "GREETING=- DEBUG=-\n");
    assert!(!node.log().contains("hello world"), "{}", node.log());
}

#[test]
fn config_is_refused_with_the_reason_and_nothing_deploys() {
    let node = node();
    node.deploy("blog", &env_app()).success();

    // A key limited to another site may not even look.
    let other = node.limited_key("other", "other.localhost");
    let limited = Laptop::new(&node, &other);
    let refused = "site blog.localhost not found, or this key (other) may not use it";
    for args in [
        &["config", "blog.localhost", "set", "GREETING=hi"][..],
        &["config", "blog.localhost", "--values"][..],
    ] {
        limited.toppcloud(args).failure().stderr_has(refused);
    }

    // A name the node refuses: told by the laptop before anything is sent,
    // by the node's door, and by `node config`.
    let key = node.authorized_key("laptop");
    let laptop = Laptop::new(&node, &key);
    let reason = "\"lower\" is not a config var name";
    laptop
        .toppcloud(&["config", "blog.localhost", "set", "lower=1"])
        .failure()
        .stderr_has(reason);
    ssh(&node, &key, "config blog set lower=1")
        .failure()
        .stderr_has(reason);
    node.config_cmd(&["blog", "set", "lower=1"])
        .failure()
        .stderr_has(reason);
    ssh(&node, &key, "config blog set SITE=evil")
        .failure()
        .stderr_has("SITE is set by the node itself");

    // A site with nothing live has no code to deploy again.
    laptop
        .toppcloud(&["config", "new.localhost", "set", "GREETING=hi"])
        .failure()
        .stderr_has("new.localhost has no live release yet: deploy it first");
    node.config_cmd(&["new", "set", "GREETING=hi"])
        .failure()
        .stderr_has("new.localhost has no live release yet: deploy it first");

    // Nothing deployed, nothing stored.
    assert_eq!(node.releases("blog.localhost"), ["1"]);
    assert_eq!(node.body("blog.localhost"), "GREETING=- DEBUG=-\n");
    assert!(!secrets_file(&node).exists());
    assert!(node.releases("new.localhost").is_empty());
}
