//! Every door's deploy gets a record: its last line names the deploy id,
//! and `GET /deploys/{id}` shows its state, who asked and its whole log.
//! A stopping node finishes or abandons what it was doing, and says which.

use std::time::{Duration, Instant};

use crate::support::{
    App, BIN, Gate, Node, clean_command, client_command, git, run_with_timeout, wait_for,
};

const TOKEN: &str = "records-token";

fn node() -> Node {
    Node::start_with(&format!("[http]\nadmin_token = {TOKEN:?}\n"))
}

/// The deploy id a door's last lines name (`...; deploy ID` or
/// `deploy ID failed: ...`).
fn deploy_id(text: &str) -> String {
    let from_live = text
        .lines()
        .filter_map(|l| l.split("; deploy ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
        .next_back();
    let from_failed = text
        .lines()
        .filter_map(|l| l.split("deploy ").nth(1))
        .filter_map(|r| r.split_once(" failed:").map(|(id, _)| id.to_string()))
        .next_back();
    from_live
        .or(from_failed)
        .unwrap_or_else(|| panic!("no deploy id in:\n{text}"))
}

/// `GET /deploys/{id}` with the admin token, as JSON.
fn record(node: &Node, id: &str) -> serde_json::Value {
    let mut cmd = client_command("curl");
    cmd.args(["-sS", "--max-time", "20", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("http://{}/deploys/{id}", node.http));
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "GET /deploys/{id}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_recorded(node: &Node, id: &str, status: &str, by: &str, log_has: &str) {
    let r = record(node, id);
    assert_eq!(r["status"], status, "{r:#}");
    let asked: Vec<&str> = r["requested_by"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert!(asked.iter().any(|a| a.contains(by)), "{r:#}");
    let log: Vec<&str> = r["log"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert!(log.iter().any(|l| l.contains(log_has)), "{r:#}");
}

#[test]
fn node_deploy_is_recorded_with_its_log() {
    let node = node();
    let run = node.deploy("blog", &App::plain("blog", 1, "one\n"));
    run.success();
    let id = deploy_id(&run.stdout);
    assert_recorded(&node, &id, "live", "node deploy", "-----> staged");
    // A failed one too, with the reason as its message.
    let bad = App::plain("blog", 1, "x\n");
    bad.file("app.ini", "[production]\nversion = one\n");
    let run = node.deploy("blog", &bad);
    run.failure().stderr_has("failed: app.ini:");
    let id = deploy_id(&run.stderr);
    let r = record(&node, &id);
    assert_eq!(r["status"], "failed", "{r:#}");
    assert!(
        r["message"]
            .as_str()
            .unwrap_or_default()
            .contains("app.ini:"),
        "{r:#}"
    );
    // And the site lists both, newest first.
    let mut cmd = client_command("curl");
    cmd.args(["-sS", "--max-time", "20", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("http://{}/sites/blog.localhost", node.http));
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    let site: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let ids: Vec<&str> = site["deploys"]
        .as_array()
        .expect("deploys")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids.first(), Some(&id.as_str()), "{site:#}");
    assert_eq!(ids.len(), 2, "{site:#}");
}

#[test]
fn a_push_is_recorded_with_its_log() {
    let node = node();
    let key = node.authorized_key("pusher");
    let app = App::plain("blog", 1, "pushed\n");
    app.git_init(&key);
    git(
        &app.path,
        &key,
        &["remote", "add", "toppcloud", &node.ssh_url("blog")],
    )
    .success();
    let push = git(&app.path, &key, &["push", "toppcloud", "main"]);
    push.success();
    let id = deploy_id(&push.stderr);
    assert_recorded(&node, &id, "live", "git push by pusher", "-----> staged");
}

#[test]
fn an_upload_is_recorded_with_its_log() {
    let node = node();
    let key = node.authorized_key("laptop");
    let home = tempfile::tempdir().expect("home");
    let conf = home.path().join(".config/toppcloud");
    std::fs::create_dir_all(&conf).expect("config dir");
    std::fs::write(
        conf.join("config.toml"),
        format!(
            "default_node = \"dev\"\n[nodes.dev]\nurl = \"ssh://toppcloud@127.0.0.1:{}\"\nkey = {key:?}\n\
             ssh = \"ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR\"\n",
            node.ssh_port
        ),
    )
    .expect("client config");
    let app = App::plain("blog", 1, "uploaded\n");
    let mut cmd = clean_command(BIN, home.path());
    cmd.args(["update"])
        .arg(&app.path)
        .arg("--host=blog.localhost");
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let id = deploy_id(&text);
    assert_recorded(
        &node,
        &id,
        "live",
        "toppcloud update by laptop",
        "-----> staged",
    );
}

/// A deploy of version 2 of `blog` whose import waits at `gate`, run in
/// the background; returns its output when it ends.
fn gated_deploy(node: &Node, gate: &Gate) -> std::thread::JoinHandle<std::process::Output> {
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = blog\nversion = 2\nrunner = main.py\n",
    )
    .file("main.py", &gate.main_py("two\n"));
    let mut cmd = node.command();
    cmd.args(["node", "deploy", "blog"])
        .arg(&app.path)
        .arg("--config")
        .arg(&node.config);
    std::thread::spawn(move || {
        let _app = app;
        run_with_timeout(cmd, Duration::from_secs(120))
    })
}

#[test]
fn a_stopping_node_finishes_the_deploy_in_flight_and_says_so() {
    let mut node = node();
    node.deploy("blog", &App::plain("blog", 1, "one\n"))
        .success();
    let gate = Gate::new();
    let deployer = gated_deploy(&node, &gate);
    gate.wait_reached(Duration::from_secs(60));
    // Told to stop while the release loads: the node stops taking
    // connections (its ready file goes), then waits for the deploy.
    node.signal_stop();
    let ready = node.data.join("node.ready");
    wait_for(
        "the node to begin stopping",
        Duration::from_secs(30),
        || (!ready.exists()).then_some(()),
    );
    gate.open();
    node.wait_exit();
    let out = deployer.join().expect("deployer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = node.log();
    assert!(log.contains("waiting up to"), "{log}");
    assert!(log.contains("every deploy in flight finished"), "{log}");
    node.spawn();
    assert_eq!(node.body("blog.localhost"), "two\n");
}

#[test]
fn a_stopping_node_abandons_what_outlasts_its_stop_timeout_and_says_so() {
    let mut node = Node::start_with(&format!(
        "stop_timeout = 1\n[http]\nadmin_token = {TOKEN:?}\n[apache]\nrequest_timeout = 5\n"
    ));
    node.deploy("blog", &App::plain("blog", 1, "one\n"))
        .success();
    // The gate never opens: the deploy outlasts the stop timeout.
    let gate = Gate::new();
    let deployer = gated_deploy(&node, &gate);
    gate.wait_reached(Duration::from_secs(60));
    let asked = Instant::now();
    node.stop();
    assert!(
        asked.elapsed() < Duration::from_secs(25),
        "the node took {:?} to stop",
        asked.elapsed()
    );
    let out = deployer.join().expect("deployer");
    assert!(!out.status.success());
    let log = node.log();
    assert!(log.contains("abandoned deploy"), "{log}");
    // The live release never changed, and the half-made one is gone.
    node.spawn();
    assert_eq!(node.body("blog.localhost"), "one\n");
    assert_eq!(node.releases("blog.localhost"), ["1"]);
}
