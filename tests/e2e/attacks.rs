//! Attacks on a node run as root (as `provisioning/setup-node` runs it and
//! as CI runs these tests), replayed with the real git, curl and Apache:
//! each test is named for what it tries, asserts the refusal the attacker
//! sees, and that nothing outside the attacker's own site changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{Answer, App, Node, git, run_with_timeout, url_encode};

/// An app served by `main.py` whose WSGI function body is `code` (it has
/// `environ`, `qs` (the query string) and must return a str).
fn python_app(name: &str, code: &str) -> App {
    let app = App::new();
    let body: String = code.lines().map(|l| format!("    {l}\n")).collect();
    app.file(
        "app.ini",
        &format!("[production]\napp_name = {name}\nversion = 1\nrunner = main.py\n"),
    )
    .file(
        "main.py",
        &format!(
            "import os, sys, json, signal, socket, urllib.parse\n\
             def handle(environ, qs):\n{body}\n\
             def application(environ, start_response):\n    \
             qs = urllib.parse.parse_qs(environ.get('QUERY_STRING', ''))\n    \
             out = handle(environ, qs)\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [out.encode()]\n"
        ),
    );
    app
}

/// Pushes `app` to `site` with the real git; returns what git said.
fn push(node: &Node, key: &Path, site: &str, app: &App) -> crate::support::Run {
    app.git_init(key);
    git(
        &app.path,
        key,
        &["remote", "add", "toppcloud", &node.ssh_url(site)],
    )
    .success();
    git(&app.path, key, &["push", "toppcloud", "main"])
}

/// The uid every process of the site's slot daemons runs as, from /proc.
fn daemon_uids(node: &Node) -> Vec<(String, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).to_string();
        if !cmd.starts_with("(wsgi:tc_s") {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: u32 = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let apache: u32 = std::fs::read_to_string(node.data.join("apache/run/httpd.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1);
        if ppid != apache {
            continue;
        }
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}")) {
            out.push((cmd.trim_end_matches('\0').to_string(), m.uid()));
        }
    }
    out
}

#[test]
fn a_sites_app_cannot_reach_another_sites_files_the_node_secrets_or_its_daemons() {
    root_only!();
    let node = Node::start_with("[http]\nadmin_token = \"tok-not-for-apps\"\n");
    let key = node.authorized_key("owner");
    // The victim: pushed (so it has a repository), answering with its pid.
    let victim = python_app(
        "victim",
        "return 'victim pid=%d uid=%d' % (os.getpid(), os.getuid())",
    );
    push(&node, &key, "victim", &victim).success();
    let body = node.body("victim.localhost");
    let victim_pid: u32 = body
        .split("pid=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("victim pid");
    // The spy tries what the test asks, one path or action per request.
    let spy = python_app(
        "spy",
        "what = qs.get('what', [''])[0]\n\
         arg = qs.get('arg', [''])[0]\n\
         try:\n    \
             if what == 'read':\n        \
                 with open(arg, 'rb') as f:\n            \
                     return 'ALLOWED ' + repr(f.read(40))\n    \
             if what == 'list':\n        \
                 return 'ALLOWED ' + repr(os.listdir(arg)[:5])\n    \
             if what == 'write':\n        \
                 with open(arg, 'w') as f:\n            \
                     f.write('planted')\n        \
                 return 'ALLOWED'\n    \
             if what == 'kill':\n        \
                 os.kill(int(arg), 0)\n        \
                 return 'ALLOWED'\n    \
             if what == 'connect':\n        \
                 s = socket.socket(socket.AF_UNIX)\n        \
                 s.connect(arg)\n        \
                 return 'ALLOWED'\n    \
             if what == 'id':\n        \
                 return 'uid=%d gid=%d groups=%r' % (os.getuid(), os.getgid(), os.getgroups())\n    \
             return 'unknown'\n\
         except OSError as e:\n    \
             return 'denied %s' % e.__class__.__name__",
    );
    node.deploy("spy", &spy).success();
    let ask = |what: &str, arg: &Path| -> String {
        let path = format!(
            "/?what={what}&arg={}",
            url_encode(&arg.display().to_string())
        );
        let Answer { code, body, .. } = node.get("spy.localhost", &path);
        assert_eq!(code, 200, "{body}");
        body
    };
    let id = ask("id", Path::new(""));
    assert!(!id.starts_with("uid=0 "), "the app runs as root: {id}");
    assert!(
        !id.contains("gid=0"),
        "the app runs with root's group: {id}"
    );

    let data = &node.data;
    let victim_site = data.join("sites/victim.localhost");
    let victim_release = victim_site.join("releases/1");
    // Sanity: the spy reads its own release, so a refusal below means
    // something.
    let own = ask(
        "read",
        &data.join("sites/spy.localhost/releases/1/app/main.py"),
    );
    assert!(
        own.starts_with("ALLOWED"),
        "the spy cannot read itself: {own}"
    );

    let forbidden: Vec<(&str, PathBuf)> = vec![
        ("read", victim_release.join("app/main.py")),
        ("read", victim_release.join("release.toml")),
        ("list", victim_release.join("app")),
        ("read", victim_site.join("site.toml")),
        ("read", victim_site.join("deploys.jsonl")),
        ("list", data.join("repos/victim.localhost.git")),
        ("read", data.join("repos/victim.localhost.git/config")),
        ("read", node.config.clone()),
        ("read", data.join("ssh_host_ed25519_key")),
        ("read", data.join("authorized_keys")),
        ("read", data.join("cells.toml")),
        ("read", data.join("apache/sites.conf")),
        ("read", data.join("apache/httpd.conf")),
        ("list", data.join("sites")),
        ("write", victim_release.join("app/planted.py")),
        ("write", data.join("planted")),
        ("write", data.join("slots/planted")),
        ("connect", data.join("control.sock")),
        ("kill", PathBuf::from(victim_pid.to_string())),
    ];
    for (what, arg) in &forbidden {
        let answer = ask(what, arg);
        assert!(
            answer.starts_with("denied"),
            "the spy could {what} {}: {answer}",
            arg.display()
        );
    }
    assert!(!victim_release.join("app/planted.py").exists());
    assert!(!data.join("planted").exists());
    // The victim still serves, from its own account.
    assert!(node.body("victim.localhost").starts_with("victim pid="));
    let uids = daemon_uids(&node);
    assert!(
        uids.iter().all(|(_, u)| *u != 0),
        "a daemon runs as root: {uids:?}"
    );
}

#[test]
fn each_site_runs_as_its_own_account_and_never_in_another_sites_daemon() {
    root_only!();
    // A short request timeout: a daemon that ignores the polite signal is
    // killed once it has had that long (plus a margin).
    let node = Node::start_with("[apache]\nrequest_timeout = 2\n");
    // Site A tries to keep its daemons alive past their retirement and to
    // answer for any host it is asked about; site B's cookie must never
    // reach it.
    let hostile = |v: u32| {
        python_app(
            "hostile",
            &format!(
                "import ctypes\n\
                 ctypes.CDLL(None).signal(signal.SIGUSR1, 1)  # SIG_IGN: refuse to retire\n\
                 host = environ.get('HTTP_HOST', '')\n\
                 cookie = environ.get('HTTP_COOKIE', '')\n\
                 return 'hostile v{v} host=%s cookie=%s uid=%d' % (host, cookie, os.getuid())"
            ),
        )
    };
    let honest = |v: u32| {
        python_app(
            "honest",
            &format!(
                "return 'honest v{v} cookie=%s uid=%d' % (environ.get('HTTP_COOKIE', ''), os.getuid())"
            ),
        )
    };
    node.deploy("hostile", &hostile(1)).success();
    node.deploy("honest", &honest(1)).success();
    let uid_of = |body: &str| -> String {
        body.rsplit("uid=")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let a = node.body("hostile.localhost");
    let b = node.body("honest.localhost");
    assert_ne!(
        uid_of(&a),
        uid_of(&b),
        "two sites share an account: {a} / {b}"
    );
    assert_ne!(uid_of(&a), "0");
    assert_ne!(uid_of(&b), "0");
    // Enough deploys of both that every daemon of A's cell has been retired
    // at least once (and, ignoring SIGUSR1, killed), interleaved with B's.
    for v in 2..7 {
        node.deploy("hostile", &hostile(v)).success();
        node.deploy("honest", &honest(v)).success();
        let body = node
            .site("honest.localhost", "/")
            .header("Cookie", "session=b-secret")
            .send()
            .body;
        assert!(
            body.starts_with(&format!("honest v{v} cookie=session=b-secret")),
            "site B was answered by someone else: {body}"
        );
        let a = node.body("hostile.localhost");
        assert!(a.starts_with(&format!("hostile v{v} ")), "{a}");
        assert!(!a.contains("b-secret"), "{a}");
    }
    // Every retired daemon of A is gone: none of A's daemons runs an old
    // release (they would have been killed, ignoring SIGUSR1 or not).
    let uids = daemon_uids(&node);
    assert!(uids.iter().all(|(_, u)| *u != 0), "{uids:?}");
}

#[test]
fn a_link_counted_as_inside_but_leading_outside_fails_the_push() {
    root_only!();
    let node = Node::start();
    let key = node.authorized_key("owner");
    let app = App::plain("blog", 1, "live\n");
    push(&node, &key, "blog", &app).success();
    // static/z -> . makes z/z/... stay in static/, so a lexical count of
    // the `..`s says "inside" while the kernel climbs out to /.
    let secret = node.dir.path().join("root-only-secret");
    std::fs::write(&secret, "TOPSECRET\n").expect("secret");
    std::fs::create_dir_all(app.path.join("static")).expect("static");
    std::os::unix::fs::symlink(".", app.path.join("static/z")).expect("z");
    let ups = 16;
    let target = format!(
        "{}{}{}",
        "z/".repeat(ups),
        "../".repeat(ups),
        secret.display().to_string().trim_start_matches('/')
    );
    std::os::unix::fs::symlink(&target, app.path.join("static/leak")).expect("leak");
    app.commit(&key, "leak");
    let pushed = git(&app.path, &key, &["push", "toppcloud", "main"]);
    pushed
        .failure()
        .stderr_has("static/leak: symlink points outside the app")
        .stderr_lacks("TOPSECRET");
    assert_eq!(node.body("blog.localhost"), "live\n");
    let Answer { code, body, .. } = node.get("blog.localhost", "/leak");
    assert!(!body.contains("TOPSECRET"), "{code} {body}");
}

#[test]
fn a_requirements_file_linked_outside_the_app_is_never_read() {
    root_only!();
    let node = Node::start();
    let key = node.authorized_key("owner");
    let secret = node.dir.path().join("root-only-secret");
    std::fs::write(&secret, "TOPSECRET==1.0\n").expect("secret");
    let app = App::plain("blog", 1, "live\n");
    std::os::unix::fs::symlink(".", app.path.join("z")).expect("z");
    let target = format!(
        "{}{}{}",
        "z/".repeat(16),
        "../".repeat(16),
        secret.display().to_string().trim_start_matches('/')
    );
    std::os::unix::fs::symlink(&target, app.path.join("requirements.txt")).expect("link");
    push(&node, &key, "blog", &app)
        .failure()
        .stderr_has("requirements.txt: symlink points outside the app")
        .stderr_lacks("TOPSECRET");
    let code = node.get("blog.localhost", "/").code;
    assert_eq!(code, 404, "a failed first deploy serves nothing");
}

#[test]
fn a_build_backend_in_the_app_runs_as_the_sites_account_not_root() {
    root_only!();
    let node = Node::start();
    let authorized = node.data.join("authorized_keys");
    let key = node.authorized_key("owner");
    let keys_before = std::fs::read_to_string(&authorized).expect("keys");
    let planted = node.data.join("planted-by-build");
    let app = App::plain("blog", 1, "live\n");
    app.file("requirements.txt", "./evil\n")
        .file(
            "evil/pyproject.toml",
            "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n",
        )
        .file(
            "evil/backend.py",
            &format!(
                "import os, sys\n\
                 print('evil: uid=%d' % os.getuid(), file=sys.stderr)\n\
                 for target in [{keys:?}, {planted:?}]:\n    \
                 try:\n        \
                 with open(target, 'a') as f:\n            \
                 f.write('ssh-ed25519 AAAA planted\\n')\n        \
                 print('evil: WROTE ' + target, file=sys.stderr)\n    \
                 except OSError as e:\n        \
                 print('evil: cannot write %s: %s' % (target, e.strerror), file=sys.stderr)\n\
                 raise SystemExit('evil backend stops here')\n",
                keys = authorized.display().to_string(),
                planted = planted.display().to_string(),
            ),
        );
    // The backend's own words come back to the pusher: who it ran as, and
    // what it could not do.
    let pushed = push(&node, &key, "blog", &app);
    pushed
        .failure()
        .stderr_has("evil: uid=")
        .stderr_has("evil: cannot write")
        .stderr_lacks("evil: WROTE");
    assert!(
        !pushed.stderr.contains("evil: uid=0 ") && !pushed.stderr.contains("evil: uid=0\n"),
        "the build ran as root:\n{}",
        pushed.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&authorized).expect("keys"),
        keys_before
    );
    assert!(!planted.exists());
}

/// A wheel of `tinypkg` whose module says `value`, in `dir`.
fn tiny_wheel(dir: &Path, version: &str, value: &str) {
    std::fs::create_dir_all(dir).expect("wheel dir");
    let script = format!(
        "import zipfile\n\
         name = {dir:?} + '/tinypkg-{version}-py3-none-any.whl'\n\
         with zipfile.ZipFile(name, 'w') as z:\n    \
         z.writestr('tinypkg/__init__.py', 'VALUE = {value:?}\\n')\n    \
         z.writestr('tinypkg-{version}.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: tinypkg\\nVersion: {version}\\n')\n    \
         z.writestr('tinypkg-{version}.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n    \
         z.writestr('tinypkg-{version}.dist-info/RECORD', 'tinypkg/__init__.py,,\\ntinypkg-{version}.dist-info/METADATA,,\\ntinypkg-{version}.dist-info/WHEEL,,\\ntinypkg-{version}.dist-info/RECORD,,\\n')\n",
        dir = dir.display().to_string()
    );
    let mut cmd = crate::support::client_command("/usr/bin/python3");
    cmd.arg("-c").arg(script);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
}

/// An app that imports tinypkg from wheels of its own (no index reached).
fn tiny_app(name: &str, value: &str) -> App {
    let app = App::new();
    app.file(
        "app.ini",
        &format!("[production]\napp_name = {name}\nversion = 1\nrunner = main.py\n"),
    )
    .file(
        "requirements.txt",
        "--no-index\n--find-links ./wheels\ntinypkg\n",
    )
    .file(
        "main.py",
        "import tinypkg\n\
         def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [tinypkg.VALUE.encode()]\n",
    );
    tiny_wheel(&app.path.join("wheels"), "1.0", value);
    app
}

#[test]
fn identical_requirements_from_another_site_cannot_poison_an_environment() {
    root_only!();
    let node = Node::start();
    // Same requirements text, each app with its own wheel: the first site
    // to deploy must not decide what the second imports.
    node.deploy("first", &tiny_app("first", "poisoned"))
        .success();
    node.deploy("second", &tiny_app("second", "good")).success();
    assert_eq!(node.body("first.localhost"), "poisoned");
    assert_eq!(node.body("second.localhost"), "good");
    // And the environment the second site runs is not writable by it.
    let venvs = node.data.join("sites/second.localhost/venvs");
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(&venvs).expect("venvs").flatten() {
        let m = std::fs::metadata(e.path()).expect("venv");
        assert_eq!(m.uid(), 0, "{} is not root's", e.path().display());
        assert_eq!(m.mode() & 0o022, 0, "{} is writable", e.path().display());
    }
}

#[test]
fn uv_config_in_the_app_is_ignored() {
    root_only!();
    let node = Node::start();
    let app = tiny_app("blog", "good");
    // A uv.toml (and [tool.uv]) in the app would point uv at other wheels,
    // with a higher version, if uv were allowed to read it.
    tiny_wheel(&app.path.join("evil-wheels"), "9.0", "from uv.toml");
    app.file("uv.toml", "[pip]\nfind-links = [\"./evil-wheels\"]\n");
    node.deploy("blog", &app).success();
    assert_eq!(node.body("blog.localhost"), "good");
}

#[test]
fn slots_are_reached_only_with_the_nodes_secret_and_apps_never_see_it() {
    let node = Node::start();
    // The app remembers every header it was ever sent (the node's own check
    // request, with the site's real Host, included) and shows them.
    let app = |v: u32| {
        python_app(
            "blog",
            &format!(
                "global SEEN\n\
                 try:\n    SEEN\n\
                 except NameError:\n    SEEN = set()\n\
                 SEEN.update('%s=%s' % (k, v) for k, v in environ.items() if k.startswith('HTTP_'))\n\
                 return 'v{v} ' + ' '.join(sorted(SEEN))"
            ),
        )
    };
    node.deploy("blog", &app(1)).success();
    node.deploy("blog", &app(2)).success();
    let seen = node.body("blog.localhost");
    assert!(seen.starts_with("v2 "), "{seen}");
    assert!(
        !seen.contains("HTTP_X_TOPPCLOUD"),
        "the app saw the node's secret: {seen}"
    );
    // The node's check came with the site's real Host.
    assert!(seen.contains("HTTP_HOST=blog.localhost"), "{seen}");
    // From loopback, without the secret (or with a guess), naming a slot
    // reaches nothing but what the route map says: the previous release's
    // slot is not exposed at the live host.
    for slot in ["s000", "s001", "s002", "s003"] {
        let guessed = node
            .site("blog.localhost", "/")
            .header("X-Toppcloud-Check", "guess")
            .header("X-Toppcloud-Slot", slot)
            .send();
        assert_eq!(guessed.code, 200);
        assert!(guessed.body.starts_with("v2 "), "{slot}: {}", guessed.body);
        let host = format!("{slot}.check.toppcloud.invalid");
        let Answer { code, body, .. } = node.get(&host, "/");
        assert_eq!(code, 404, "{host} answered {code}: {body}");
    }
}

#[test]
fn a_config_holding_secrets_that_others_can_read_is_refused() {
    let err = crate::support::node_run_refused("[http]\nadmin_token = \"s3cret\"\n");
    assert!(err.contains("holds secrets"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// Every mod_wsgi daemon is a fork of Apache's root parent and keeps what
/// the parent parsed; an app can read its own memory. The node's secrets
/// (for its check and load requests) must not be there: the app looks for
/// each in halves, so the whole secret never exists in its own memory
/// unless it came from Apache.
#[test]
fn an_app_cannot_find_the_nodes_secrets_in_its_own_memory() {
    root_only!();
    // One cell to start with: the second spy runs in a grown part of the
    // pool, whose Apache is handed every request with the hop secret.
    let node = Node::start_with("[apache]\ncells = 1\n");
    let secrets = std::fs::read_to_string(node.data.join("apache/secrets.map"))
        .expect("the node's secrets map");
    let mut halves = String::new();
    for line in secrets.lines() {
        let (name, token) = line.split_once(' ').expect("name value");
        // The map also says where the node's door is: no secret.
        if name == "door" {
            continue;
        }
        assert_eq!(token.len(), 32, "{line}");
        let (a, b) = token.split_at(16);
        halves.push_str(&format!("('{name}', {a:?}, {b:?}), "));
    }
    assert_eq!(
        halves.matches("('").count(),
        4,
        "check, load, TLS front and shard hop secrets: {secrets}"
    );
    let app = python_app(
        "spy",
        &format!(
            r#"import ctypes
found = []
with open('/proc/self/maps') as maps:
    regions = [l.split() for l in maps]
for r in regions:
    # The process's own heap and anonymous memory (where a parsed
    # configuration lives), read in place with ctypes as any app can.
    if 'r' not in r[1] or (len(r) > 5 and r[5] not in ('[heap]', '[stack]')):
        continue
    lo, hi = (int(x, 16) for x in r[0].split('-'))
    data = ctypes.string_at(lo, hi - lo)
    for name, a, b in [{halves}]:
        i = data.find(a.encode())
        while i >= 0:
            if data[i + 16:i + 32] == b.encode():
                found.append(name)
            i = data.find(a.encode(), i + 1)
return 'found: ' + ' '.join(sorted(set(found))) if found else 'clean'"#
        ),
    );
    node.deploy("spy", &app).success();
    node.deploy("spy2", &app)
        .success()
        .stdout_has("growing it to 2 cells");
    for site in ["spy.localhost", "spy2.localhost"] {
        // Twice: the second time after a request was handed on with the
        // secret.
        for _ in 0..2 {
            let answer = node.get(site, "/");
            assert_eq!(answer.code, 200, "{site}: {}", answer.body);
            assert_eq!(answer.body, "clean", "{site} read the node's secrets");
        }
    }
}
