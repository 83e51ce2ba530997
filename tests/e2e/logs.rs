//! `toppcloud logs SITE [-f] [-n N] [--access]`: each site's own error and
//! access logs, from a laptop through the node's SSH door (with the key's
//! site rights), by a bare ssh, and on the node; and that one site's app can
//! neither read nor write another's logs.

use std::path::Path;
use std::time::Duration;

use crate::support::{App, Background, Laptop, Node, Run, run_with_timeout, ssh, url_encode};

/// Site A: noisy on stderr at import, a traceback at /boom, the logging
/// module at /log, and `said X` on stderr at /say?x=X.
fn noisy_app() -> App {
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = noisy\nversion = 1\nrunner = main.py\n",
    )
    .file(
        "main.py",
        "import logging, sys, urllib.parse\n\
         print('noisy import line', file=sys.stderr)\n\
         print('noisy stdout line')\n\
         def application(environ, start_response):\n    \
         path = environ.get('PATH_INFO', '')\n    \
         qs = urllib.parse.parse_qs(environ.get('QUERY_STRING', ''))\n    \
         if path == '/boom':\n        \
         raise ValueError('kaboom-A')\n    \
         if path == '/log':\n        \
         logging.getLogger('noisy').error('logged-A')\n    \
         if path == '/say':\n        \
         print('said %s' % qs.get('x', [''])[0], file=sys.stderr)\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [b'noisy\\n']\n",
    );
    app
}

/// What site B's `forge` does: writes a request line in A's name (its
/// slots are s000..) into every pipe it holds or can reach through the
/// daemons of its own account, and reads what it can from them.
const FORGE: &str = "import os, stat, fcntl\n\
def pipes():\n    \
    fds = []\n    \
    for name in os.listdir('/proc/self/fd'):\n        \
        try:\n            \
            if stat.S_ISFIFO(os.fstat(int(name)).st_mode):\n                \
                fds.append(int(name))\n        \
        except OSError:\n            \
            pass\n    \
    uid = os.getuid()\n    \
    for pid in os.listdir('/proc'):\n        \
        if not pid.isdigit() or int(pid) == os.getpid():\n            \
            continue\n        \
        try:\n            \
            if os.stat('/proc/' + pid).st_uid != uid:\n                \
                continue\n            \
            for name in os.listdir('/proc/%s/fd' % pid):\n                \
                path = '/proc/%s/fd/%s' % (pid, name)\n                \
                if os.readlink(path).startswith('pipe:'):\n                    \
                    fds.append(os.open(path, os.O_RDWR | os.O_NONBLOCK))\n        \
        except OSError:\n            \
            pass\n    \
    return fds\n\
def forge():\n    \
    done = []\n    \
    for fd in pipes():\n        \
        try:\n            \
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)\n            \
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)\n            \
            if flags & os.O_ACCMODE != os.O_RDONLY:\n                \
                os.write(fd, b's000 noisy.localhost 6.6.6.6 - - [x] \"GET /FORGED HTTP/1.1\" 200 1\\n')\n                \
                done.append('wrote %d' % fd)\n            \
            if flags & os.O_ACCMODE != os.O_WRONLY:\n                \
                got = os.read(fd, 4096)\n                \
                if b'GET /' in got:\n                    \
                    done.append('read %r' % got[:80])\n        \
        except OSError:\n            \
            pass\n    \
    return 'forge ' + ', '.join(done)\n";

/// Site B: tries, as its own account, what the test asks of a path:
/// `read`, `append` or `list`, or `forge` (see [`FORGE`]).
fn quiet_app() -> App {
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = quiet\nversion = 1\nrunner = main.py\n",
    )
    .file(
        "main.py",
        &format!(
            "{FORGE}import os, urllib.parse\n\
         def handle(qs):\n    \
         what = qs.get('what', [''])[0]\n    \
         arg = qs.get('arg', [''])[0]\n    \
         try:\n        \
         if what == 'read':\n            \
         with open(arg, 'rb') as f:\n                \
         return 'ALLOWED ' + repr(f.read(40))\n        \
         if what == 'append':\n            \
         with open(arg, 'a') as f:\n                \
         f.write('planted by quiet\\n')\n            \
         return 'ALLOWED'\n        \
         if what == 'list':\n            \
         return 'ALLOWED ' + repr(os.listdir(arg))\n        \
         if what == 'forge':\n            \
         return forge()\n        \
         return 'quiet'\n    \
         except OSError as e:\n        \
         return 'denied %s' % e.__class__.__name__\n\
         def application(environ, start_response):\n    \
         out = handle(urllib.parse.parse_qs(environ.get('QUERY_STRING', '')))\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [out.encode()]\n"
        ),
    );
    app
}

/// What site B's app answers when asked to do `what` to `path`.
fn ask_quiet(node: &Node, what: &str, path: &Path) -> String {
    let q = format!(
        "/?what={what}&arg={}",
        url_encode(&path.display().to_string())
    );
    node.get("quiet.localhost", &q).body
}

fn node_logs(node: &Node, args: &[&str]) -> Run {
    let mut cmd = node.command();
    cmd.args(["node", "logs"])
        .args(args)
        .arg("--config")
        .arg(&node.config);
    Run::from(
        format!("toppcloud node logs {}", args.join(" ")),
        run_with_timeout(cmd, Duration::from_secs(60)),
    )
}

#[test]
fn logs_show_each_sites_own_errors_and_requests_and_follow_until_the_client_goes() {
    let node = Node::start();
    let owner = node.authorized_key("owner");
    node.deploy("noisy", &noisy_app()).success();
    node.deploy("quiet", &quiet_app()).success();

    let boom = node.get("noisy.localhost", "/boom");
    assert_eq!(boom.code, 500, "{}", boom.body);
    assert_eq!(node.get("noisy.localhost", "/log").code, 200);
    assert_eq!(node.get("noisy.localhost", "/a-only").code, 200);
    assert_eq!(node.get("quiet.localhost", "/b-only").code, 200);

    let laptop = Laptop::new(&node, &owner);
    let a = laptop.toppcloud(&["logs", "noisy"]);
    a.success()
        .stdout_has("noisy import line")
        .stdout_has("noisy stdout line")
        .stdout_has("Traceback (most recent call last)")
        .stdout_has("ValueError: kaboom-A")
        .stdout_has("Exception occurred processing WSGI script")
        .stdout_has("logged-A");
    // Lines the app writes carry the time and the daemon's pid.
    let import = a
        .stdout
        .lines()
        .find(|l| l.contains("noisy import line"))
        .expect("import line");
    assert!(
        import.starts_with('[') && import.contains("] [pid "),
        "{import}"
    );
    let b = laptop.toppcloud(&["logs", "quiet"]);
    b.success()
        .stdout_lacks("kaboom-A")
        .stdout_lacks("noisy import line");

    // The access logs: each site's requests, in its own file.
    let a = laptop.toppcloud(&["logs", "noisy", "--access"]);
    a.success()
        .stdout_has("\"GET /boom HTTP/1.1\" 500")
        .stdout_has("GET /a-only")
        .stdout_lacks("/b-only");
    let b = laptop.toppcloud(&["logs", "quiet", "--access"]);
    b.success()
        .stdout_has("GET /b-only")
        .stdout_lacks("/a-only");

    // -n: that many lines from the end.
    let one = laptop.toppcloud(&["logs", "noisy", "-n", "1", "--access"]);
    assert_eq!(one.success().stdout.lines().count(), 1, "{}", one.stdout);
    // By hand, and on the node.
    ssh(&node, &owner, "logs noisy.localhost -n 50")
        .success()
        .stdout_has("kaboom-A");
    node_logs(&node, &["noisy", "-n", "2", "--access"])
        .success()
        .stdout_has("GET /a-only");
    let e = node_logs(&node, &["nosuch"]);
    e.failure().stderr_has("site nosuch.localhost not found");

    // -f: a line written after it started, then the client goes away and
    // the node's follow ends with it.
    let mut follow = Background::start("toppcloud logs noisy -f", {
        let mut cmd = laptop.command(&["logs", "noisy", "-f", "-n", "1"]);
        cmd.env("TOPPCLOUD_LOG", "info");
        cmd
    });
    follow.wait_printed("[pid ", Duration::from_secs(30));
    assert_eq!(node.get("noisy.localhost", "/say?x=after-follow").code, 200);
    follow.wait_printed("said after-follow", Duration::from_secs(30));
    follow.kill();
    node.wait_logged("logs -f of noisy.localhost ended");
    // The node goes on serving, and logs again.
    assert_eq!(node.body("noisy.localhost"), "noisy\n");
    laptop
        .toppcloud(&["logs", "noisy", "-n", "5"])
        .success()
        .stdout_has("said after-follow");

    // A key limited to B is refused A's logs, as any command on A.
    let limited = node.limited_key("limited", "quiet.localhost");
    let refused = Laptop::new(&node, &limited).toppcloud(&["logs", "noisy"]);
    refused
        .fails()
        .stderr_has("site noisy.localhost not found, or this key (limited) may not use it")
        .stdout_lacks("kaboom");
    Laptop::new(&node, &limited)
        .toppcloud(&["logs", "quiet", "--access"])
        .success()
        .stdout_has("/b-only");
    ssh(&node, &limited, "logs noisy --access")
        .fails()
        .stderr_has("may not use it");
}

#[test]
fn a_site_can_neither_read_nor_write_another_sites_logs() {
    root_only!();
    let node = Node::start();
    node.deploy("noisy", &noisy_app()).success();
    node.deploy("quiet", &quiet_app()).success();
    assert_eq!(node.get("noisy.localhost", "/boom").code, 500);
    let logs = |site: &str| node.data.join("sites").join(site).join("logs");
    let (a, b) = (logs("noisy.localhost"), logs("quiet.localhost"));

    // Sanity: B reads its own logs, so a refusal below means something.
    let own = ask_quiet(&node, "read", &b.join("error.log"));
    assert!(own.starts_with("ALLOWED"), "{own}");
    let own = ask_quiet(&node, "list", &b);
    assert!(own.starts_with("ALLOWED"), "{own}");
    for (what, path) in [
        ("read", a.join("error.log")),
        ("read", a.join("access.log")),
        ("list", a.clone()),
        ("append", a.join("error.log")),
        ("append", a.join("access.log")),
        ("append", a.join("planted.log")),
        // Nor its own access log, nor a file in its own log directory.
        ("append", b.join("access.log")),
        ("append", b.join("planted.log")),
    ] {
        let answer = ask_quiet(&node, what, &path);
        assert!(
            answer.starts_with("denied"),
            "{what} {}: {answer}",
            path.display()
        );
    }
    let text = std::fs::read_to_string(a.join("error.log")).expect("A's error log");
    assert!(text.contains("kaboom-A"), "{text}");
    assert!(!text.contains("planted"), "{text}");
}

#[test]
fn a_site_can_neither_forge_nor_read_request_lines_through_apaches_log_pipe() {
    root_only!();
    let node = Node::start();
    node.deploy("noisy", &noisy_app()).success();
    node.deploy("quiet", &quiet_app()).success();
    // Requests of A for B to steal while it reads the pipes, then B's try.
    for _ in 0..3 {
        assert_eq!(node.get("noisy.localhost", "/secret-path").code, 200);
    }
    let forged = node.get("quiet.localhost", "/?what=forge");
    assert!(!forged.body.contains("read "), "{}", forged.body);
    // Lines through one pipe arrive in order: once a later request of A is
    // in its log, a forged line written before it would be too.
    assert_eq!(node.get("noisy.localhost", "/after-forge").code, 200);
    let log = node.data.join("sites/noisy.localhost/logs/access.log");
    let text = crate::support::wait_for(
        "A's request after the forgery in its access log",
        Duration::from_secs(30),
        || {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            t.contains("/after-forge").then_some(t)
        },
    );
    assert!(!text.contains("FORGED"), "{}\n{text}", forged.body);
    assert_eq!(text.matches("/secret-path").count(), 3, "{text}");
}
