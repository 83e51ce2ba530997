//! `N.host` serves the newest kept release of version N for as long as it
//! is kept: one that no slot holds (neither live nor previous) is loaded
//! on the first request, which waits for the load and gets the release's
//! own answer; requests that arrive meanwhile share that load. A deploy
//! that needs the slot evicts it (the host is loaded again when asked
//! for); a pruned version's host is gone. Only the node's Apache can make
//! the node load anything.

use crate::support::{Answer, App, Node};

fn node() -> Node {
    Node::start_with("[build]\nkeep_releases = 5\n")
}

/// An app of version `v` answering `v{v}\n` at `/` (with the names of any
/// `X-Toppcloud-*` header it was sent, which must be none), and at other
/// paths the method, path, query and body it received.
fn set_version(app: &App, v: u32) {
    app.file(
        "app.ini",
        &format!("[production]\napp_name = blog\nversion = {v}\nrunner = main.py\n"),
    )
    .file(
        "main.py",
        &format!(
            "def application(environ, start_response):\n    \
             seen = sorted(k for k in environ if k.startswith('HTTP_X_TOPPCLOUD'))\n    \
             n = int(environ.get('CONTENT_LENGTH') or 0)\n    \
             body = environ['wsgi.input'].read(n) if n else b''\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             if environ['PATH_INFO'] == '/':\n        \
                 return [('v{v}' + ''.join(' saw ' + k for k in seen) + '\\n').encode()]\n    \
             return [('v{v} %s %s?%s %s' % (environ['REQUEST_METHOD'], environ['PATH_INFO'], \
             environ.get('QUERY_STRING', ''), body.decode())).encode()]\n"
        ),
    );
}

fn deploy_version(node: &Node, app: &App, v: u32) {
    set_version(app, v);
    node.deploy("blog", app).success();
}

/// What the route map says of `host` (`load`, a slot, or nothing).
fn route(node: &Node, host: &str) -> Option<String> {
    let map = std::fs::read_to_string(node.data.join("apache/routes.map")).expect("routes.map");
    map.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(h, _)| *h == host)
        .map(|(_, r)| r.to_string())
}

fn assert_served(node: &Node, host: &str, body: &str) {
    let a = node.get(host, "/");
    assert_eq!(
        (a.code, a.body.as_str()),
        (200, body),
        "GET http://{host}/\nnode log:\n{}",
        node.log()
    );
}

fn assert_gone(node: &Node, host: &str) {
    let Answer { code, body, .. } = node.get(host, "/");
    assert_eq!(code, 404, "{host}: {body}");
    assert!(
        body.contains("No site is served at this address"),
        "{host}: {body}"
    );
}

#[test]
fn every_kept_version_answers_at_its_n_host_started_on_demand() {
    let node = node();
    let app = App::new();
    for v in 1..=3 {
        deploy_version(&node, &app, v);
    }
    // Live 3, previous 2: release 1 is kept but no slot holds it.
    assert_eq!(route(&node, "1.blog.localhost").as_deref(), Some("load"));

    // The first request waits for the load and is answered by the
    // release itself, as it was sent.
    let first = node
        .site("1.blog.localhost", "/echo?a=1&b=two")
        .method("POST")
        .body(b"hello")
        .send();
    assert_eq!(
        (first.code, first.body.as_str()),
        (200, "v1 POST /echo?a=1&b=two hello"),
        "node log:\n{}",
        node.log()
    );
    assert_ne!(route(&node, "1.blog.localhost").as_deref(), Some("load"));
    assert_served(&node, "1.blog.localhost", "v1\n");
    assert_served(&node, "1.blog.localhost", "v1\n");
    assert_served(&node, "blog.localhost", "v3\n");
    assert_served(&node, "prev.blog.localhost", "v2\n");

    // Release 4 goes live, 3 previous: 2 is kept and held by no slot. A
    // burst of first requests shares one load; every one is answered.
    deploy_version(&node, &app, 4);
    assert_eq!(route(&node, "2.blog.localhost").as_deref(), Some("load"));
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let burst: Vec<_> = (0..8)
            .map(|_| s.spawn(|| node.get("2.blog.localhost", "/")))
            .collect();
        burst
            .into_iter()
            .map(|t| t.join().expect("request thread"))
            .collect()
    });
    for a in &answers {
        assert_eq!(
            (a.code, a.body.as_str()),
            (200, "v2\n"),
            "node log:\n{}",
            node.log()
        );
    }
    let loads = node.log().matches("loaded release 2 into slot").count();
    assert_eq!(loads, 1, "one load for the burst:\n{}", node.log());
    assert_served(&node, "1.blog.localhost", "v1\n");

    // Every slot of the cell holds a release now (live 4, previous 3, 1
    // and 2 on demand): the next deploy evicts the one loaded longest ago
    // (release 1), and 1.host is loaded again on its next request.
    deploy_version(&node, &app, 5);
    assert_served(&node, "blog.localhost", "v5\n");
    assert_eq!(route(&node, "1.blog.localhost").as_deref(), Some("load"));
    assert_served(&node, "1.blog.localhost", "v1\n");
    assert_served(&node, "2.blog.localhost", "v2\n");
    assert_served(&node, "3.blog.localhost", "v3\n");

    // Release 6 prunes release 1 (keep_releases = 5): its host is gone.
    deploy_version(&node, &app, 6);
    assert_eq!(node.releases("blog.localhost"), ["2", "3", "4", "5", "6"]);
    assert_eq!(route(&node, "1.blog.localhost"), None);
    assert_gone(&node, "1.blog.localhost");
    assert_served(&node, "2.blog.localhost", "v2\n");
    assert_served(&node, "6.blog.localhost", "v6\n");
    assert_served(&node, "prev.blog.localhost", "v5\n");
}

/// The load secret as the node wrote it for Apache's workers.
fn load_secret(node: &Node) -> String {
    let map = std::fs::read_to_string(node.data.join("apache/secrets.map")).expect("secrets.map");
    map.lines()
        .find_map(|l| l.strip_prefix("load ").map(str::to_string))
        .expect("the load secret in secrets.map")
}

#[test]
fn attack_the_load_door_refuses_requests_without_the_nodes_secret() {
    let node = node();
    let app = App::new();
    for v in 1..=3 {
        deploy_version(&node, &app, v);
    }
    assert_eq!(route(&node, "1.blog.localhost").as_deref(), Some("load"));

    // Straight to the node's HTTP door, as Apache would send it but
    // without the secret: nothing is loaded.
    for (method, path, guess) in [
        ("GET", "/", None),
        ("GET", "/", Some("guess")),
        ("GET", "/healthz", Some("guess")),
        ("POST", "/sites", Some("guess")),
        ("PUT", "/hooks/blog", Some("x")),
    ] {
        let mut headers = vec![("Host", "1.blog.localhost")];
        if let Some(g) = guess {
            headers.push(("X-Toppcloud-Load", g));
        }
        let a = node.http_request(method, path, &headers, None);
        match guess {
            None => assert_eq!(a.code, 404, "{method} {path}: {}", a.body),
            Some(_) => {
                assert_eq!(a.code, 403, "{method} {path}: {}", a.body);
                assert!(
                    a.body
                        .contains("only the node's Apache may ask for a release to be loaded"),
                    "{}",
                    a.body
                );
            }
        }
        assert!(!a.body.contains("v1"), "{}", a.body);
    }
    assert_eq!(route(&node, "1.blog.localhost").as_deref(), Some("load"));

    // A request already carrying the secret that Apache routes to the node
    // again (what the node's own request would be if the map did not
    // follow) is refused as a loop, not followed.
    let secret = load_secret(&node);
    let looped = node
        .site("1.blog.localhost", "/")
        .header("X-Toppcloud-Load", &secret)
        .send();
    assert_eq!(looped.code, 503, "{}", looped.body);
    assert!(looped.body.contains("a loop, refused"), "{}", looped.body);
    node.wait_logged("came back to it");

    // A client's copy of the header, through Apache, is replaced by
    // Apache's own: the load happens, and the app never sees the header.
    let forged = node
        .site("1.blog.localhost", "/")
        .header("X-Toppcloud-Load", "guess")
        .send();
    assert_eq!(
        (forged.code, forged.body.as_str()),
        (200, "v1\n"),
        "node log:\n{}",
        node.log()
    );
    let live = node
        .site("blog.localhost", "/")
        .header("X-Toppcloud-Load", &secret)
        .send();
    assert_eq!((live.code, live.body.as_str()), (200, "v3\n"));
}

/// An app of version `v` with a files directory, which refuses to start
/// while the file `broken-v{v}` is in it.
fn set_fragile_version(app: &App, v: u32) {
    app.file(
        "app.ini",
        &format!(
            "[production]\napp_name = blog\nversion = {v}\nrunner = main.py\nservice.files =\n"
        ),
    )
    .file(
        "main.py",
        &format!(
            "import os\n\
             if os.path.exists(os.path.join(os.environ['CONFIG_FILES'], 'broken-v{v}')):\n    \
                 raise RuntimeError('broken on purpose')\n\
             def application(environ, start_response):\n    \
                 start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
                 return [b'v{v}\\n']\n"
        ),
    );
}

#[test]
fn a_release_loaded_on_demand_is_activated_warm_and_one_that_cannot_start_answers_503() {
    let node = node();
    let app = App::new();
    for v in 1..=3 {
        set_fragile_version(&app, v);
        node.deploy("blog", &app).success();
    }
    assert_served(&node, "1.blog.localhost", "v1\n");

    // Activating it uses the daemon that holds it: nothing is loaded again.
    let mut cmd = node.command();
    cmd.args(["node", "activate", "blog", "1", "--config"])
        .arg(&node.config);
    let act = crate::support::Run::from(
        "toppcloud node activate blog 1".into(),
        crate::support::run_with_timeout(cmd, std::time::Duration::from_secs(120)),
    );
    act.success()
        .stdout_has("release 1 (loaded on demand, warm) becomes live")
        .stdout_lacks("loading kept release");
    assert_served(&node, "blog.localhost", "v1\n");
    assert_served(&node, "prev.blog.localhost", "v3\n");
    assert_served(&node, "1.blog.localhost", "v1\n");

    // Release 2 is held by no daemon and cannot start any more: its host
    // answers 503 with a reason, the node's log says why, and the other
    // hosts are untouched.
    assert_eq!(route(&node, "2.blog.localhost").as_deref(), Some("load"));
    std::fs::write(node.data.join("sites/blog.localhost/files/broken-v2"), "").expect("write");
    let a = node.get("2.blog.localhost", "/");
    assert_eq!(a.code, 503, "{}", a.body);
    assert!(
        a.body
            .contains("release 2 of blog.localhost could not be started"),
        "{}",
        a.body
    );
    assert!(!a.body.contains("broken on purpose"), "{}", a.body);
    node.wait_logged("broken on purpose");
    assert!(node.log().contains("cannot load release 2 on demand"));
    assert_served(&node, "blog.localhost", "v1\n");
    assert_served(&node, "3.blog.localhost", "v3\n");
}
