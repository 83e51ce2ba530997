//! Webhook-triggered redeploys and the node's HTTP API: a real node, a
//! local upstream repository served over `file://`, deliveries signed here
//! with the site's secret exactly as each forge signs them, sent with curl.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64ct::{Base64, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{Answer, Gate, Node, Upstream, git_command, run_with_timeout, wait_for};

const SECRET: &str = "It's a Secret to Everybody";
const TOKEN: &str = "test-admin-token";
/// Small, so a test can go over it without sending megabytes.
const MAX_BODY: usize = 64 * 1024;

/// A node deploying `blog.localhost` from `up`, with an admin token.
fn node_for(up: &Upstream, extra: &str) -> Node {
    Node::start_with(&format!(
        "[http]\nadmin_token = {TOKEN:?}\nmax_body = {MAX_BODY}\n\
         [sites.blog]\nupstream = {:?}\nwebhook_secret = {SECRET:?}\n{extra}",
        up.url()
    ))
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("key");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

#[derive(Clone, Copy, Debug)]
enum Forge {
    GitHub,
    Gitea,
    Forgejo,
    /// The plain `X-Gitlab-Token`.
    GitLab,
    /// GitLab's newer Standard Webhooks signature (`webhook-signature`).
    GitLabSigned,
}

/// A delivery as the forge sends it: the headers (signature included,
/// computed over `body` with `secret`) for an event.
struct Delivery {
    forge: Forge,
    event: &'static str,
    id: String,
    secret: String,
    /// For GitLab's signed form: seconds since the epoch.
    timestamp: Option<u64>,
}

impl Delivery {
    fn push(forge: Forge, id: &str) -> Delivery {
        Delivery {
            forge,
            event: "push",
            id: id.to_string(),
            secret: SECRET.to_string(),
            timestamp: None,
        }
    }

    fn headers(&self, body: &[u8]) -> Vec<(String, String)> {
        let hex_sig = hex::encode(hmac(self.secret.as_bytes(), &[body]));
        let mut h = vec![("Content-Type".to_string(), "application/json".to_string())];
        let mut add = |k: &str, v: String| h.push((k.to_string(), v));
        match self.forge {
            Forge::GitHub => {
                add("X-GitHub-Event", self.event.into());
                add("X-GitHub-Delivery", self.id.clone());
                add("X-Hub-Signature-256", format!("sha256={hex_sig}"));
            }
            Forge::Gitea => {
                add("X-Gitea-Event", self.event.into());
                add("X-GitHub-Event", self.event.into());
                add("X-Gitea-Delivery", self.id.clone());
                add("X-Gitea-Signature", hex_sig);
            }
            Forge::Forgejo => {
                add("X-Forgejo-Event", self.event.into());
                add("X-Gitea-Event", self.event.into());
                add("X-Forgejo-Delivery", self.id.clone());
                add("X-Forgejo-Signature", hex_sig.clone());
                add("X-Gitea-Signature", hex_sig);
            }
            Forge::GitLab | Forge::GitLabSigned => {
                let event = if self.event == "push" {
                    "Push Hook"
                } else {
                    self.event
                };
                add("X-Gitlab-Event", event.into());
                add("X-Gitlab-Event-UUID", self.id.clone());
                add("Idempotency-Key", self.id.clone());
                if matches!(self.forge, Forge::GitLab) {
                    add("X-Gitlab-Token", self.secret.clone());
                } else {
                    let ts = self.timestamp.unwrap_or_else(now).to_string();
                    let sig = hmac(
                        self.secret.as_bytes(),
                        &[self.id.as_bytes(), b".", ts.as_bytes(), b".", body],
                    );
                    add("webhook-id", self.id.clone());
                    add("webhook-timestamp", ts);
                    add(
                        "webhook-signature",
                        format!("v1,{}", Base64::encode_string(&sig)),
                    );
                }
            }
        }
        h
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A push payload; `after` is what the forge says the branch moved to.
fn push_body(git_ref: &str, after: &str) -> Vec<u8> {
    json!({
        "ref": git_ref,
        "before": "0".repeat(40),
        "after": after,
        "object_kind": "push",
        "repository": {"full_name": "acme/blog", "clone_url": "https://example.invalid/acme/blog.git"},
        "head_commit": {"id": after, "message": "a change"},
    })
    .to_string()
    .into_bytes()
}

fn send_raw(node: &Node, site: &str, headers: &[(String, String)], body: &[u8]) -> Answer {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    node.http_request("POST", &format!("/hooks/{site}"), &h, Some(body))
}

fn deliver(node: &Node, site: &str, d: &Delivery, body: &[u8]) -> Answer {
    send_raw(node, site, &d.headers(body), body)
}

fn api(node: &Node, method: &str, path: &str, body: Option<&[u8]>) -> Answer {
    let auth = format!("Bearer {TOKEN}");
    node.http_request(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

fn assert_answer(a: &Answer, code: u16, node: &Node) -> Value {
    assert_eq!(
        a.code,
        code,
        "answer: {}\nnode log:\n{}",
        a.body,
        node.log()
    );
    a.json()
}

/// A 202 with its Location; returns the deploy id.
fn accepted(a: &Answer, node: &Node) -> String {
    let v = assert_answer(a, 202, node);
    let id = v["deploy"].as_str().expect("deploy id").to_string();
    assert_eq!(
        a.header("location"),
        Some(format!("/deploys/{id}").as_str())
    );
    id
}

/// Polls `GET /deploys/{id}` until it is live or failed.
fn finished(node: &Node, id: &str) -> Value {
    wait_for(
        &format!("deploy {id} to finish"),
        Duration::from_secs(180),
        || {
            let v = api(node, "GET", &format!("/deploys/{id}"), None).json();
            matches!(v["status"].as_str(), Some("live" | "failed")).then_some(v)
        },
    )
}

fn live(node: &Node, id: &str) -> Value {
    let v = finished(node, id);
    assert_eq!(
        v["status"],
        "live",
        "deploy {id}: {v:#}\nnode log:\n{}",
        node.log()
    );
    v
}

/// What the node's own repository says a ref is.
fn node_ref(node: &Node, site: &str, name: &str) -> String {
    let repo = node.data.join("repos").join(format!("{site}.git"));
    let cmd = git_command(
        node.dir.path(),
        &[
            "--git-dir",
            &repo.display().to_string(),
            "rev-parse",
            "--verify",
            "-q",
            name,
        ],
    );
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_github_push_deploys_the_head_the_node_fetched() {
    let up = Upstream::new();
    let v1 = up.commit_plain("blog", 1, "blog v1\n");
    let node = node_for(&up, "");
    // The body names a commit that does not exist: the node deploys what
    // it fetches, never what the body says.
    let bogus = "1234567890".repeat(4);
    let body = push_body("refs/heads/main", &bogus);
    let id = accepted(
        &deliver(
            &node,
            "blog.localhost",
            &Delivery::push(Forge::GitHub, "gh-1"),
            &body,
        ),
        &node,
    );
    let d = live(&node, &id);
    assert_eq!(d["sha"], v1.as_str());
    assert_eq!(d["release"], 1);
    let log: Vec<&str> = d["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        log.iter().any(|l| l.contains("fetching main from file://")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("switched blog.localhost to release 1")),
        "{log:#?}"
    );
    assert_eq!(node.body("blog.localhost"), "blog v1\n");
    // The node's branch agrees with the live site.
    assert_eq!(node_ref(&node, "blog.localhost", "refs/heads/main"), v1);

    let v2 = up.commit_plain("blog", 2, "blog v2\n");
    let body = push_body("refs/heads/main", &v2);
    let id = accepted(
        &deliver(&node, "blog", &Delivery::push(Forge::GitHub, "gh-2"), &body),
        &node,
    );
    assert_eq!(live(&node, &id)["sha"], v2.as_str());
    assert_eq!(node.body("blog.localhost"), "blog v2\n");
    assert_eq!(node.body("prev.blog.localhost"), "blog v1\n");
    assert_eq!(node.body("2.blog.localhost"), "blog v2\n");
    assert_eq!(node_ref(&node, "blog.localhost", "refs/heads/main"), v2);
    let log = node.log();
    assert!(
        log.contains("webhook accepted"),
        "every delivery is logged:\n{log}"
    );
}

#[test]
fn gitea_forgejo_and_gitlab_deliveries_are_verified_their_way() {
    let up = Upstream::new();
    let node = node_for(&up, "");
    for (i, forge) in [
        Forge::Gitea,
        Forge::Forgejo,
        Forge::GitLab,
        Forge::GitLabSigned,
    ]
    .into_iter()
    .enumerate()
    {
        let text = format!("from {forge:?}\n");
        let sha = up.commit_plain("blog", 1, &text);
        let body = push_body("refs/heads/main", &sha);
        let d = Delivery::push(forge, &format!("delivery-{i}"));
        let id = accepted(&deliver(&node, "blog.localhost", &d, &body), &node);
        assert_eq!(live(&node, &id)["sha"], sha.as_str(), "{forge:?}");
        assert_eq!(node.body("blog.localhost"), text, "{forge:?}");
    }
}

#[test]
fn deliveries_without_a_valid_signature_are_rejected() {
    let up = Upstream::new();
    let sha = up.commit_plain("blog", 1, "never deployed\n");
    let node = node_for(&up, "");
    let body = push_body("refs/heads/main", &sha);

    // No signature at all.
    let a = node.http_request(
        "POST",
        "/hooks/blog.localhost",
        &[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "x")],
        Some(&body),
    );
    assert!(
        assert_answer(&a, 401, &node)["error"]
            .as_str()
            .expect("error")
            .contains("no signature")
    );

    // Each forge's signature made with another secret.
    for forge in [
        Forge::GitHub,
        Forge::Gitea,
        Forge::Forgejo,
        Forge::GitLab,
        Forge::GitLabSigned,
    ] {
        let mut d = Delivery::push(forge, "wrong-secret");
        d.secret = "not the secret".into();
        let a = deliver(&node, "blog.localhost", &d, &body);
        assert_answer(&a, 401, &node);
    }

    // A valid signature of another body: the body was tampered with.
    let other = push_body("refs/heads/main", &"f".repeat(40));
    for forge in [
        Forge::GitHub,
        Forge::Gitea,
        Forge::Forgejo,
        Forge::GitLabSigned,
    ] {
        let d = Delivery::push(forge, "tampered");
        let a = send_raw(&node, "blog.localhost", &d.headers(&other), &body);
        let v = assert_answer(&a, 401, &node);
        assert!(
            v["error"]
                .as_str()
                .expect("error")
                .contains("does not match"),
            "{forge:?}: {v}"
        );
    }

    // GitLab's signed form, replayed after the tolerance.
    let mut d = Delivery::push(Forge::GitLabSigned, "stale");
    d.timestamp = Some(now() - 3600);
    let v = assert_answer(&deliver(&node, "blog.localhost", &d, &body), 401, &node);
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("webhook-timestamp"),
        "{v}"
    );

    // Nothing was deployed or even queued.
    let site = assert_answer(
        &api(&node, "GET", "/sites/blog.localhost", None),
        200,
        &node,
    );
    assert_eq!(site["deploys"], json!([]));
    assert!(node.releases("blog.localhost").is_empty());
    let log = node.log();
    assert!(
        log.contains("webhook rejected (401)"),
        "rejections are logged:\n{log}"
    );
}

#[test]
fn each_kind_of_delivery_gets_its_answer() {
    let up = Upstream::new();
    let sha = up.commit_plain("blog", 1, "never deployed\n");
    let node = node_for(&up, "");
    let gh = |event: &'static str| Delivery {
        event,
        ..Delivery::push(Forge::GitHub, "d")
    };
    let push = push_body("refs/heads/main", &sha);

    // Unknown sites, and names that are not site names.
    for site in ["other.localhost", "bad_name!"] {
        let v = assert_answer(&deliver(&node, site, &gh("push"), &push), 404, &node);
        assert!(v["error"].is_string(), "{v}");
    }
    // A body over the limit.
    let big = vec![b' '; MAX_BODY + 1];
    let v = assert_answer(
        &deliver(&node, "blog.localhost", &gh("push"), &big),
        413,
        &node,
    );
    assert!(
        v["error"].as_str().expect("error").contains("larger than"),
        "{v}"
    );
    // Malformed JSON, validly signed.
    let v = assert_answer(
        &deliver(&node, "blog.localhost", &gh("push"), b"{\"ref\": "),
        400,
        &node,
    );
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("malformed JSON"),
        "{v}"
    );
    // A push without a ref.
    assert_answer(
        &deliver(&node, "blog.localhost", &gh("push"), b"{}"),
        400,
        &node,
    );
    // A form-encoded payload (GitHub's other content type).
    let mut headers = gh("push").headers(b"payload=%7B%7D");
    headers[0].1 = "application/x-www-form-urlencoded".into();
    assert_answer(
        &send_raw(&node, "blog.localhost", &headers, b"payload=%7B%7D"),
        415,
        &node,
    );

    // Accepted but not deployed: ping, another event, another branch, a
    // tag, the branch deleted.
    let ping = br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#;
    let v = assert_answer(
        &deliver(&node, "blog.localhost", &gh("ping"), ping),
        200,
        &node,
    );
    assert_eq!(v["status"], "ignored");
    let v = assert_answer(
        &deliver(&node, "blog.localhost", &gh("issues"), &push),
        200,
        &node,
    );
    assert!(
        v["reason"].as_str().expect("reason").contains("not a push"),
        "{v}"
    );
    let dev = push_body("refs/heads/dev", &sha);
    let v = assert_answer(
        &deliver(&node, "blog.localhost", &gh("push"), &dev),
        200,
        &node,
    );
    assert_eq!(v["status"], "ignored");
    let reason = v["reason"].as_str().expect("reason");
    assert!(
        reason.contains("refs/heads/dev") && reason.contains("deploys main"),
        "{v}"
    );
    let tag = push_body("refs/tags/v1", &sha);
    assert_eq!(
        assert_answer(
            &deliver(&node, "blog.localhost", &gh("push"), &tag),
            200,
            &node
        )["status"],
        "ignored"
    );
    let deleted = push_body("refs/heads/main", &"0".repeat(40));
    let v = assert_answer(
        &deliver(&node, "blog.localhost", &gh("push"), &deleted),
        200,
        &node,
    );
    assert!(
        v["reason"].as_str().expect("reason").contains("deleted"),
        "{v}"
    );
    let gitlab_tag = Delivery {
        event: "Tag Push Hook",
        ..Delivery::push(Forge::GitLab, "t")
    };
    assert_answer(
        &deliver(&node, "blog.localhost", &gitlab_tag, &tag),
        200,
        &node,
    );

    let site = assert_answer(
        &api(&node, "GET", "/sites/blog.localhost", None),
        200,
        &node,
    );
    assert_eq!(site["deploys"], json!([]), "nothing was deployed");
    let log = node.log();
    assert!(log.contains("webhook ignored"), "{log}");
    assert!(log.contains("webhook rejected (413)"), "{log}");
}

#[test]
fn a_site_without_a_secret_takes_no_webhook_and_the_node_warns() {
    let up = Upstream::new();
    up.commit_plain("open", 1, "open\n");
    let node = Node::start_with(&format!(
        "[sites.open]\nupstream = {url:?}\n[sites.empty]\nupstream = {url:?}\nwebhook_secret = \"\"\n",
        url = up.url()
    ));
    for site in ["open", "empty"] {
        // Signed with the (empty) secret the site has.
        let d = Delivery {
            secret: String::new(),
            ..Delivery::push(Forge::GitHub, site)
        };
        let a = deliver(
            &node,
            &format!("{site}.localhost"),
            &d,
            &push_body("refs/heads/main", "x"),
        );
        let v = assert_answer(&a, 403, &node);
        assert!(
            v["error"]
                .as_str()
                .expect("error")
                .contains("webhook_secret"),
            "{v}"
        );
        let d = Delivery {
            secret: String::new(),
            ..Delivery::push(Forge::GitLab, site)
        };
        let a = deliver(
            &node,
            &format!("{site}.localhost"),
            &d,
            &push_body("refs/heads/main", "x"),
        );
        assert_answer(&a, 403, &node);
    }
    let log = node.log();
    assert!(
        log.contains("[sites.\"open.localhost\"] has no webhook_secret"),
        "{log}"
    );
    assert!(
        log.contains("[sites.\"empty.localhost\"] has an empty webhook_secret"),
        "{log}"
    );
    assert!(node.releases("open.localhost").is_empty());
}

#[test]
fn a_replayed_delivery_does_not_deploy_twice() {
    let up = Upstream::new();
    let v1 = up.commit_plain("blog", 1, "one\n");
    let node = node_for(&up, "");
    let d = Delivery::push(Forge::GitHub, "replayed");
    let body = push_body("refs/heads/main", &v1);
    let id = accepted(&deliver(&node, "blog.localhost", &d, &body), &node);
    live(&node, &id);

    // The same delivery again, even after the upstream moved on.
    up.commit_plain("blog", 1, "two\n");
    for _ in 0..2 {
        let a = deliver(&node, "blog.localhost", &d, &body);
        let v = assert_answer(&a, 200, &node);
        assert_eq!(v["status"], "duplicate", "{v}");
        assert_eq!(v["deploy"], id.as_str());
    }
    // GitLab names a delivery in several headers; either form of it
    // counts as the same delivery.
    let gl = Delivery::push(Forge::GitLabSigned, "gl-1");
    let id2 = accepted(&deliver(&node, "blog.localhost", &gl, &body), &node);
    live(&node, &id2);
    let again = Delivery::push(Forge::GitLab, "gl-1");
    assert_eq!(
        assert_answer(&deliver(&node, "blog.localhost", &again, &body), 200, &node)["status"],
        "duplicate"
    );

    assert_eq!(
        node.releases("blog.localhost"),
        ["1", "2"],
        "one deploy per delivery"
    );
    assert_eq!(node.body("blog.localhost"), "two\n");
}

#[test]
fn a_burst_while_deploying_leaves_one_pending_deploy_of_the_newest_head() {
    let up = Upstream::new();
    // The first release's import waits at a gate, so the burst arrives
    // while its deploy holds the site's turn; the gate opens after it.
    let gate = Gate::new();
    up.commit_plain("blog", 1, "slow\n");
    up.file("main.py", &gate.main_py("slow\n"));
    let slow = up.commit("slow import");
    let node = node_for(&up, "");
    let first = accepted(
        &deliver(
            &node,
            "blog.localhost",
            &Delivery::push(Forge::GitHub, "b-0"),
            &push_body("refs/heads/main", &slow),
        ),
        &node,
    );
    // Wait until the first deploy has fetched: what comes later is the
    // burst's.
    let short = &slow[..12];
    wait_for("the first deploy to fetch", Duration::from_secs(60), || {
        let v = api(&node, "GET", &format!("/deploys/{first}"), None).json();
        let fetched = v["log"].as_array().is_some_and(|l| {
            l.iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains(short)))
        });
        (v["status"] == "running" && fetched).then_some(())
    });

    let mut ids = Vec::new();
    let mut last = String::new();
    for (i, forge) in [Forge::GitHub, Forge::Gitea, Forge::GitLab, Forge::GitHub]
        .into_iter()
        .enumerate()
    {
        last = up.commit_plain("blog", 1, &format!("burst {i}\n"));
        let a = deliver(
            &node,
            "blog.localhost",
            &Delivery::push(forge, &format!("b-{}", i + 1)),
            &push_body("refs/heads/main", &last),
        );
        let v = assert_answer(&a, 202, &node);
        ids.push(v["deploy"].as_str().expect("id").to_string());
        let queue = v["queue"].as_str().expect("queue");
        assert!(
            queue.contains(if i == 0 { "pending" } else { "joined" }),
            "{v}"
        );
    }
    let pending = ids[0].clone();
    assert!(
        ids.iter().all(|i| *i == pending),
        "one pending deploy: {ids:?}"
    );
    assert_ne!(pending, first);
    let running = api(&node, "GET", &format!("/deploys/{first}"), None).json();
    assert_eq!(
        running["status"], "running",
        "the burst came while the first ran"
    );
    assert_eq!(
        api(&node, "GET", &format!("/deploys/{pending}"), None).json()["status"],
        "queued"
    );

    gate.open();
    assert_eq!(live(&node, &first)["sha"], slow.as_str());
    let p = live(&node, &pending);
    assert_eq!(
        p["sha"],
        last.as_str(),
        "the pending deploy took the newest head"
    );
    assert_eq!(p["requested_by"].as_array().expect("list").len(), 4);
    assert_eq!(node.body("blog.localhost"), "burst 3\n");
    assert_eq!(node.body("prev.blog.localhost"), "slow\n");
    assert_eq!(
        node.releases("blog.localhost"),
        ["1", "2"],
        "two deploys for five webhooks"
    );
}

#[test]
fn the_api_wants_the_admin_token() {
    let up = Upstream::new();
    let node = node_for(&up, "");
    let a = node.http_request("GET", "/healthz", &[], None);
    assert_eq!(
        (a.code, a.body.as_str()),
        (200, "ok\n"),
        "healthz needs no token"
    );
    for (method, path) in [
        ("GET", "/sites"),
        ("GET", "/sites/blog"),
        ("GET", "/deploys/1"),
        ("POST", "/sites/blog/deploy"),
    ] {
        let a = node.http_request(method, path, &[], None);
        let v = assert_answer(&a, 401, &node);
        assert!(
            v["error"].as_str().expect("error").contains("Bearer"),
            "{path}: {v}"
        );
        assert!(
            a.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer"))
        );
        let a = node.http_request(
            method,
            path,
            &[("Authorization", "Bearer not-the-token")],
            None,
        );
        assert_answer(&a, 401, &node);
    }
    assert_answer(&api(&node, "GET", "/sites", None), 200, &node);

    // A node without a token has the API shut, and says how to open it;
    // webhooks still work.
    let up = Upstream::new();
    let sha = up.commit_plain("blog", 1, "no token\n");
    let node = Node::start_with(&format!(
        "[sites.blog]\nupstream = {:?}\nwebhook_secret = {SECRET:?}\n",
        up.url()
    ));
    for (method, path) in [
        ("GET", "/sites"),
        ("GET", "/deploys/1"),
        ("POST", "/sites/blog/deploy"),
    ] {
        let a = api(&node, method, path, None);
        let v = assert_answer(&a, 403, &node);
        assert!(
            v["error"]
                .as_str()
                .expect("error")
                .contains("set [http] admin_token"),
            "{v}"
        );
    }
    assert!(
        node.log().contains("admin_token is not set"),
        "{}",
        node.log()
    );
    let d = Delivery::push(Forge::GitHub, "t-1");
    assert_answer(
        &deliver(
            &node,
            "blog.localhost",
            &d,
            &push_body("refs/heads/main", &sha),
        ),
        202,
        &node,
    );
    wait_for("the webhook deploy", Duration::from_secs(120), || {
        (node.get("blog.localhost", "/").code_body() == (200, "no token\n")).then_some(())
    });
}

#[test]
fn the_api_shows_sites_and_deploys_and_redeploys_the_upstream_head() {
    let up = Upstream::new();
    let v1 = up.commit_plain("blog", 1, "api one\n");
    let node = node_for(&up, "[sites.plain]\nbranch = \"main\"\n");

    let a = api(&node, "POST", "/sites/blog/deploy", None);
    let first = accepted(&a, &node);
    assert_eq!(live(&node, &first)["sha"], v1.as_str());
    let v2 = up.commit_plain("blog", 2, "api two\n");
    let second = accepted(
        &api(&node, "POST", "/sites/blog.localhost/deploy", Some(b"{}")),
        &node,
    );
    let d = live(&node, &second);
    assert_eq!(d["sha"], v2.as_str());
    assert!(d["log"].as_array().expect("log").len() > 3, "{d}");
    assert_eq!(node.body("blog.localhost"), "api two\n");

    let sites = assert_answer(&api(&node, "GET", "/sites", None), 200, &node);
    let list = sites["sites"].as_array().expect("sites");
    let blog = list
        .iter()
        .find(|s| s["site"] == "blog.localhost")
        .expect("blog listed");
    assert_eq!(blog["live"]["release"], 2);
    assert_eq!(blog["webhooks"], true);
    assert_eq!(blog["upstream"], up.url().as_str());
    let plain = list
        .iter()
        .find(|s| s["site"] == "plain.localhost")
        .expect("configured sites listed");
    assert_eq!(plain["live"], Value::Null);
    assert_eq!(plain["webhooks"], false);

    let site = assert_answer(&api(&node, "GET", "/sites/blog", None), 200, &node);
    assert_eq!(site["live"]["release"], 2);
    assert_eq!(site["live"]["sha"], v2.as_str());
    assert_eq!(site["previous"]["release"], 1);
    assert_eq!(site["versions"]["1"]["release"], 1);
    assert_eq!(site["versions"]["2"]["release"], 2);
    assert_eq!(site["branch"], "main");
    let deploys: Vec<&str> = site["deploys"]
        .as_array()
        .expect("deploys")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(deploys, [second.as_str(), first.as_str()], "newest first");
    assert_eq!(site["history"].as_array().expect("history").len(), 2);

    // An unchanged head is not deployed again unless asked to.
    let same = accepted(&api(&node, "POST", "/sites/blog/deploy", None), &node);
    let d = live(&node, &same);
    assert!(
        d["message"]
            .as_str()
            .expect("message")
            .contains("already live"),
        "{d}"
    );
    assert_eq!(node.releases("blog.localhost"), ["1", "2"]);
    let forced = accepted(
        &api(
            &node,
            "POST",
            "/sites/blog/deploy",
            Some(br#"{"force": true}"#),
        ),
        &node,
    );
    assert_eq!(live(&node, &forced)["release"], 3);

    // Errors are JSON with a message.
    for (method, path, body, code) in [
        ("POST", "/sites/blog/deploy", Some(&b"{nope"[..]), 400),
        (
            "POST",
            "/sites/blog/deploy",
            Some(&br#"{"force": "yes"}"#[..]),
            400,
        ),
        ("POST", "/sites/plain/deploy", None, 409),
        ("POST", "/sites/nowhere/deploy", None, 404),
        ("GET", "/sites/nowhere", None, 404),
        ("GET", "/deploys/no-such-deploy", None, 404),
        ("GET", "/no/such/endpoint", None, 404),
        ("DELETE", "/sites", None, 405),
    ] {
        let v = assert_answer(&api(&node, method, path, body), code, &node);
        assert!(v["error"].is_string(), "{method} {path}: {v}");
    }
}

#[test]
fn a_failed_upstream_deploy_says_why_and_keeps_the_live_release() {
    let up = Upstream::new();
    let good = up.commit_plain("blog", 1, "good\n");
    let node = node_for(
        &up,
        "[sites.lost]\nupstream = \"file:///nonexistent/repo\"\nwebhook_secret = \"x\"\n",
    );
    let id = accepted(&api(&node, "POST", "/sites/blog/deploy", None), &node);
    live(&node, &id);

    up.file(
        "app.ini",
        "[production]\napp_name = blog\nversion = one\nrunner = main.py\n",
    );
    let bad = up.commit("broken app.ini");
    let d = Delivery::push(Forge::GitHub, "bad-1");
    let id = accepted(
        &deliver(
            &node,
            "blog.localhost",
            &d,
            &push_body("refs/heads/main", &bad),
        ),
        &node,
    );
    let v = finished(&node, &id);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("app.ini:3"),
        "{v}"
    );
    assert_eq!(node.body("blog.localhost"), "good\n");
    assert_eq!(
        node_ref(&node, "blog.localhost", "refs/heads/main"),
        good,
        "the branch stays with the live site"
    );
    assert_eq!(
        node_ref(&node, "blog.localhost", "refs/toppcloud/upstream"),
        bad
    );
    // A delivery that failed did not deploy: the forge may send it again
    // once the cause is fixed, and then it does.
    let fixed = up.commit_plain("blog", 1, "fixed\n");
    let again = accepted(
        &deliver(
            &node,
            "blog.localhost",
            &d,
            &push_body("refs/heads/main", &bad),
        ),
        &node,
    );
    assert_ne!(again, id);
    assert_eq!(live(&node, &again)["sha"], fixed.as_str());
    assert_eq!(node.body("blog.localhost"), "fixed\n");

    let d = Delivery {
        secret: "x".into(),
        ..Delivery::push(Forge::GitHub, "lost-1")
    };
    let id = accepted(
        &deliver(
            &node,
            "lost.localhost",
            &d,
            &push_body("refs/heads/main", &bad),
        ),
        &node,
    );
    let v = finished(&node, &id);
    assert_eq!(v["status"], "failed");
    let msg = v["message"].as_str().expect("message");
    assert!(
        msg.contains("cannot fetch main from file:///nonexistent/repo"),
        "{msg}"
    );
    assert!(
        msg.contains("does not appear to be a git repository"),
        "git's own words: {msg}"
    );
}

#[test]
fn a_bad_site_name_in_the_config_stops_the_node_at_start() {
    let err = crate::support::node_run_refused("[sites.\"bad name\"]\nupstream = \"file:///x\"\n");
    assert!(
        err.contains("[sites.\"bad name\"]") && err.contains("invalid site name"),
        "{err}"
    );
}
