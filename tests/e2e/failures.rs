//! Deploys that fail: the reason is shown, the new release is gone, and
//! every host serves exactly what it served before.

use crate::support::{App, Node};

/// Deploys two good releases, so host, prev.host and 1.host all answer.
fn node_with_two_releases() -> (Node, App) {
    let node = Node::start();
    let app = App::plain("blog", 1, "good 1\n");
    node.deploy("blog", &app).success();
    app.set_plain("blog", 1, "good 2\n");
    node.deploy("blog", &app).success();
    (node, app)
}

fn assert_untouched(node: &Node) {
    assert_eq!(node.body("blog.localhost"), "good 2\n");
    assert_eq!(node.body("prev.blog.localhost"), "good 1\n");
    assert_eq!(node.body("1.blog.localhost"), "good 2\n");
    assert_eq!(
        node.releases("blog.localhost"),
        vec!["1", "2"],
        "the failed release is removed"
    );
}

#[test]
fn broken_requirements_keep_the_live_release() {
    let (node, app) = node_with_two_releases();
    app.file(
        "requirements.txt",
        "toppcloud-no-such-package-anywhere==9.9\n",
    );
    node.deploy("blog", &app)
        .failure()
        .stderr_has("installing requirements.txt failed")
        .stderr_has("toppcloud-no-such-package-anywhere");
    assert_untouched(&node);
}

#[test]
fn app_that_raises_on_import_keeps_the_live_release() {
    let (node, app) = node_with_two_releases();
    app.file("main.py", "raise RuntimeError('boom at import')\n");
    node.deploy("blog", &app)
        .failure()
        .stderr_has("the app failed to load")
        .stderr_has("RuntimeError: boom at import");
    assert_untouched(&node);
    // The slot it was tried in is clean: the next good deploy goes live.
    app.set_plain("blog", 1, "good 3\n");
    node.deploy("blog", &app).success();
    assert_eq!(node.body("blog.localhost"), "good 3\n");
}

#[test]
fn app_answering_500_keeps_the_live_release() {
    let (node, app) = node_with_two_releases();
    app.file(
        "main.py",
        "def application(environ, start_response):\n    \
         start_response('500 Internal Server Error', [('Content-Type', 'text/plain')])\n    \
         return [b'database unreachable\\n']\n",
    );
    node.deploy("blog", &app)
        .failure()
        .stderr_has("health check: GET / (Host: blog.localhost) answered 500")
        .stderr_has("database unreachable");
    assert_untouched(&node);
}

#[test]
fn app_ini_errors_name_the_line() {
    let (node, app) = node_with_two_releases();
    app.file(
        "app.ini",
        "[production]\napp_name = blog\n\nversion = one\n",
    );
    node.deploy("blog", &app)
        .failure()
        .stderr_has("app.ini:4: version must be a whole number");
    app.file(
        "app.ini",
        "[production]\napp_name = blog\nthis is not ini\n",
    );
    node.deploy("blog", &app)
        .failure()
        .stderr_has("app.ini:3: ");
    app.file(
        "app.ini",
        "[production]\napp_name = blog\nrunner = missing.py\n",
    );
    node.deploy("blog", &app)
        .failure()
        .stderr_has("app.ini:3: runner: no file \"missing.py\" in the app");
    app.remove("app.ini");
    node.deploy("blog", &app)
        .failure()
        .stderr_has("app.ini: not found");
    assert_untouched(&node);
}

#[test]
fn unknown_services_and_packages_are_refused_with_the_reason() {
    let (node, app) = node_with_two_releases();
    app.file(
        "app.ini",
        "[production]\napp_name = blog\nversion = 1\nservice.mysql =\n",
    );
    node.deploy("blog", &app).failure().stderr_has(
        "app.ini:4: service.mysql is not offered by this node (it offers files, postgresql, postgis)",
    );
    assert_untouched(&node);
    app.file(
        "app.ini",
        "[production]\napp_name = blog\nversion = 1\npackages = libxml2\n",
    );
    node.deploy("blog", &app)
        .failure()
        .stderr_has("packages = libxml2: a deploy cannot install system packages");
    assert_untouched(&node);
    app.file(
        "app.ini",
        "[production]\napp_name = blog\nversion = 1\nservice.files = static/data\n",
    );
    node.deploy("blog", &app)
        .failure()
        .stderr_has("app.ini:4: service.files = static/data: not under static/");
    assert_untouched(&node);
}

#[test]
fn a_deploy_refuses_to_start_on_a_nearly_full_disk() {
    // No disk here has a petabyte free: the limit is always below.
    let node = Node::start_with("[build]\nmin_free_mb = 1000000000\n");
    node.deploy("blog", &App::plain("blog", 1, "x\n"))
        .failure()
        .stderr_has("below [build] min_free_mb = 1000000000: nothing was deployed");
    assert_eq!(node.get("blog.localhost", "/").code, 404);
    assert!(node.releases("blog.localhost").is_empty());
}

#[test]
fn bad_site_names_are_refused() {
    let node = Node::start();
    let app = App::plain("blog", 1, "x\n");
    for (site, why) in [
        ("prev.blog.localhost", "prev"),
        ("1.blog.localhost", "number"),
        ("../etc", "invalid site name"),
        ("a/b", "invalid site name"),
    ] {
        node.deploy(site, &app).failure().stderr_has(why);
    }
    assert!(!node.data.join("sites").join("..").join("etc").exists());
}

#[test]
fn deploy_without_a_node_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = App::plain("blog", 1, "x\n");
    let out = crate::support::run_with_timeout(
        {
            let mut c = crate::support::toppcloud_cmd();
            c.args(["node", "deploy", "blog"])
                .arg(&app.path)
                .arg("--data-dir")
                .arg(dir.path());
            c
        },
        std::time::Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no node is running here"), "{err}");
}

/// Answers 200 only to the Host it was written for, 400 to any other, as
/// Django does for a name missing from ALLOWED_HOSTS.
fn host_checking_main_py(allowed: &str) -> String {
    format!(
        "def application(environ, start_response):\n    \
         if environ.get('HTTP_HOST', '').split(':')[0] != {allowed:?}:\n        \
         start_response('400 Bad Request', [('Content-Type', 'text/plain')])\n        \
         return [b'Invalid HTTP_HOST header\\n']\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [b'good 3\\n']\n"
    )
}

#[test]
fn app_refusing_the_site_host_with_400_keeps_the_live_release() {
    let (node, app) = node_with_two_releases();
    app.file("main.py", &host_checking_main_py("www.example.com"));
    node.deploy("blog", &app)
        .failure()
        .stderr_has("health check: GET / (Host: blog.localhost) answered 400")
        .stderr_has("the app must accept blog.localhost")
        .stderr_has("Invalid HTTP_HOST header");
    assert_untouched(&node);
    // The same app told the site's name goes live: the check used the real Host.
    app.file("main.py", &host_checking_main_py("blog.localhost"));
    node.deploy("blog", &app).success();
    assert_eq!(node.body("blog.localhost"), "good 3\n");
}

#[test]
fn health_check_path_from_app_ini_decides() {
    let (node, app) = node_with_two_releases();
    // `/` is a 404 (an API with no index), /healthz is what counts.
    let main_py = |healthz_status: &str| {
        format!(
            "def application(environ, start_response):\n    \
             if environ['PATH_INFO'] == '/healthz':\n        \
             start_response({healthz_status:?}, [('Content-Type', 'text/plain')])\n        \
             return [b'healthz says {healthz_status}\\n']\n    \
             start_response('404 Not Found', [('Content-Type', 'text/plain')])\n    \
             return [b'api only\\n']\n"
        )
    };
    app.file(
        "app.ini",
        "[production]\napp_name = blog\nversion = 3\nhealth_check = /healthz\n",
    )
    .file("main.py", &main_py("503 Service Unavailable"));
    node.deploy("blog", &app)
        .failure()
        .stderr_has("health check: GET /healthz (Host: blog.localhost) answered 503")
        .stderr_has("healthz says 503");
    assert_untouched(&node);

    app.file("main.py", &main_py("200 OK"));
    node.deploy("blog", &app)
        .success()
        .stdout_has("checked GET /healthz: 200");
    assert_eq!(
        node.get("blog.localhost", "/healthz").body,
        "healthz says 200 OK\n"
    );
    assert_eq!(node.get("blog.localhost", "/").code, 404);
}

#[test]
fn app_without_a_root_page_is_refused_unless_it_names_a_health_check() {
    let (node, app) = node_with_two_releases();
    app.file(
        "main.py",
        "def application(environ, start_response):\n    \
         start_response('404 Not Found', [('Content-Type', 'text/plain')])\n    \
         return [b'nothing here\\n']\n",
    );
    node.deploy("blog", &app)
        .failure()
        .stderr_has("answered 404, expected 2xx or 3xx")
        .stderr_has("set app.ini health_check = PATH");
    assert_untouched(&node);
}
