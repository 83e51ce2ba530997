//! HTTPS through Apache's mod_md against Debian's pebble (an ACME test CA,
//! on loopback, told to accept every name): `https://SITE` serves the live
//! release, `prev.` the previous one, an alias redirects (or serves), plain
//! HTTP answers 301 to HTTPS once a name has its certificate; names another
//! site uses and names no certificate can be issued for are refused; a name
//! the CA refuses leaves the site on HTTP with the CA's error in `domains`;
//! and adding a site with its certificates fails no request on another.
//! Aliases also work with HTTPS off.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{
    Answer, App, Laptop, Node, Request, Run, client_command, free_loopback_port, load,
    node_run_refused, run_with_timeout, ssh, wait_for,
};

/// Debian's pebble on loopback, with a TLS key of its own made by openssl;
/// killed on drop.
struct Pebble {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    /// The root that pebble's issued certificates chain to.
    root: PathBuf,
}

impl Pebble {
    fn start() -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let mut openssl = Command::new("openssl");
        openssl
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        let out = run_with_timeout(openssl, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Apache's workers read the CA file mod_md is given.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (port, management) = (free_loopback_port(), free_loopback_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert, "privateKey": key,
            "httpPort": free_loopback_port(), "tlsPort": free_loopback_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "domainBlocklist": ["refused.example.test"],
        }});
        let file = dir.path().join("pebble.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&file)
            // Every name is valid (no challenge is really made); no
            // random sleeps or refused nonces, so a test takes its time.
            .env("PEBBLE_VA_ALWAYS_VALID", "1")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (apt-get install pebble)");
        let mut p = Pebble {
            root: dir.path().join("root.pem"),
            dir,
            child,
            port,
        };
        wait_for("pebble to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", management)).ok()
        });
        wait_for("pebble's port", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let root = Request::get(&format!("https://127.0.0.1:{management}/roots/0"))
            .cacert(&cert)
            .send();
        assert_eq!(root.code, 200, "pebble's root: {}", root.body);
        std::fs::write(&p.root, &root.body).unwrap();
        p.port = port;
        p
    }

    /// The node's `[https]` for this CA, serving TLS on `tls`.
    fn https_toml(&self, tls: u16) -> String {
        format!(
            "[https]\nenabled = true\nemail = \"ops@example.test\"\n\
             ca = \"https://127.0.0.1:{}/dir\"\nca_root = {:?}\nlisten = \"127.0.0.1:{tls}\"\n",
            self.port,
            self.dir.path().join("cert.pem"),
        )
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node with HTTPS from `pebble` on a port of its own.
struct TlsNode {
    node: Node,
    tls: u16,
    root: PathBuf,
}

impl TlsNode {
    fn start(pebble: &Pebble, extra: &str) -> TlsNode {
        let tls = free_loopback_port();
        let node = Node::start_with(&format!("{}{extra}", pebble.https_toml(tls)));
        TlsNode {
            node,
            tls,
            root: pebble.root.clone(),
        }
    }

    /// `https://host:PORT/path` with curl, checked against pebble's root.
    fn https(&self, host: &str, path: &str) -> Answer {
        Request::get(&format!("https://{host}:{}{path}", self.tls))
            .resolve(&format!("{host}:{}:127.0.0.1", self.tls))
            .cacert(&self.root)
            .send()
    }

    /// Waits until `host` answers `code` over HTTPS with a certificate
    /// curl trusts.
    fn wait_https(&self, host: &str, code: u16) -> Answer {
        wait_for(
            &format!("https://{host} to answer {code}"),
            Duration::from_secs(90),
            || {
                let a = self.https(host, "/");
                (a.code == code).then_some(a)
            },
        )
    }

    fn cmd(&self, args: &[&str]) -> Run {
        self.node.node_cmd(args)
    }
}

/// The line of a `domains` listing about `name`.
fn line_of(listing: &str, name: &str) -> String {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{listing}"))
        .to_string()
}

#[test]
fn https_serves_live_prev_and_aliases_and_http_redirects_to_it() {
    let pebble = Pebble::start();
    let n = TlsNode::start(
        &pebble,
        r#"
        [sites."blog.example.test"]
        aliases = ["www.blog.example.test"]
        [sites."shop.example.test"]
        aliases = ["shop.example.org"]
        redirect_aliases = false
        hsts = true
        "#,
    );
    let node = &n.node;
    let app = App::new();
    for body in ["v1\n", "v2\n"] {
        app.set_plain("blog", 1, body);
        node.deploy("blog.example.test", &app).success();
    }
    node.deploy("shop.example.test", &App::plain("shop", 1, "shop\n"))
        .success();

    assert_eq!(n.wait_https("blog.example.test", 200).body, "v2\n");
    assert_eq!(n.wait_https("prev.blog.example.test", 200).body, "v1\n");
    let a = n.wait_https("www.blog.example.test", 301);
    assert_eq!(
        a.location(),
        format!("https://blog.example.test:{}/", n.tls)
    );
    let a = n.https("www.blog.example.test", "/x?y=1");
    assert_eq!(
        a.location(),
        format!("https://blog.example.test:{}/x?y=1", n.tls)
    );
    // An alias that serves; HSTS only where asked for.
    assert_eq!(n.wait_https("shop.example.org", 200).body, "shop\n");
    let shop = n.wait_https("shop.example.test", 200);
    assert_eq!(
        shop.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(
        n.https("blog.example.test", "/")
            .header("strict-transport-security"),
        None
    );

    // Plain HTTP: 301 to HTTPS, path and query kept; not for ACME's
    // challenges, nor for N.host (no certificate: it stays on HTTP).
    let a = node.get("blog.example.test", "/a/b?c=d");
    assert_eq!(a.code, 301, "{}", a.body);
    assert_eq!(
        a.location(),
        format!("https://blog.example.test:{}/a/b?c=d", n.tls)
    );
    let a = node.get("blog.example.test", "/.well-known/acme-challenge/nothing");
    assert_ne!(a.code, 301, "{:?}", a.headers);
    assert_eq!(node.body("1.blog.example.test"), "v2\n");
    // A deploy's summary names the HTTPS address once it has one.
    app.set_plain("blog", 1, "v3\n");
    node.deploy("blog.example.test", &app)
        .success()
        .stdout_has(&format!("live at https://blog.example.test:{}/", n.tls));
    assert_eq!(n.https("blog.example.test", "/").body, "v3\n");
    assert_eq!(n.https("prev.blog.example.test", "/").body, "v2\n");

    // What `domains` shows: on the node, from a laptop, by hand.
    let listing = n.cmd(&["domains", "blog.example.test"]);
    let line = line_of(&listing.success().stdout, "www.blog.example.test");
    assert!(
        line.contains("alias, 301 to blog.example.test")
            && line.contains("certificate valid until"),
        "{line}"
    );
    let line = line_of(&listing.stdout, "prev.blog.example.test");
    assert!(line.contains("certificate valid until"), "{line}");
    let line = line_of(&listing.stdout, "1.blog.example.test");
    assert!(line.contains("HTTP only"), "{line}");
    let key = node.authorized_key("laptop");
    let listing = Laptop::new(node, &key).toppcloud(&["domains", "shop.example.test"]);
    let line = line_of(&listing.success().stdout, "shop.example.org");
    assert!(
        line.contains(" alias ") && line.contains("certificate valid until"),
        "{line}"
    );
    let other = node.limited_key("other", "shop.example.test");
    ssh(node, &other, "domains blog.example.test add x.example.test")
        .failure()
        .stderr_has("site blog.example.test not found, or this key (other) may not use it");

    // Names another site answers, and names no certificate is for.
    for (name, why) in [
        (
            "www.blog.example.test",
            "www.blog.example.test is already an alias of site blog.example.test",
        ),
        (
            "prev.blog.example.test",
            "prev.blog.example.test is a name of site blog.example.test",
        ),
        (
            "shop.example.test",
            "is already a name of site shop.example.test itself",
        ),
        ("*.example.test", "wildcards are not supported"),
        ("127.0.0.1", "an IP address is not a host name"),
        ("a..example.test", "empty label"),
    ] {
        n.cmd(&["domains", "shop.example.test", "add", name])
            .failure()
            .stderr_has(why);
    }
    Laptop::new(node, &key)
        .toppcloud(&["domains", "shop.example.test", "add", "blog.example.test"])
        .failure()
        .stderr_has("blog.example.test is a name of site blog.example.test");

    // A name the CA refuses: the alias works over HTTP, the CA's words are
    // in `domains` and the node's log, and nothing else changed.
    n.cmd(&[
        "domains",
        "blog.example.test",
        "add",
        "refused.example.test",
    ])
    .success()
    .stdout_has("refused.example.test added to blog.example.test");
    let a = node.get("refused.example.test", "/p?q");
    assert_eq!(a.code, 301, "{}", a.body);
    assert_eq!(
        a.location(),
        format!("http://blog.example.test:{}/p?q", node.apache_port)
    );
    wait_for(
        "the CA's refusal in domains",
        Duration::from_secs(60),
        || {
            let r = n.cmd(&["domains", "blog.example.test"]);
            r.stdout
                .lines()
                .any(|l| l.starts_with("refused.example.test") && l.contains("rejectedIdentifier"))
                .then_some(())
        },
    );
    node.wait_logged("no certificate: urn:ietf:params:acme:error:rejectedIdentifier");
    assert_eq!(n.https("blog.example.test", "/").body, "v3\n");

    // remove: the alias is gone from HTTP at once.
    n.cmd(&[
        "domains",
        "blog.example.test",
        "remove",
        "refused.example.test",
    ])
    .success();
    assert_eq!(node.get("refused.example.test", "/").code, 404);
    n.cmd(&["domains", "blog.example.test", "remove", "nope.example.test"])
        .failure()
        .stderr_has("nope.example.test is not an alias of blog.example.test (its aliases: www.blog.example.test)");
}

/// An app that answers what it was told of the request: scheme, client
/// address, HTTPS and whether the front's header reached it.
fn environ_app() -> App {
    let app = App::wsgi(
        "env",
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         words = [environ['wsgi.url_scheme'], environ.get('REMOTE_ADDR', '-'),\n             \
         environ.get('HTTPS', '-'), environ.get('HTTP_X_TOPPCLOUD_FRONT', '-'),\n             \
         environ.get('TC_CLIENT', '-'), environ.get('HTTP_X_FORWARDED_PROTO', '-'),\n             \
         environ.get('HTTP_X_FORWARDED_FOR', '-')]\n    \
         return [(' '.join(words) + '\\n').encode()]\n",
    );
    app.file("static/docs/index.html", "docs\n");
    app
}

#[test]
fn an_app_behind_https_sees_https_and_the_clients_address() {
    let pebble = Pebble::start();
    // One cell to start with: the second site is in a grown part of the
    // pool, another Apache, reached through the first one.
    let n = TlsNode::start(&pebble, "[apache]\ncells = 1\n");
    let node = &n.node;
    node.deploy("env.example.test", &environ_app()).success();
    node.deploy("grown.example.test", &environ_app())
        .success()
        .stdout_has("growing it to 2 cells");
    for site in ["env.example.test", "grown.example.test"] {
        // Through the front: HTTPS and curl's address, whatever curl claims.
        assert_eq!(
            n.wait_https(site, 200).body,
            "https 127.0.0.1 on - - https 127.0.0.1\n",
            "{site}"
        );
        let a = Request::get(&format!("https://{site}:{}/", n.tls))
            .resolve(&format!("{site}:{}:127.0.0.1", n.tls))
            .cacert(&n.root)
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Toppcloud-Front", &"0".repeat(32))
            .header("X-Toppcloud-Hop", &"0".repeat(32))
            .send();
        assert_eq!(a.body, "https 127.0.0.1 on - - https 127.0.0.1\n", "{site}");
        // A static directory's redirect stays on HTTPS.
        let a = n.https(site, "/docs?x=1");
        assert_eq!(a.code, 301, "{}", a.body);
        assert_eq!(a.location(), format!("https://{site}:{}/docs/?x=1", n.tls));
        assert_eq!(n.https(site, "/docs/").body, "docs\n");
    }
}

#[test]
fn a_plain_http_request_cannot_claim_https_or_a_client_address() {
    let pebble = Pebble::start();
    let n = TlsNode::start(&pebble, "");
    let node = &n.node;
    node.deploy("env.example.test", &environ_app()).success();
    n.wait_https("env.example.test", 200);
    // 1.env stays on plain HTTP (no certificate): whatever a client claims
    // there, the app sees plain HTTP from the client's own address, and
    // none of the front's headers.
    for (name, value) in [
        ("X-Forwarded-Proto", "https"),
        ("X-Toppcloud-Front", "00000000000000000000000000000000"),
        ("X-Toppcloud-Front", "on"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Ssl", "on"),
    ] {
        let a = node
            .site("1.env.example.test", "/")
            .header(name, value)
            .header("X-Forwarded-For", "203.0.113.9")
            .send();
        assert_eq!(a.code, 200, "{name}: {}", a.body);
        assert_eq!(a.body, "http 127.0.0.1 - - - - -\n", "{name}: {value}");
    }
    // The name with a certificate redirects to HTTPS, claim or not.
    let a = node
        .site("env.example.test", "/")
        .header("X-Forwarded-Proto", "https")
        .header("X-Toppcloud-Front", &"0".repeat(32))
        .send();
    assert_eq!(a.code, 301, "{}", a.body);
    assert_eq!(a.location(), format!("https://env.example.test:{}/", n.tls));
}

#[test]
fn a_tls_front_that_cannot_start_leaves_the_sites_on_http_with_its_error() {
    let pebble = Pebble::start();
    // Another program holds the TLS port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = taken.local_addr().unwrap().port();
    let node = Node::start_with(&pebble.https_toml(tls));
    node.deploy("blog.example.test", &App::plain("blog", 1, "blog\n"))
        .success();
    assert_eq!(node.body("blog.example.test"), "blog\n");
    node.wait_logged("the TLS front did not start: every name stays on HTTP");
    let listing = node.node_cmd(&["domains", "blog.example.test"]);
    let line = line_of(&listing.success().stdout, "blog.example.test");
    assert!(
        line.contains("HTTP only: the TLS front does not run") && line.contains("in use"),
        "{line}"
    );
    drop(taken);
}

#[test]
fn aliases_redirect_or_serve_over_plain_http_with_https_off() {
    let node = Node::start_with(
        r#"
        [sites.blog]
        aliases = ["www.blog.localhost"]
        [sites.shop]
        aliases = ["shop.example.org"]
        redirect_aliases = false
        "#,
    );
    node.deploy("blog", &App::plain("blog", 1, "blog\n"))
        .success();
    node.deploy("shop", &App::plain("shop", 1, "shop\n"))
        .success();
    let a = node.get("www.blog.localhost", "/x/y?z=1");
    assert_eq!(a.code, 301, "{}", a.body);
    assert_eq!(
        a.location(),
        format!("http://blog.localhost:{}/x/y?z=1", node.apache_port)
    );
    assert_eq!(node.body("shop.example.org"), "shop\n");
    assert_eq!(node.body("blog.localhost"), "blog\n");

    node.node_cmd(&["domains", "shop", "add", "www.shop.localhost"])
        .success()
        .stdout_has("www.shop.localhost added to shop.localhost");
    assert_eq!(node.body("www.shop.localhost"), "shop\n");
    let listing = node.node_cmd(&["domains", "shop"]);
    let line = line_of(&listing.success().stdout, "www.shop.localhost");
    assert!(
        line.contains(" alias ") && line.contains("HTTP only (HTTPS is off on this node)"),
        "{line}"
    );
    node.node_cmd(&["domains", "blog", "add", "www.shop.localhost"])
        .failure()
        .stderr_has("www.shop.localhost is already an alias of site shop.localhost");
    node.node_cmd(&["domains", "blog", "add", "2.shop.localhost"])
        .failure()
        .stderr_has("2.shop.localhost is a name of site shop.localhost");
    // A new site may not take a name that is another site's alias.
    node.deploy("www.shop.localhost", &App::plain("x", 1, "x\n"))
        .failure()
        .stderr_has("www.shop.localhost is an alias of site shop.localhost: nothing was deployed");
    assert_eq!(node.body("www.shop.localhost"), "shop\n");
    node.node_cmd(&["domains", "nosuch", "add", "a.example.org"])
        .failure()
        .stderr_has("site nosuch.localhost not found");
    // Kept across a restart of the node.
    node.node_cmd(&["domains", "blog", "remove", "www.blog.localhost"])
        .success();
    let mut node = node;
    node.stop();
    node.spawn();
    assert_eq!(node.body("www.shop.localhost"), "shop\n");
    assert_eq!(node.get("www.blog.localhost", "/").code, 404);
}

#[test]
fn alias_conflicts_and_bad_names_in_the_config_are_refused() {
    for (extra, why) in [
        (
            "[sites.a]\naliases = [\"b.localhost\"]\n[sites.b]\n",
            "[sites.\"a.localhost\"] aliases: b.localhost is a name of site b.localhost",
        ),
        (
            "[sites.a]\naliases = [\"prev.a.localhost\"]\n",
            "prev.a.localhost is a name of site a.localhost itself",
        ),
        (
            "[sites.a]\naliases = [\"x.example.org\"]\n[sites.b]\naliases = [\"x.example.org\"]\n",
            "x.example.org is already an alias of site a.localhost",
        ),
        (
            "[sites.a]\naliases = [\"*.example.org\"]\n",
            "wildcards are not supported",
        ),
        ("[sites.a]\naliases = [\"10.1.2.3\"]\n", "an IP address"),
        ("[sites.a]\naliases = [\"a..example.org\"]\n", "empty label"),
        ("[https]\nenabled = true\n", "[https] enabled needs email"),
        (
            "[https]\nemail = \"ops@example.org\"\nca = \"ftp://x\"\n",
            "[https] ca must be an ACME directory URL",
        ),
    ] {
        let err = node_run_refused(extra);
        assert!(err.contains(why), "{extra}: {err}");
    }
}

#[test]
fn adding_a_site_and_its_certificates_fails_no_request_on_other_sites() {
    let pebble = Pebble::start();
    let n = TlsNode::start(
        &pebble,
        "[sites.\"shop.example.test\"]\naliases = [\"www.shop.example.test\"]\n",
    );
    let node = &n.node;
    node.deploy("blog.example.test", &App::plain("blog", 1, "blog\n"))
        .success();
    n.wait_https("blog.example.test", 200);
    wait_for("blog's certificates", Duration::from_secs(60), || {
        let out = n.cmd(&["domains", "blog.example.test"]).stdout;
        (out.matches("certificate valid until").count() == 2).then_some(())
    });

    // The other site, over HTTP (its N.host keeps no certificate) on
    // kept-alive connections, and over HTTPS with a new one each time.
    let stop = Arc::new(AtomicBool::new(false));
    let plain = {
        let (stop, port) = (stop.clone(), node.apache_port);
        std::thread::spawn(move || load(port, "1.blog.example.test", "blog\n", stop))
    };
    let tls = {
        let stop = stop.clone();
        let (port, root) = (n.tls, n.root.clone());
        std::thread::spawn(move || {
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) && sent < 5000 {
                sent += 1;
                let a = https_once(port, &root, "blog.example.test");
                if a != "200 blog\n" {
                    failed.push(a);
                }
            }
            (sent, failed)
        })
    };

    let log_start = node.log().len();
    let apache_log = node.data.join("apache/logs/error.log");
    let apache_log_start = std::fs::read_to_string(&apache_log)
        .unwrap_or_default()
        .len();
    let started = Instant::now();
    node.deploy("shop.example.test", &App::plain("shop", 1, "shop\n"))
        .success();
    n.wait_https("shop.example.test", 200);
    n.wait_https("www.shop.example.test", 301);
    eprintln!(
        "HTTPS served on the new site {:?} after its deploy began",
        started.elapsed()
    );
    wait_for("shop's certificates", Duration::from_secs(60), || {
        let out = n.cmd(&["domains", "shop.example.test"]).stdout;
        (out.matches("certificate valid until").count() == 3).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, retried) = plain.join().expect("the load thread");
    let (tls_sent, tls_failed) = tls.join().expect("the https thread");
    eprintln!(
        "other site: {sent} HTTP requests ({retried} retried once after an idle close), {tls_sent} HTTPS"
    );
    assert!(sent > 0 && tls_sent > 0);
    let apache_text = std::fs::read_to_string(&apache_log).unwrap_or_default();
    let apache_errors: String = apache_text
        .lines()
        .filter(|l| l.contains(":error]") && !l.contains("toppcloud: slot"))
        .take(20)
        .map(|l| format!("{l}\n"))
        .collect();
    let restarts = node.log()[log_start..]
        .matches("https: the TLS front restarted gracefully")
        .count();
    eprintln!(
        "failed on the other site during {restarts} graceful restart(s): {} of {sent} over HTTP, {} of {tls_sent} over HTTPS\nApache's errors:\n{apache_errors}",
        failed.len(),
        tls_failed.len(),
    );
    // The new site's names cost two graceful restarts (one for mod_md to
    // take the names, one to put their certificates in use), whatever
    // their number: batched, never one per name.
    assert!(
        (1..=2).contains(&restarts),
        "{restarts} restarts:\n{}",
        node.log()
    );
    // The certificates restart the TLS front only (no mod_wsgi daemon
    // there): the sites' Apache was never restarted, and not one request
    // failed on the other site.
    assert!(
        !apache_text
            .get(apache_log_start..)
            .unwrap_or_default()
            .to_lowercase()
            .contains("graceful restart"),
        "the sites' Apache restarted:\n{apache_text}"
    );
    assert!(
        failed.is_empty() && tls_failed.is_empty(),
        "failed on the other site: {} of {sent} over HTTP, {} of {tls_sent} over HTTPS: {:?}\nApache's errors:\n{apache_errors}",
        failed.len(),
        tls_failed.len(),
        failed
            .iter()
            .chain(tls_failed.iter())
            .take(5)
            .collect::<Vec<_>>(),
    );
}

/// One HTTPS GET with curl on a new connection: "STATUS BODY", or curl's
/// error.
fn https_once(port: u16, root: &Path, host: &str) -> String {
    let mut cmd = client_command("curl");
    cmd.args(["-sS", "--max-time", "30", "-w", "%{http_code} "])
        .arg("--cacert")
        .arg(root)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}/"));
    let out = run_with_timeout(cmd, Duration::from_secs(40));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The body comes first, then the status that -w writes.
    match text.rsplit_once(' ') {
        Some((body_and_code, _)) if out.status.success() => {
            let (body, code) = body_and_code.split_at(body_and_code.len().saturating_sub(3));
            format!("{code} {body}")
        }
        _ => format!(
            "curl failed: {text} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}
