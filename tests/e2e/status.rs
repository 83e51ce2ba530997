//! `toppcloud status` and `toppcloud releases SITE`: read-only reports, on
//! the node (`toppcloud node status|releases`), from a laptop through the
//! node's SSH door with the key's site rights, and by a bare ssh; `--json`
//! for scripts, a table for people.

use crate::support::{App, Laptop, Node, Run, git, ssh};

fn json(run: &Run) -> serde_json::Value {
    run.success();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: not JSON:\n{}", run.stdout))
}

/// An app that answers 500 at `/` once a file named `fail-now` sits next
/// to its main.py.
fn failable_app() -> App {
    let app = App::plain("two", 1, "");
    app.file(
        "main.py",
        "import os\n\
         def application(environ, start_response):\n    \
         if os.path.exists(os.path.join(os.path.dirname(__file__), 'fail-now')):\n        \
         start_response('500 Internal Server Error', [('Content-Type', 'text/plain')])\n        \
         return [b'broken\\n']\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [b'two\\n']\n",
    );
    app
}

fn site<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| s["site"] == name)
        .unwrap_or_else(|| panic!("no {name} in {status:#}"))
}

fn names(status: &serde_json::Value) -> Vec<String> {
    status["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| s["site"].as_str().expect("site").to_string())
        .collect()
}

#[test]
fn status_and_releases_report_live_prev_health_and_respect_a_keys_sites() {
    let node = Node::start();
    node.deploy("one", &App::plain("one", 1, "one v1\n"))
        .success();
    node.deploy("one", &App::plain("one", 2, "one v2\n"))
        .success();
    node.deploy("two", &failable_app()).success();
    assert_eq!(node.body("one.localhost"), "one v2\n");

    // On the node: every site, its live and previous release, healthy.
    let status = json(&node.node_cmd(&["status", "--json"]));
    assert_eq!(names(&status), ["one.localhost", "two.localhost"]);
    let one = site(&status, "one.localhost");
    assert_eq!(one["live"]["id"], 2, "{status:#}");
    assert_eq!(one["live"]["version"], 2, "{status:#}");
    assert_eq!(one["prev"]["id"], 1, "{status:#}");
    assert_eq!(one["health"], "ok", "{status:#}");
    assert_eq!(
        one["url"],
        format!("http://one.localhost:{}/", node.apache_port)
    );
    assert_eq!(one["last_deploy"]["state"], "live", "{status:#}");
    assert_eq!(one["last_deploy"]["release"], 2, "{status:#}");
    let two = site(&status, "two.localhost");
    assert_eq!(two["live"]["id"], 1, "{status:#}");
    assert_eq!(two["prev"], serde_json::Value::Null, "{status:#}");
    assert_eq!(two["health"], "ok", "{status:#}");

    let releases = json(&node.node_cmd(&["releases", "one", "--json"]));
    assert_eq!(releases["site"], "one.localhost");
    let rows: Vec<(u64, String, u64)> = releases["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().expect("id"),
                r["state"].as_str().expect("state").to_string(),
                r["version"].as_u64().expect("version"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [(2, "live".to_string(), 2), (1, "prev".to_string(), 1)]
    );
    let who = releases["releases"][0]["source"].as_str().expect("source");
    assert!(who.starts_with("node deploy "), "{releases:#}");
    assert!(
        releases["releases"][0]["created"].is_string(),
        "{releases:#}"
    );

    // For people: a table naming the live release.
    let text = node.node_cmd(&["releases", "one.localhost"]);
    text.success().stdout_has("RELEASE  STATE");
    let live_line = text
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("live"))
        .unwrap_or_else(|| panic!("no live line:\n{}", text.stdout));
    assert!(live_line.starts_with("2 "), "{}", text.stdout);
    node.node_cmd(&["status"])
        .success()
        .stdout_has("HEALTH")
        .stdout_has("one.localhost");
    node.node_cmd(&["releases", "nothing"])
        .failure()
        .stderr_has("site nothing.localhost not found");

    // The live app of two starts answering 500: its health says so.
    let app_dir = node.data.join("sites/two.localhost/releases/1/app");
    std::fs::write(app_dir.join("fail-now"), "").expect("write fail-now");
    assert_eq!(node.get("two.localhost", "/").code, 500);
    let status = json(&node.node_cmd(&["status", "--json"]));
    assert_eq!(
        site(&status, "two.localhost")["health"],
        "failing (500)",
        "{status:#}"
    );
    assert_eq!(site(&status, "one.localhost")["health"], "ok");

    // From a laptop whose key may use one.localhost alone.
    let limited = node.limited_key("limited", "one.localhost");
    let laptop = Laptop::new(&node, &limited);
    let seen = json(&laptop.toppcloud(&["status", "--json"]));
    assert_eq!(names(&seen), ["one.localhost"], "{seen:#}");
    assert_eq!(site(&seen, "one.localhost")["live"]["id"], 2);
    let mine = json(&laptop.toppcloud(&["releases", "one", "--json"]));
    assert_eq!(mine["releases"][0]["state"], "live");
    let refused = "site two.localhost not found, or this key (limited) may not use it";
    laptop
        .toppcloud(&["releases", "two.localhost"])
        .failure()
        .stderr_has(refused)
        .stdout_lacks("RELEASE");
    laptop
        .toppcloud(&["releases", "two.localhost", "--json"])
        .failure()
        .stderr_has(refused);
    // And the same by hand through the door, as with dokku.
    let by_hand = ssh(&node, &limited, "releases one.localhost --json");
    assert_eq!(json(&by_hand)["releases"][1]["state"], "prev");
    ssh(&node, &limited, "releases two")
        .failure()
        .stderr_has(refused);
    ssh(&node, &limited, "status")
        .success()
        .stdout_has("one.localhost")
        .stdout_lacks("two.localhost");

    // A key for every site sees both, failing health and all.
    let key = node.authorized_key("laptop");
    let full = Laptop::new(&node, &key);
    let all = json(&full.toppcloud(&["status", "--json"]));
    assert_eq!(names(&all), ["one.localhost", "two.localhost"]);
    full.toppcloud(&["status"])
        .success()
        .stdout_has("failing (500)");
    full.toppcloud(&["releases", "two"])
        .success()
        .stdout_has("live");

    // A pushed release names its commit and who pushed it.
    let pushed = App::plain("three", 1, "three\n");
    pushed.git_init(&key);
    git(
        &pushed.path,
        &key,
        &["push", &node.ssh_url("three"), "main"],
    )
    .success();
    let head = pushed.head(&key);
    let three = json(&full.toppcloud(&["releases", "three", "--json"]));
    let row = &three["releases"][0];
    assert_eq!(row["commit"], head[..12], "{three:#}");
    assert_eq!(row["state"], "live", "{three:#}");
    assert!(
        row["source"].as_str().expect("source").contains("laptop"),
        "{three:#}"
    );
    full.toppcloud(&["releases", "three"])
        .success()
        .stdout_has(&head[..12]);
}
