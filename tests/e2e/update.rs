//! `toppcloud update`, the original rsync upload path: the real binary on
//! both sides, the real rsync and ssh clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{
    App, BIN, Node, Run, clean_command, client_command, git, run_with_timeout, ssh_command,
};

/// A laptop: a HOME with a client config naming the node as default.
struct Laptop {
    home: tempfile::TempDir,
    key: PathBuf,
}

const SSH: &str = "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
                   -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";

impl Laptop {
    fn new(node: &Node) -> Laptop {
        let home = tempfile::tempdir().expect("tempdir");
        let key = node.authorized_key("laptop");
        let laptop = Laptop { home, key };
        laptop.write_config(&format!(
            "default_node = \"dev\"\n[nodes.dev]\nurl = \"ssh://toppcloud@127.0.0.1:{}\"\nkey = {:?}\nssh = \"{SSH}\"\n",
            node.ssh_port, laptop.key
        ));
        laptop
    }

    fn write_config(&self, text: &str) {
        let dir = self.home.path().join(".config/toppcloud");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("config.toml"), text).expect("write config");
    }

    fn toppcloud(&self, args: &[&str], cwd: &Path) -> Run {
        // A cleared environment: no XDG_CONFIG_HOME or TOPPCLOUD_NODE of
        // the caller's, and this laptop's HOME.
        let mut cmd = clean_command(BIN, self.home.path());
        cmd.args(args).current_dir(cwd);
        Run::from(
            format!("toppcloud {}", args.join(" ")),
            run_with_timeout(cmd, Duration::from_secs(240)),
        )
    }

    fn update(&self, app: &App, host: &str) -> Run {
        let dir = app.path.display().to_string();
        self.toppcloud(
            &["update", &dir, &format!("--host={host}")],
            self.home.path(),
        )
    }
}

/// Plain rsync against the node, as someone might try by hand.
fn rsync(node: &Node, key: &Path, args: &[&str]) -> Run {
    let mut cmd = client_command("rsync");
    cmd.args(args)
        .arg("-e")
        .arg(format!("{} -p {}", ssh_command(key), node.ssh_port));
    Run::from(
        format!("rsync {}", args.join(" ")),
        run_with_timeout(cmd, Duration::from_secs(60)),
    )
}

/// Upload areas still on the node (each site's `uploads/` directory).
fn uploads_left(node: &Node) -> usize {
    let Ok(sites) = std::fs::read_dir(node.data.join("sites")) else {
        return 0;
    };
    sites
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path().join("uploads")).ok())
        .map(|d| d.flatten().count())
        .sum()
}

#[test]
fn update_deploys_a_new_site_and_prints_the_hosts_line() {
    let node = Node::start();
    let laptop = Laptop::new(&node);
    let app = App::plain("blog", 2, "uploaded\n");
    app.file("static/logo.txt", "logo\n");
    laptop
        .update(&app, "blog.localhost")
        .success()
        .stderr_has("-----> deploying blog.localhost, release 1")
        .stderr_has(&format!(
            "live at http://blog.localhost:{}/ (release 1, version 2)",
            node.apache_port
        ))
        .stdout_has("blog.localhost has no DNS entry here")
        .stdout_has("127.0.0.1 blog.localhost 2.blog.localhost prev.blog.localhost");
    assert_eq!(node.body("blog.localhost"), "uploaded\n");
    assert_eq!(
        node.get("blog.localhost", "/logo.txt").code_body(),
        (200, "logo\n")
    );
    assert_eq!(uploads_left(&node), 0, "the upload area is cleaned up");
}

#[test]
fn an_edit_that_keeps_size_and_time_is_still_sent() {
    let node = Node::start();
    let laptop = Laptop::new(&node);
    let app = App::plain("blog", 1, "first\n");
    laptop.update(&app, "blog.localhost").success();
    assert_eq!(node.body("blog.localhost"), "first\n");
    // Same length, and the old modification time put back: rsync's quick
    // check (size and time) would call it unchanged.
    let path = app.path.join("main.py");
    let mtime = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("first", "other")).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
    let r = laptop.update(&app, "blog.localhost");
    r.success();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("<f") && l.ends_with(" main.py")),
        "main.py was not sent:\n{}",
        r.stdout
    );
    assert_eq!(node.body("blog.localhost"), "other\n");
}

#[test]
fn a_second_update_sends_only_what_changed() {
    let node = Node::start();
    let laptop = Laptop::new(&node);
    let app = App::plain("blog", 1, "first\n");
    for i in 0..20 {
        app.file(&format!("static/file{i}.txt"), &format!("{i}\n"));
    }
    laptop.update(&app, "blog.localhost").success();
    // A private file on the laptop must not change the live release's copy,
    // which the upload area shares by hard link.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        app.path.join("static/file0.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let main_py = std::fs::read_to_string(app.path.join("main.py")).expect("read");
    app.file("main.py", &main_py.replace("first", "second"));
    let r = laptop.update(&app, "blog.localhost");
    r.success();
    let sent: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("<f")).collect();
    assert_eq!(sent.len(), 1, "only main.py changed:\n{}", r.stdout);
    assert!(sent[0].ends_with(" main.py"), "{sent:?}");
    assert_eq!(node.body("blog.localhost"), "second\n");
    assert_eq!(node.body("prev.blog.localhost"), "first\n");
    for host in ["blog.localhost", "prev.blog.localhost"] {
        assert_eq!(
            node.get(host, "/file0.txt").code_body(),
            (200, "0\n"),
            "{host}"
        );
    }
    let first = node
        .data
        .join("sites/blog.localhost/releases/1/app/static/file0.txt");
    let mode = std::fs::metadata(first).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "release 1 is unchanged");
}

#[test]
fn a_failed_update_keeps_the_live_release() {
    let node = Node::start();
    let laptop = Laptop::new(&node);
    let app = App::plain("blog", 1, "good\n");
    laptop.update(&app, "blog.localhost").success();
    app.file("main.py", "raise RuntimeError('broken at import')\n");
    laptop
        .update(&app, "blog.localhost")
        .failure()
        .stderr_has("RuntimeError: broken at import")
        .stderr_has("update of blog.localhost failed");
    assert_eq!(node.body("blog.localhost"), "good\n");
    assert_eq!(uploads_left(&node), 0);
}

#[test]
fn rsync_forms_other_than_an_upload_are_refused() {
    let node = Node::start();
    let laptop = Laptop::new(&node);
    let app = App::plain("blog", 1, "good\n");
    laptop.update(&app, "blog.localhost").success();
    let src = format!("{}/", app.path.display());
    let target = |path: &str| format!("toppcloud@127.0.0.1:{path}");
    let out = tempfile::tempdir().expect("tempdir");
    let key = &laptop.key;
    let log = out.path().join("rsync.log");
    rsync(
        &node,
        key,
        &["-rlt", &target("blog/"), &out.path().display().to_string()],
    )
    .fails()
    .stderr_has("downloads are refused");
    rsync(&node, key, &["-a", &src, &target("blog/")])
        .fails()
        .stderr_has("rsync option -o is refused");
    rsync(&node, key, &["-rlt", "-s", &src, &target("blog/")])
        .fails()
        .stderr_has("secluded");
    rsync(&node, key, &["-rlt", &src, &target("../etc/")])
        .fails()
        .stderr_has("leaves the upload area");
    rsync(&node, key, &["-rlt", &src, &target("blog/sub/")])
        .fails()
        .stderr_has("leaves the upload area");
    rsync(
        &node,
        key,
        &[
            "-rlt",
            &format!("--remote-option=--log-file={}", log.display()),
            &src,
            &target("blog/"),
        ],
    )
    .fails()
    .stderr_has("--log-file");
    assert!(!log.exists(), "the node wrote no log file for the client");

    // A symlink out of the app is refused, not deployed.
    std::os::unix::fs::symlink("/etc/passwd", app.path.join("static-passwd")).expect("symlink");
    rsync(&node, key, &["-rlt", &src, &target("blog/")])
        .fails()
        .stderr_has("static-passwd: symlink points outside the app");
    assert_eq!(node.body("blog.localhost"), "good\n");
    assert_eq!(uploads_left(&node), 0);
}

/// The attack this closes: a key limited to one site put a directory of its
/// choosing before `.`, and rsync's receiver wrote into it. Here the real
/// rsync client sends files while its ssh sends that exact command line.
#[test]
fn rsync_extra_destination_cannot_write_outside_the_upload_area() {
    let node = Node::start();
    let key = node.limited_key("limited", "blog.localhost");
    let app = App::plain("blog", 1, "payload\n");
    let work = tempfile::tempdir().expect("tempdir");
    let victim = work.path().join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    // rsync runs `-e PROGRAM ... HOST rsync --server ...`; this program
    // ignores what rsync asked for and sends the attacker's line instead.
    let line = format!(
        "rsync --server -rlte.iLsfxCIvu {} . blog/",
        victim.display()
    );
    let wrapper = work.path().join("ssh-attack");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} -p {} toppcloud@127.0.0.1 '{line}'\n",
            ssh_command(&key),
            node.ssh_port
        ),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = client_command("rsync");
    cmd.args(["-rlt", "-e"])
        .arg(&wrapper)
        .arg(format!("{}/", app.path.display()))
        .arg("toppcloud@127.0.0.1:blog/");
    let run = Run::from(
        format!("rsync through {line:?}"),
        run_with_timeout(cmd, Duration::from_secs(60)),
    );
    let written: Vec<_> = std::fs::read_dir(&victim)
        .expect("read victim")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        written.is_empty(),
        "rsync wrote into {victim:?}: {written:?}"
    );
    run.fails().stderr_has(&format!(
        "unexpected rsync argument \"{}\"",
        victim.display()
    ));
    assert_eq!(uploads_left(&node), 0);
    assert!(
        !node.data.join("sites/blog.localhost/releases/1").exists(),
        "nothing was deployed"
    );
}

#[test]
fn default_node_and_remote_set_up_a_checkout() {
    let node = Node::start();
    let laptop = Laptop::new(&node);
    laptop.write_config("");
    let url = format!("ssh://toppcloud@127.0.0.1:{}", node.ssh_port);
    laptop
        .toppcloud(&["default-node", &url, "--name", "dev"], laptop.home.path())
        .success()
        .stdout_has("default node: dev");
    let app = App::plain("blog", 1, "via remote\n");
    app.git_init(&laptop.key);
    laptop
        .toppcloud(&["remote", "blog.localhost"], &app.path)
        .success()
        .stdout_has(&format!("{url}/blog.localhost"));
    git(&app.path, &laptop.key, &["push", "toppcloud", "main"]).success();
    assert_eq!(node.body("blog.localhost"), "via remote\n");
    laptop
        .toppcloud(&["remote", "blog.localhost"], &app.path)
        .failure()
        .stderr_has("a remote named toppcloud exists already");
}

#[test]
fn update_errors_say_what_to_do() {
    let node = Node::start();
    let laptop = Laptop::new(&node);
    let app = App::plain("blog", 1, "x\n");
    let dir = app.path.display().to_string();
    laptop
        .toppcloud(&["update", &dir], laptop.home.path())
        .failure()
        .stderr_has("no --host given and app.ini has no default_host");

    laptop.write_config("");
    laptop
        .toppcloud(
            &["update", &dir, "--host=blog.localhost"],
            laptop.home.path(),
        )
        .failure()
        .stderr_has("no node configured")
        .stderr_has("toppcloud default-node");

    // A key the node does not know.
    let stranger = node.keygen("stranger");
    laptop.write_config(&format!(
        "default_node = \"dev\"\n[nodes.dev]\nurl = \"ssh://toppcloud@127.0.0.1:{}\"\nkey = {:?}\nssh = \"{SSH}\"\n",
        node.ssh_port, stranger
    ));
    laptop
        .toppcloud(
            &["update", &dir, "--host=blog.localhost"],
            laptop.home.path(),
        )
        .failure()
        .stderr_has("refused this key")
        .stderr_has("toppcloud node keys add");
    // Nothing listening.
    laptop.write_config(
        "default_node = \"dev\"\n[nodes.dev]\nurl = \"ssh://toppcloud@127.0.0.1:9\"\n",
    );
    laptop
        .toppcloud(
            &["update", &dir, "--host=blog.localhost"],
            laptop.home.path(),
        )
        .failure()
        .stderr_has("cannot reach the node at ssh://toppcloud@127.0.0.1:9");
}
