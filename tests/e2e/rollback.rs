//! Rollback and activate: the previous release made live again at once
//! (its daemon is warm), or any kept release loaded into a spare, checked
//! and switched, without a rebuild. Each is a deploy of its own: its turn,
//! its record, its summary; refused with the reason when there is nothing
//! to go to or the key may not use the site.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{App, Node};
use crate::support::{Laptop, deploy_id, ssh};

const TOKEN: &str = "rollback-token";

fn node() -> Node {
    Node::start_with(&format!(
        "[http]\nadmin_token = {TOKEN:?}\n[build]\nkeep_releases = 3\n"
    ))
}

fn deploy_body(node: &Node, app: &App, body: &str) {
    app.set_plain("blog", 1, body);
    node.deploy("blog", app).success();
}

fn api(node: &Node, path: &str) -> (String, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let a = node.http_request("GET", path, &[("Authorization", &auth)], None);
    assert_eq!(a.code, 200, "GET {path}: {}", a.body);
    (a.body.clone(), a.json())
}

#[test]
fn rollback_swaps_live_and_prev_and_activate_makes_a_kept_release_live() {
    let node = node();
    let app = App::new();
    for body in ["v1\n", "v2\n", "v3\n"] {
        deploy_body(&node, &app, body);
    }
    let live = |release: u32| {
        format!(
            "live at http://blog.localhost:{}/ (release {release}, version 1); deploy ",
            node.apache_port
        )
    };

    // prev becomes live, live becomes prev; served as soon as it returns.
    let back = node.node_cmd(&["rollback", "blog"]);
    back.success().stdout_has(&live(2));
    assert_eq!(node.body("blog.localhost"), "v2\n");
    assert_eq!(node.body("prev.blog.localhost"), "v3\n");
    assert_eq!(node.releases("blog.localhost"), ["1", "2", "3"]);
    let (text, record) = api(&node, &format!("/deploys/{}", deploy_id(&back.stdout)));
    assert_eq!(record["status"], "live", "{record:#}");
    assert!(text.contains("rollback by node"), "{record:#}");

    // Again: back where it was.
    node.node_cmd(&["rollback", "blog.localhost"])
        .success()
        .stdout_has(&live(3));
    assert_eq!(node.body("blog.localhost"), "v3\n");
    assert_eq!(node.body("prev.blog.localhost"), "v2\n");

    // An older kept release: loaded, checked, switched; the live one is prev.
    let act = node.node_cmd(&["activate", "blog", "1"]);
    act.success()
        .stdout_has("loading kept release 1")
        .stdout_has(&live(1));
    assert_eq!(node.body("blog.localhost"), "v1\n");
    assert_eq!(node.body("prev.blog.localhost"), "v3\n");
    let (text, _) = api(&node, &format!("/deploys/{}", deploy_id(&act.stdout)));
    assert!(text.contains("activate 1 by node"), "{text}");
    node.node_cmd(&["activate", "blog", "1"])
        .success()
        .stdout_has("release 1 is live already: nothing to do");

    // Unknown ids and pruned ones are refused with the reason.
    node.node_cmd(&["activate", "blog", "99"])
        .failure()
        .stderr_has("blog.localhost has no release 99 (kept: 1, 2, 3)");
    deploy_body(&node, &app, "v4\n");
    deploy_body(&node, &app, "v5\n");
    // Live 5, prev 4; 1 and 2 pruned (keep_releases = 3).
    assert_eq!(node.releases("blog.localhost"), ["3", "4", "5"]);
    node.node_cmd(&["activate", "blog", "2"])
        .failure()
        .stderr_has("blog.localhost has no release 2 (kept: 3, 4, 5)");
    assert_eq!(node.body("blog.localhost"), "v5\n");

    // A site with one release has nothing to roll back to.
    node.deploy("solo", &App::plain("solo", 1, "solo\n"))
        .success();
    node.node_cmd(&["rollback", "solo"])
        .failure()
        .stderr_has("solo.localhost has only one release: nothing to roll back to");
    assert_eq!(node.body("solo.localhost"), "solo\n");

    // Through the SSH door, from a laptop: recorded with the key's name.
    let key = node.authorized_key("laptop");
    let laptop = Laptop::new(&node, &key);
    let r = laptop.toppcloud(&["activate", "blog.localhost", "3"]);
    r.success().stderr_has(&live(3));
    assert_eq!(node.body("blog.localhost"), "v3\n");
    assert_eq!(node.body("prev.blog.localhost"), "v5\n");
    let (text, _) = api(&node, &format!("/deploys/{}", deploy_id(&r.stderr)));
    assert!(text.contains("activate 3 by laptop"), "{text}");
    laptop
        .toppcloud(&["rollback", "blog.localhost"])
        .success()
        .stderr_has(&live(5));
    ssh(&node, &key, "rollback blog").success();
    assert_eq!(node.body("blog.localhost"), "v3\n");
    laptop
        .toppcloud(&["rollback", "solo.localhost"])
        .failure()
        .stderr_has("solo.localhost has only one release: nothing to roll back to");

    // A key limited to another site may not roll this one back.
    let other = node.limited_key("other", "other.localhost");
    let limited = Laptop::new(&node, &other);
    let refused = "site blog.localhost not found, or this key (other) may not use it";
    limited
        .toppcloud(&["rollback", "blog.localhost"])
        .failure()
        .stderr_has(refused);
    limited
        .toppcloud(&["activate", "blog.localhost", "4"])
        .failure()
        .stderr_has(refused);
    ssh(&node, &other, "rollback blog")
        .failure()
        .stderr_has(refused);
    assert_eq!(node.body("blog.localhost"), "v3\n");
}

/// One GET of `/` on loopback with `host`: the status and the body.
fn get(port: u16, host: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no head: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("no status: {head:?}"))?;
    Ok((status, body.to_string()))
}

#[test]
fn rollback_under_load_loses_no_request() {
    let node = node();
    let app = App::new();
    deploy_body(&node, &app, "one\n");
    deploy_body(&node, &app, "two\n");

    let stop = Arc::new(AtomicBool::new(false));
    let port = node.apache_port;
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed)
                && sent < 20_000
                && started.elapsed() < Duration::from_secs(180)
            {
                sent += 1;
                match get(port, "blog.localhost") {
                    Ok((200, body)) if body == "one\n" || body == "two\n" => {}
                    other => failed.push(format!("{other:?}")),
                }
            }
            (sent, failed)
        })
    };
    let mut expect = ["one\n", "two\n"].into_iter().cycle();
    for _ in 0..5 {
        node.node_cmd(&["rollback", "blog"]).success();
        assert_eq!(node.body("blog.localhost"), expect.next().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = load.join().expect("the load thread");
    assert!(sent > 0);
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Nothing was rebuilt: still the two releases.
    assert_eq!(node.releases("blog.localhost"), ["1", "2"]);
}
