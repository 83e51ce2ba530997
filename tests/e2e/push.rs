//! `git push` to the node's embedded SSH server, with the real git and ssh
//! clients: what the pusher sees, what the site serves, and what the branch
//! on the node says afterwards.

use std::path::Path;
use std::time::Duration;

use crate::support::{
    App, Background, Gate, Node, Run, client_command, git, git_cmd, run_with_timeout, slow_main_py,
    ssh_command, wait_for,
};

/// The sha a branch has on the node, as `git ls-remote` reports it.
fn remote_sha(node: &Node, key: &Path, site: &str, branch: &str) -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = git(
        dir.path(),
        key,
        &[
            "ls-remote",
            &node.ssh_url(site),
            &format!("refs/heads/{branch}"),
        ],
    );
    r.success();
    r.stdout.split_whitespace().next().map(str::to_string)
}

/// An app with one commit, pushed to `blog` through the `toppcloud` remote.
fn pushed_blog(node: &Node, key: &Path, body: &str) -> App {
    let app = App::plain("blog", 1, body);
    app.git_init(key);
    git(
        &app.path,
        key,
        &["remote", "add", "toppcloud", &node.ssh_url("blog")],
    )
    .success();
    git(&app.path, key, &["push", "toppcloud", "main"]).success();
    app
}

fn ssh(node: &Node, key: &Path, extra: &[&str], command: Option<&str>) -> Run {
    let mut cmd = client_command("sh");
    let mut line = format!(
        "{} -p {} {} x@127.0.0.1",
        ssh_command(key),
        node.ssh_port,
        extra.join(" ")
    );
    if let Some(c) = command {
        line.push_str(&format!(" '{c}'"));
    }
    cmd.arg("-c").arg(&line);
    Run::from(line, run_with_timeout(cmd, Duration::from_secs(30)))
}

#[test]
fn push_deploys_and_streams_the_build() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = App::plain("blog", 1, "pushed v1\n");
    app.git_init(&key);
    git(
        &app.path,
        &key,
        &["remote", "add", "toppcloud", &node.ssh_url("blog")],
    )
    .success();
    git(&app.path, &key, &["push", "toppcloud", "main"])
        .success()
        .stderr_has("remote: -----> main is at")
        .stderr_has("pushed by laptop")
        .stderr_has("remote: -----> staged 2 files")
        .stderr_has(&format!(
            "remote: live at http://blog.localhost:{}/ (release 1, version 1)",
            node.apache_port
        ));
    assert_eq!(node.body("blog.localhost"), "pushed v1\n");
    assert_eq!(
        remote_sha(&node, &key, "blog", "main"),
        Some(app.head(&key))
    );

    // A clone over the same URL gets the same tree.
    let clone = tempfile::tempdir().expect("tempdir");
    git(
        clone.path(),
        &key,
        &["clone", "-q", &node.ssh_url("blog.git"), "c"],
    )
    .success();
    let main_py = std::fs::read_to_string(clone.path().join("c/main.py")).expect("cloned main.py");
    assert!(main_py.contains("pushed v1"));
}

#[test]
fn every_remote_form_reaches_the_site() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = App::plain("blog", 1, "one\n");
    app.git_init(&key);
    git(
        &app.path,
        &key,
        &["push", &node.ssh_url("blog.git"), "main"],
    )
    .success();
    assert_eq!(node.body("blog.localhost"), "one\n");

    app.set_plain("blog", 1, "two\n").commit(&key, "two");
    git(
        &app.path,
        &key,
        &["push", &node.ssh_url("blog.localhost"), "main"],
    )
    .success();
    assert_eq!(node.body("blog.localhost"), "two\n");

    // scp form: anyuser@host:SITE; the port comes from the ssh command.
    app.set_plain("blog", 1, "three\n").commit(&key, "three");
    let mut cmd = git_cmd(&app.path, &key, &["push", "someone@127.0.0.1:blog", "main"]);
    cmd.env(
        "GIT_SSH_COMMAND",
        format!("{} -p {}", ssh_command(&key), node.ssh_port),
    );
    Run::from(
        "scp-form push".into(),
        run_with_timeout(cmd, Duration::from_secs(120)),
    )
    .success();
    assert_eq!(node.body("blog.localhost"), "three\n");
    assert_eq!(node.body("prev.blog.localhost"), "two\n");
}

#[test]
fn bad_site_paths_are_refused() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = App::plain("blog", 1, "x\n");
    app.git_init(&key);
    for (path, why) in [
        ("../etc", "invalid site name"),
        ("a/b", "invalid site name"),
        ("1.blog", "may not be a number"),
        ("prev.blog", "may not be \"prev\""),
        ("Blog%20x", "invalid site name"),
    ] {
        git(&app.path, &key, &["push", &node.ssh_url(path), "main"])
            .fails()
            .stderr_has(why);
    }
    assert!(
        !node.data.join("repos").exists()
            || std::fs::read_dir(node.data.join("repos"))
                .expect("repos")
                .count()
                == 0
    );
}

#[test]
fn a_failed_deploy_rejects_the_push_and_keeps_everything() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = pushed_blog(&node, &key, "good\n");
    let good = app.head(&key);

    app.file("main.py", "import no_such_module_anywhere\n")
        .commit(&key, "broken");
    git(&app.path, &key, &["push", "toppcloud", "main"])
        .fails()
        .stderr_has("! [remote rejected] main -> main (pre-receive hook declined)")
        .stderr_has("No module named 'no_such_module_anywhere'");
    assert_eq!(
        remote_sha(&node, &key, "blog", "main"),
        Some(good),
        "the branch did not move"
    );
    assert_eq!(node.body("blog.localhost"), "good\n");
}

#[test]
fn other_branches_and_tags_are_stored_not_deployed() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = pushed_blog(&node, &key, "main\n");

    git(&app.path, &key, &["checkout", "-q", "-b", "feature"]).success();
    app.set_plain("blog", 1, "feature\n")
        .commit(&key, "feature");
    git(&app.path, &key, &["push", "toppcloud", "feature"])
        .success()
        .stderr_has("branch feature stored, not deployed (this site deploys main)");
    git(&app.path, &key, &["tag", "v1"]).success();
    git(&app.path, &key, &["push", "toppcloud", "v1"])
        .success()
        .stderr_has("tag v1 stored, not deployed");
    assert_eq!(
        remote_sha(&node, &key, "blog", "feature"),
        Some(app.head(&key))
    );
    assert_eq!(node.body("blog.localhost"), "main\n");

    git(&app.path, &key, &["push", "toppcloud", ":main"])
        .fails()
        .stderr_has("deleting main, the branch this site deploys from, is refused");
    assert!(remote_sha(&node, &key, "blog", "main").is_some());
}

#[test]
fn a_force_push_deploys_exactly_the_pushed_commit() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = App::plain("blog", 1, "first\n");
    app.git_init(&key);
    let first = app.head(&key);
    git(
        &app.path,
        &key,
        &["remote", "add", "toppcloud", &node.ssh_url("blog")],
    )
    .success();
    git(&app.path, &key, &["push", "toppcloud", "main"]).success();
    app.set_plain("blog", 1, "second\n").commit(&key, "second");
    git(&app.path, &key, &["push", "toppcloud", "main"]).success();

    git(
        &app.path,
        &key,
        &[
            "push",
            "-f",
            "toppcloud",
            &format!("{first}:refs/heads/main"),
        ],
    )
    .success();
    assert_eq!(node.body("blog.localhost"), "first\n");
    assert_eq!(node.body("prev.blog.localhost"), "second\n");
    assert_eq!(remote_sha(&node, &key, "blog", "main"), Some(first));
}

#[test]
fn a_repository_on_master_deploys_master() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = App::plain("old", 1, "on master\n");
    git(&app.path, &key, &["init", "-q", "-b", "master"]).success();
    app.commit(&key, "first");
    git(&app.path, &key, &["push", &node.ssh_url("old"), "master"]).success();
    assert_eq!(node.body("old.localhost"), "on master\n");
    let clone = tempfile::tempdir().expect("tempdir");
    git(
        clone.path(),
        &key,
        &["clone", "-q", &node.ssh_url("old"), "c"],
    )
    .success()
    .stderr_lacks("remote HEAD refers to nonexistent ref");
    assert!(clone.path().join("c/main.py").exists());
}

#[test]
fn a_shallow_push_is_refused_before_any_build() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = App::plain("blog", 1, "one\n");
    app.git_init(&key);
    app.set_plain("blog", 1, "two\n").commit(&key, "two");
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", app.path.display());
    git(
        tmp.path(),
        &key,
        &["clone", "-q", "--depth", "1", &url, "shallow"],
    )
    .success();
    git(
        &tmp.path().join("shallow"),
        &key,
        &["push", &node.ssh_url("blog"), "HEAD:refs/heads/main"],
    )
    .fails()
    .stderr_has("shallow clone")
    .stderr_has("git fetch --unshallow")
    .stderr_lacks("staged");
    assert_eq!(node.get("blog.localhost", "/").code, 404);
}

#[test]
fn keys_are_limited_to_their_sites_and_identity_comes_from_the_signature() {
    let node = Node::start();
    let owner = node.authorized_key("owner");
    let other = node.keygen("other");
    node.keys(&[
        "add",
        "other",
        &format!("{}.pub", other.display()),
        "--sites",
        "elsewhere",
    ])
    .success();
    let app = App::plain("blog", 1, "owned\n");
    app.git_init(&owner);
    git(&app.path, &owner, &["push", &node.ssh_url("blog"), "main"]).success();

    let clone = tempfile::tempdir().expect("tempdir");
    git(
        clone.path(),
        &other,
        &["clone", "-q", &node.ssh_url("blog"), "c"],
    )
    .fails()
    .stderr_has("site blog.localhost not found, or this key (other) may not use it");
    git(&app.path, &other, &["push", &node.ssh_url("blog"), "main"]).fails();

    // The client offers the owner's public key, which it cannot sign for,
    // then signs with the other key: it gets the other key's rights only.
    let pub_only = node.dir.path().join("owner-public-only.pub");
    std::fs::copy(format!("{}.pub", owner.display()), &pub_only).expect("copy");
    let r = ssh(
        &node,
        &other,
        &["-i", &pub_only.display().to_string()],
        Some("git-upload-pack 'blog'"),
    );
    r.fails().stderr_has("this key (other) may not use it");

    // An unknown key gets nowhere.
    let stranger = node.keygen("stranger");
    git(
        clone.path(),
        &stranger,
        &["clone", "-q", &node.ssh_url("blog"), "d"],
    )
    .fails()
    .stderr_has("Permission denied (publickey)");

    // Removing a key takes effect without a restart.
    node.keys(&["remove", "owner"]).success();
    git(
        clone.path(),
        &owner,
        &["clone", "-q", &node.ssh_url("blog"), "e"],
    )
    .fails();
}

#[test]
fn anything_but_git_is_refused() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    ssh(&node, &key, &[], None)
        .fails()
        .stderr_has("this node has no shell; deploy with git push");
    ssh(&node, &key, &["-tt"], Some("ls")).fails();
    ssh(&node, &key, &[], Some("ls /"))
        .fails()
        .stderr_has("is not something this node runs");
    ssh(
        &node,
        &key,
        &[],
        Some("git-receive-pack 'blog'; touch /tmp/toppcloud-pwned"),
    )
    .fails();
    assert!(!Path::new("/tmp/toppcloud-pwned").exists());
    ssh(&node, &key, &["-s"], Some("sftp")).fails();
    ssh(
        &node,
        &key,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
        ],
        None,
    )
    .fails();
    let r = ssh(
        &node,
        &key,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            "127.0.0.1:0:127.0.0.1:9",
            "-W",
            "127.0.0.1:9",
        ],
        None,
    );
    r.fails();
}

#[test]
fn two_pushes_to_one_site_take_turns_and_agree_with_the_branch() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let base = App::plain("blog", 1, "base\n");
    base.git_init(&key);
    git(&base.path, &key, &["push", &node.ssh_url("blog"), "main"]).success();

    // Two clones push different commits at once; the first one's app waits
    // at a gate while it is imported, until the second says it waits its
    // turn.
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = node.ssh_url("blog");
    git(tmp.path(), &key, &["clone", "-q", &url, "a"]).success();
    git(tmp.path(), &key, &["clone", "-q", &url, "b"]).success();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let gate = Gate::new();
    std::fs::write(a.join("main.py"), gate.main_py("from a\n")).expect("write");
    std::fs::write(
        b.join("main.py"),
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'from b\\n']\n",
    )
    .expect("write");
    git(&a, &key, &["commit", "-qam", "a"]).success();
    git(&b, &key, &["commit", "-qam", "b"]).success();
    let b_sha = git(&b, &key, &["rev-parse", "HEAD"])
        .stdout
        .trim()
        .to_string();
    let waiting = "waiting: another deploy to blog.localhost is in progress";
    std::thread::scope(|s| {
        let pa = s.spawn(|| git(&a, &key, &["push", "origin", "main"]));
        gate.wait_reached(Duration::from_secs(60));
        let mut pb = Background::start(
            "git push -f (b)",
            git_cmd(&b, &key, &["push", "-f", "origin", "main"]),
        );
        pb.wait_printed(waiting, Duration::from_secs(60));
        gate.open();
        pb.finish(Duration::from_secs(240))
            .success()
            .stderr_has(waiting);
        pa.join().expect("push a").success();
    });
    assert_eq!(node.body("blog.localhost"), "from b\n");
    assert_eq!(node.body("prev.blog.localhost"), "from a\n");
    assert_eq!(remote_sha(&node, &key, "blog", "main"), Some(b_sha));
}

#[test]
fn a_pusher_that_disconnects_mid_build_still_gets_a_consistent_site() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = App::plain("blog", 1, "before\n");
    app.git_init(&key);
    git(&app.path, &key, &["push", &node.ssh_url("blog"), "main"]).success();

    // The new release's import waits at a gate: the pusher is gone before
    // the release can go live.
    let gate = Gate::new();
    app.file("main.py", &gate.main_py("after\n"))
        .commit(&key, "held at a gate");
    let new = app.head(&key);
    let mut push = Background::start(
        "git push",
        git_cmd(&app.path, &key, &["push", &node.ssh_url("blog"), "main"]),
    );
    gate.wait_reached(Duration::from_secs(60));
    // git and its ssh vanish mid-build.
    push.kill();
    gate.open();

    // The node finishes what it received: the deploy goes live and the
    // branch moves with it.
    wait_for(
        "the new release to go live",
        Duration::from_secs(60),
        || (node.get("blog.localhost", "/").code_body() == (200, "after\n")).then_some(()),
    );
    wait_for("the branch to agree", Duration::from_secs(30), || {
        (remote_sha(&node, &key, "blog", "main").as_deref() == Some(new.as_str())).then_some(())
    });
}

#[test]
fn pushes_to_different_sites_run_side_by_side() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let one = App::plain("one", 1, "one\n");
    let two = App::plain("two", 1, "two\n");
    one.git_init(&key);
    two.git_init(&key);
    std::thread::scope(|s| {
        let a = s.spawn(|| git(&one.path, &key, &["push", &node.ssh_url("one"), "main"]));
        let b = s.spawn(|| git(&two.path, &key, &["push", &node.ssh_url("two"), "main"]));
        a.join().expect("one").success().stderr_lacks("waiting");
        b.join().expect("two").success().stderr_lacks("waiting");
    });
    assert_eq!(node.body("one.localhost"), "one\n");
    assert_eq!(node.body("two.localhost"), "two\n");
}

#[test]
fn a_silent_build_keeps_the_connection() {
    let node = Node::start();
    let key = node.authorized_key("laptop");
    let app = App::plain("quiet", 1, "");
    app.file("main.py", &slow_main_py(6, "patient\n"));
    app.git_init(&key);
    let mut cmd = git_cmd(&app.path, &key, &["push", &node.ssh_url("quiet"), "main"]);
    // A client that gives up on a server silent for 2 s (3 missed probes)
    // would fail here if the node did not answer keepalives during a build.
    cmd.env(
        "GIT_SSH_COMMAND",
        format!(
            "{} -o ServerAliveInterval=1 -o ServerAliveCountMax=2",
            ssh_command(&key)
        ),
    );
    Run::from(
        "silent push".into(),
        run_with_timeout(cmd, Duration::from_secs(120)),
    )
    .success();
    assert_eq!(node.body("quiet.localhost"), "patient\n");
}

#[test]
fn a_site_can_deploy_from_a_configured_branch() {
    let node = Node::start_with("[sites.\"blog.localhost\"]\nbranch = \"production\"\n");
    let key = node.keygen("ci");
    // Keys can come on standard input.
    let mut cmd = node.command();
    cmd.args(["node", "keys", "add", "ci", "-", "--config"])
        .arg(&node.config)
        .stdin(std::fs::File::open(format!("{}.pub", key.display())).expect("open key"));
    let out = cmd.output().expect("keys add");
    assert!(out.status.success(), "{out:?}");

    let app = App::plain("blog", 1, "from production\n");
    app.git_init(&key);
    git(&app.path, &key, &["push", &node.ssh_url("blog"), "main"])
        .success()
        .stderr_has("branch main stored, not deployed (this site deploys production)");
    assert_eq!(node.get("blog.localhost", "/").code, 404);
    git(
        &app.path,
        &key,
        &["push", &node.ssh_url("blog"), "main:production"],
    )
    .success()
    .stderr_has("live at");
    assert_eq!(node.body("blog.localhost"), "from production\n");
}
