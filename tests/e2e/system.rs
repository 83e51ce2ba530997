//! System mode: the node writes its site file into a Debian Apache
//! configuration, tests the whole configuration before any reload, and
//! drives it with apache2ctl. The "system" here is a copy of /etc/apache2
//! whose run, lock and log dirs point into the test's own directory and
//! which listens on a free loopback port, so the real apache2ctl and the
//! real Debian configuration are exercised without touching the machine's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{App, Load, Node, wait_for};

struct SystemApache {
    confdir: PathBuf,
    root: PathBuf,
}

impl SystemApache {
    fn new(root: &Path, port: u16) -> SystemApache {
        let confdir = root.join("etc-apache2");
        let status = Command::new("cp")
            .args(["-a", "/etc/apache2"])
            .arg(&confdir)
            .status()
            .expect("cp");
        assert!(status.success());
        for d in ["run", "lock", "log"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let envvars = std::fs::read_to_string(confdir.join("envvars")).expect("envvars");
        let envvars = envvars
            .replace(
                "/var/run/apache2$SUFFIX",
                &root.join("run").display().to_string(),
            )
            .replace(
                "/var/lock/apache2$SUFFIX",
                &root.join("lock").display().to_string(),
            )
            .replace(
                "/var/log/apache2$SUFFIX",
                &root.join("log").display().to_string(),
            );
        std::fs::write(confdir.join("envvars"), envvars).expect("write envvars");
        std::fs::write(
            confdir.join("ports.conf"),
            format!("Listen 127.0.0.1:{port}\n"),
        )
        .expect("ports.conf");
        // What provisioning does with a2enmod.
        for m in [
            "wsgi.load",
            "wsgi.conf",
            "rewrite.load",
            "headers.load",
            "proxy.load",
            "proxy.conf",
            "proxy_http.load",
        ] {
            let link = confdir.join("mods-enabled").join(m);
            if !link.exists() && confdir.join("mods-available").join(m).exists() {
                std::os::unix::fs::symlink(format!("../mods-available/{m}"), &link)
                    .expect("a2enmod");
            }
        }
        SystemApache {
            confdir,
            root: root.to_path_buf(),
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.root.join("run/apache2.pid")
    }

    fn node_config(&self, port: u16) -> String {
        format!(
            "[apache]\nmode = \"system\"\nlisten = \"127.0.0.1:{port}\"\nconfig_dir = {:?}\npid_file = {:?}\n",
            self.confdir,
            self.pid_file()
        )
    }
}

impl Drop for SystemApache {
    fn drop(&mut self) {
        // SIGTERM is what `apache2ctl stop` sends; signalling directly
        // works even after the node's data dir (named in the config) is gone.
        let pid = std::fs::read_to_string(self.pid_file()).ok();
        if let Some(pid) = pid.and_then(|p| p.trim().parse::<u32>().ok()) {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let _ = wait_for_exit(pid);
        }
    }
}

fn wait_for_exit(pid: u32) -> bool {
    for _ in 0..400 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn system_mode_serves_through_debians_apache() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let system = SystemApache::new(tmp.path(), port);
    let node = Node::start_with(&system.node_config(port));
    let site_file = system.confdir.join("sites-available/00-toppcloud.conf");
    let conf = std::fs::read_to_string(&site_file).expect("the site file is generated");
    assert!(conf.contains("WSGIDaemonProcess tc_s000"), "{conf}");
    assert!(
        system
            .confdir
            .join("sites-enabled/00-toppcloud.conf")
            .exists()
    );

    node.deploy("blog", &App::plain("blog", 1, "from system apache\n"))
        .success();
    assert_eq!(node.body("blog.localhost"), "from system apache\n");
    assert_eq!(node.body("1.blog.localhost"), "from system apache\n");

    // A kept release no daemon holds is loaded on its first request,
    // through Debian's mod_proxy to the node and back.
    node.deploy("blog", &App::plain("blog", 2, "two\n"))
        .success();
    node.deploy("blog", &App::plain("blog", 3, "three\n"))
        .success();
    assert_eq!(node.body("1.blog.localhost"), "from system apache\n");
    assert_eq!(node.body("blog.localhost"), "three\n");
}

#[test]
fn system_mode_restores_the_old_file_when_the_config_test_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let system = SystemApache::new(tmp.path(), port);
    // Something else in the configuration is broken: the test must fail,
    // and the node must leave Apache's configuration as it found it.
    std::fs::write(
        system.confdir.join("conf-enabled/zz-broken.conf"),
        "ThisIsNotADirective on\n",
    )
    .expect("write");
    let err = crate::support::node_run_refused(&system.node_config(port));
    assert!(
        err.contains("Apache refused the generated configuration"),
        "{err}"
    );
    assert!(
        err.contains("ThisIsNotADirective"),
        "the config test's own words: {err}"
    );
    assert!(
        !system
            .confdir
            .join("sites-available/00-toppcloud.conf")
            .exists()
    );
    assert!(
        !system
            .confdir
            .join("sites-enabled/00-toppcloud.conf")
            .exists()
    );
    wait_for(
        "no Apache to have been started",
        Duration::from_secs(1),
        || (!system.pid_file().exists()).then_some(()),
    );
}

/// An app that answers its body at `/` and its daemon's pid at `/pid`.
fn pid_app(site: &str) -> App {
    let app = App::plain(site, 1, "unused\n");
    app.file(
        "main.py",
        &format!(
            "import os\n\ndef application(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             if environ.get('PATH_INFO') == '/pid':\n        return [str(os.getpid()).encode()]\n    \
             return [b'{site}\\n']\n"
        ),
    );
    app
}

/// systemd restarts a system-mode node (an upgrade, a crash): Debian's
/// Apache, and the node's own Apache for the cells a growth added, keep
/// serving all the while, and no daemon restarts.
#[test]
fn a_system_mode_node_that_restarts_stops_no_site_grown_ones_included() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let system = SystemApache::new(tmp.path(), port);
    let mut node = Node::start_with(&format!("{}cells = 1\n", system.node_config(port)));
    node.deploy("a", &pid_app("a")).success();
    node.deploy("b", &pid_app("b"))
        .success()
        .stdout_has("growing it to 2 cells");
    let pids = |node: &Node| {
        ["a.localhost", "b.localhost"].map(|h| {
            let pid = node.get(h, "/pid").body;
            assert!(pid.parse::<u32>().is_ok(), "{h}: {pid}");
            pid
        })
    };
    let before = pids(&node);

    let loads = [
        Load::start(port, "a.localhost", "a\n", 2),
        Load::start(port, "b.localhost", "b\n", 2),
    ];
    node.stop();
    // The node is gone; both sites still answer.
    assert_eq!(node.body("a.localhost"), "a\n");
    assert_eq!(node.body("b.localhost"), "b\n");
    node.spawn();
    for (load, site) in loads.into_iter().zip(["a", "b"]) {
        let count = load.finish();
        assert!(count.failed.is_empty(), "{site}: {count}");
        assert!(count.sent >= 20, "{site}: too few requests: {count}");
    }
    assert_eq!(pids(&node), before, "a daemon restarted");
    node.deploy("b", &pid_app("b")).success();
    assert_eq!(node.body("b.localhost"), "b\n");
}
