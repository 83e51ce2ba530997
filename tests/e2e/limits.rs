//! Attacks on the node's limits and keys, each test named for its attack:
//! idle and slow clients against the SSH and HTTP servers (with the real
//! node, raw TCP on loopback, and the real ssh, git and curl to show that
//! users still get through), and authorized_keys lines whose options the
//! node must enforce or refuse. Other loopback addresses (127.0.0.2...)
//! stand in for other clients; nothing leaves the machine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{
    App, Node, Run, Upstream, client_command, git, run_with_timeout, slow_main_py, ssh_command,
    wait_for,
};

/// What a connection showed within a time limit.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Its first line (an SSH server's banner, an HTTP status line).
    Line(String),
    /// Closed (or reset) before sending a whole line.
    Closed,
    /// Still open and silent at the limit.
    Open,
}

/// Reads the first line a server sends, with a deadline.
fn first_line(s: &mut TcpStream, limit: Duration) -> Seen {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return Seen::Closed,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if let Some(i) = got.iter().position(|&b| b == b'\n') {
                    return Seen::Line(String::from_utf8_lossy(&got[..i]).trim().to_string());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Seen::Closed,
        }
    }
    Seen::Open
}

/// Reads (and drops) until the server closes the connection; how long that
/// took from `since`, or None if it was still open at the limit.
fn closed_after(s: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(since.elapsed()),
        }
    }
    None
}

/// Everything a server sends until it closes (or `limit` passes).
fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `src`
/// (127.0.0.0/8 is all loopback on Linux: each address is another client).
fn connect_from(src: [u8; 4], port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    let addr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        // Network byte order is the order of the bytes as written.
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let from = addr(src, 0);
        let r = libc::bind(fd, &from as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "bind {src:?}: {}", std::io::Error::last_os_error());
        let to = addr([127, 0, 0, 1], port);
        let r = libc::connect(fd, &to as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

/// Opens `n` connections from `src` and checks each gets the SSH banner
/// (so the node has counted it); returns them, still open.
fn ssh_idlers(node: &Node, src: [u8; 4], n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = connect_from(src, node.ssh_port);
            match first_line(&mut s, Duration::from_secs(10)) {
                Seen::Line(l) if l.starts_with("SSH-2.0-") => s,
                other => panic!("idle connection {i} from {src:?} got {other:?}, not a banner"),
            }
        })
        .collect()
}

/// Whether the process is alive (a dead child is a zombie until reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// `ssh` with `key` running `command` on the node: what a user sees.
fn ssh(node: &Node, key: &Path, command: &str) -> Run {
    let line = format!(
        "{} -p {} x@127.0.0.1 '{command}'",
        ssh_command(key),
        node.ssh_port
    );
    let mut cmd = client_command("sh");
    cmd.arg("-c").arg(&line);
    Run::from(line, run_with_timeout(cmd, Duration::from_secs(30)))
}

/// Logged in: the node answered the command itself (it runs only git).
fn assert_logged_in(run: &Run) {
    run.failure()
        .stderr_has("is not something this node runs")
        .stderr_lacks("Permission denied");
}

fn assert_refused(run: &Run) {
    assert_eq!(
        run.code,
        Some(255),
        "expected ssh to fail (255): {}",
        run.stderr
    );
    run.stderr_has("Permission denied (publickey)");
}

/// A key pair in the node's test dir, with its public line.
fn key_pair(node: &Node, name: &str) -> (PathBuf, String) {
    let key = node.keygen(name);
    let public = std::fs::read_to_string(format!("{}.pub", key.display())).expect("pub");
    (key, public.trim().to_string())
}

/// `toppcloud node keys add NAME` of `line` (a key with options).
fn keys_add_line(node: &Node, name: &str, line: &str) -> Run {
    let file = node.dir.path().join(format!("{name}.line"));
    std::fs::write(&file, format!("{line}\n")).expect("write");
    node.keys(&["add", name, &file.display().to_string()])
}

/// Pushes a plain app to `site` with the real git; returns the run.
fn push_plain(node: &Node, key: &Path, site: &str, body: &str) -> Run {
    let app = App::plain(site, 1, body);
    app.git_init(key);
    git(&app.path, key, &["push", &node.ssh_url(site), "main"])
}

#[test]
fn ssh_idle_connections_cannot_take_the_server_down() {
    // Caps above the open-file limit: what is tested here is the accept
    // loop running out of descriptors, not the caps (tested below).
    let node = Node::start_with(
        "[ssh]\nmax_unauthenticated = 5000\nmax_unauthenticated_per_address = 5000\n",
    );
    let key = node.authorized_key("laptop");
    let pid = node.pid();
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    let r = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let before = open_files(pid);

    // More idle connections than the node has descriptors.
    let flood_started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", node.ssh_port)).expect("connect"))
        .collect();
    // Out of descriptors: every one of the 256 is in use.
    wait_for(
        "the node to run out of file descriptors",
        Duration::from_secs(30),
        || (open_files(pid) >= 256).then_some(()),
    );
    assert!(alive(pid), "the node died:\n{}", node.log());
    // The listener is still there: the kernel queues new connections.
    let mut queued = TcpStream::connect(("127.0.0.1", node.ssh_port)).expect("connect");
    assert!(
        open_files(pid) <= 256,
        "{} files open ({before} before)",
        open_files(pid)
    );
    // Give the accept loop a while in that state: it must neither exit nor
    // spin its log.
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(pid), "the node died:\n{}", node.log());
    let reports = node
        .log()
        .matches("ssh: cannot accept a connection")
        .count();
    let seconds = flood_started.elapsed().as_secs() as usize;
    assert!(
        (1..=seconds + 2).contains(&reports),
        "{reports} accept error reports in {seconds} s"
    );
    assert!(node.log().contains("Too many open files"), "{}", node.log());

    // The attacker goes away; the node serves again, the queued connection
    // included, and a real push works.
    idle.clear();
    match first_line(&mut queued, Duration::from_secs(30)) {
        Seen::Line(l) => assert!(l.starts_with("SSH-2.0-"), "{l}"),
        other => panic!("the queued connection got {other:?}:\n{}", node.log()),
    }
    push_plain(&node, &key, "blog", "still here\n")
        .success()
        .stderr_has("remote: live at");
    assert_eq!(node.body("blog.localhost"), "still here\n");
    let health = node.http_request("GET", "/healthz", &[], None);
    assert_eq!(health.body, "ok\n");
}

#[test]
fn ssh_unauthenticated_connections_are_closed_after_the_timeout() {
    let node = Node::start_with("[ssh]\nauth_timeout = 2\n");
    let key = node.authorized_key("laptop");

    // One that sends nothing after the server's banner.
    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", node.ssh_port)).expect("connect");
    assert!(matches!(
        first_line(&mut silent, Duration::from_secs(10)),
        Seen::Line(l) if l.starts_with("SSH-2.0-")
    ));
    // One that starts the handshake and stalls in the key exchange.
    let mut stalled = TcpStream::connect(("127.0.0.1", node.ssh_port)).expect("connect");
    assert!(matches!(
        first_line(&mut stalled, Duration::from_secs(10)),
        Seen::Line(_)
    ));
    stalled.write_all(b"SSH-2.0-stall\r\n").expect("write");
    for (what, conn) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let after = closed_after(conn, started, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("the {what} connection is still open:\n{}", node.log()));
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_secs(15),
            "the {what} connection was closed after {after:?}"
        );
    }
    // The node says why (its log line may follow the close by a moment).
    wait_for(
        "the node to log the pre-auth timeout",
        Duration::from_secs(10),
        || {
            node.log()
                .contains("not authenticated within 2 s")
                .then_some(())
        },
    );

    // An authenticated push is not timed: this one's check alone (the app
    // takes 3 s to import) outlasts the pre-auth timeout.
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = slow\nversion = 1\nrunner = main.py\n",
    )
    .file("main.py", &slow_main_py(3, "slow but live\n"));
    app.git_init(&key);
    let started = Instant::now();
    git(&app.path, &key, &["push", &node.ssh_url("slow"), "main"])
        .success()
        .stderr_has("remote: live at");
    assert!(started.elapsed() > Duration::from_secs(3));
    assert_eq!(node.body("slow.localhost"), "slow but live\n");
}

#[test]
fn ssh_connections_over_the_per_address_cap_are_closed() {
    // A pre-auth timeout long enough to outlast the push below.
    let node = Node::start_with(
        "[ssh]\nauth_timeout = 300\nmax_unauthenticated = 64\nmax_unauthenticated_per_address = 4\n",
    );
    let key = node.authorized_key("laptop");
    let noisy = [127, 0, 0, 2];
    let mut held = ssh_idlers(&node, noisy, 4);
    // The fifth from that address is closed at once, before any banner
    // (the pre-auth timeout is minutes away).
    let started = Instant::now();
    let mut fifth = connect_from(noisy, node.ssh_port);
    assert_eq!(
        first_line(&mut fifth, Duration::from_secs(10)),
        Seen::Closed
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        node.log()
            .contains("ssh: closed a connection from 127.0.0.2")
            .then_some(())
    });
    assert!(
        node.log()
            .contains("4 connections from this address are waiting to authenticate"),
        "{}",
        node.log()
    );

    // Users at other addresses are not locked out: a real push works.
    push_plain(&node, &key, "blog", "pushed past the noise\n")
        .success()
        .stderr_has("remote: live at");
    assert_eq!(node.body("blog.localhost"), "pushed past the noise\n");

    // Once one of the noisy connections closes, that address has room again.
    held.pop();
    wait_for(
        "room for another connection from 127.0.0.2",
        Duration::from_secs(20),
        || {
            let mut s = connect_from(noisy, node.ssh_port);
            match first_line(&mut s, Duration::from_secs(5)) {
                Seen::Line(l) if l.starts_with("SSH-2.0-") => Some(()),
                _ => None,
            }
        },
    );
}

#[test]
fn ssh_connections_over_the_total_cap_are_closed() {
    let node = Node::start_with(
        "[ssh]\nauth_timeout = 300\nmax_unauthenticated = 6\nmax_unauthenticated_per_address = 3\n",
    );
    let key = node.authorized_key("laptop");
    let held: Vec<TcpStream> = [[127, 0, 0, 2], [127, 0, 0, 3]]
        .into_iter()
        .flat_map(|src| ssh_idlers(&node, src, 3))
        .collect();
    let mut over = connect_from([127, 0, 0, 4], node.ssh_port);
    assert_eq!(first_line(&mut over, Duration::from_secs(10)), Seen::Closed);
    // A real client is turned away too while the total is used up...
    assert_eq!(ssh(&node, &key, "hello").code, Some(255), "{}", node.log());
    assert!(
        node.log()
            .contains("6 connections are waiting to authenticate"),
        "{}",
        node.log()
    );
    // ...and gets in once the idle ones are gone.
    drop(held);
    let run = wait_for("ssh to log in again", Duration::from_secs(20), || {
        let run = ssh(&node, &key, "hello");
        (run.code == Some(1)).then_some(run)
    });
    assert_logged_in(&run);
}

#[test]
fn http_slow_headers_are_cut_off() {
    let node = Node::start_with("[http]\nheader_timeout = 2\n");
    let started = Instant::now();
    let mut slow = TcpStream::connect(&node.http).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n")
        .expect("write");
    let mut idle = TcpStream::connect(&node.http).expect("connect");
    for (what, conn) in [("slow", &mut slow), ("idle", &mut idle)] {
        let after = closed_after(conn, started, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("the {what} connection is still open"));
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_secs(15),
            "the {what} connection was closed after {after:?}"
        );
    }
    // A client that sends its request answers normally.
    let mut ok = TcpStream::connect(&node.http).expect("connect");
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        .expect("write");
    let answer = read_all(&mut ok, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
}

#[test]
fn http_connections_over_the_cap_get_503() {
    let node = Node::start_with("[http]\nmax_connections = 3\nheader_timeout = 300\n");
    // Three connections that each made a request and hold on (keep-alive).
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&node.http).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
                .expect("write");
            match first_line(&mut s, Duration::from_secs(10)) {
                Seen::Line(l) => assert!(l.starts_with("HTTP/1.1 200"), "{l}"),
                other => panic!("{other:?}"),
            }
            s
        })
        .collect();
    let mut fourth = TcpStream::connect(&node.http).expect("connect");
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .expect("write");
    let answer = read_all(&mut fourth, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    node.wait_logged("http: answered 503 to 127.0.0.1");
    // With one of them gone, curl gets through.
    drop(held);
    wait_for("/healthz to answer again", Duration::from_secs(20), || {
        (node.http_request("GET", "/healthz", &[], None).body == "ok\n").then_some(())
    });
}

/// A node with one site that takes webhooks.
fn webhook_node(up: &Upstream, extra: &str) -> Node {
    Node::start_with(&format!(
        "[http]\nmax_body = 65536\n{extra}\n[sites.blog]\nupstream = {:?}\nwebhook_secret = \"s3cret\"\n",
        up.url()
    ))
}

/// Sends a POST's headers (and `body`) to the node; returns its answer and
/// how long it took to come back.
fn post_head(node: &Node, path: &str, length: u64, body: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(&node.http).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: {length}\r\n\r\n"
    );
    let started = Instant::now();
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let answer = read_all(&mut s, Duration::from_secs(30));
    (answer, started.elapsed())
}

#[test]
fn webhook_body_is_not_read_for_an_unknown_site() {
    let up = Upstream::new();
    up.commit_plain("blog", 1, "v1\n");
    // The body timeout is a minute: an answer in seconds was not waiting.
    let node = webhook_node(&up, "body_timeout = 60");
    for site in ["nosuch.localhost", "bad_name!"] {
        let (answer, took) = post_head(&node, &format!("/hooks/{site}"), 100_000_000, b"");
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(answer.contains("takes webhooks on this node"), "{answer}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // The body was not read, so the connection cannot carry another
        // request: a keep-alive client is told, not left to write into a
        // closed socket.
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    // A configured site refuses a declared body over max_body before
    // reading it.
    let (answer, took) = post_head(&node, "/hooks/blog.localhost", 100_000_000, b"");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 65536 bytes"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn webhook_slow_body_is_cut_off() {
    let up = Upstream::new();
    up.commit_plain("blog", 1, "v1\n");
    let node = webhook_node(&up, "body_timeout = 2");
    let (answer, took) = post_head(&node, "/hooks/blog.localhost", 1000, b"{\"ref\":");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 2 s"), "{answer}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(15),
        "{took:?}"
    );
    node.wait_logged("webhook rejected (408)");
}

#[test]
fn authorized_keys_command_option_is_refused_loudly() {
    let node = Node::start();
    let (forced, public) = key_pair(&node, "forced");
    // `keys add` refuses the key, naming the option; nothing is written.
    keys_add_line(
        &node,
        "forced",
        &format!("command=\"/usr/bin/true\" {public}"),
    )
    .failure()
    .stderr_has("option command= is not supported by this node")
    .stderr_has("not added");
    // Written by hand instead, the line is refused when the node reads it.
    let file = node.data.join("authorized_keys");
    std::fs::write(
        &file,
        format!("restrict,command=\"/usr/bin/true\" {public}\n{public}\n"),
    )
    .expect("write");
    let good = node.authorized_key("good");

    let dir = tempfile::tempdir().expect("tempdir");
    let run = git(dir.path(), &forced, &["ls-remote", &node.ssh_url("blog")]);
    run.fails().stderr_has("Permission denied (publickey)");
    assert_refused(&ssh(&node, &forced, "hello"));
    let log = node.log();
    assert!(
        log.contains(&format!(
            "{}:1: option command= is not supported by this node",
            file.display()
        )),
        "{log}"
    );
    assert!(log.contains("authenticates nobody"), "{log}");
    assert!(log.contains("ERROR"), "{log}");
    node.keys(&["list"])
        .success()
        .stdout_has("REFUSED (line 1): option command= is not supported");
    // Other keys are not affected.
    assert_logged_in(&ssh(&node, &good, "hello"));
}

#[test]
fn expired_key_is_refused() {
    let node = Node::start();
    let (old, old_public) = key_pair(&node, "old");
    let (current, current_public) = key_pair(&node, "current");
    keys_add_line(
        &node,
        "old",
        &format!("expiry-time=\"20200101\" {old_public}"),
    )
    .success();
    keys_add_line(
        &node,
        "current",
        &format!("expiry-time=\"209912312359\" {current_public}"),
    )
    .success();
    node.keys(&["list"])
        .success()
        .stdout_has("expired 2020-01-01 00:00:00 UTC")
        .stdout_has("expires 2099-12-31 23:59:00 UTC");

    assert_refused(&ssh(&node, &old, "hello"));
    let dir = tempfile::tempdir().expect("tempdir");
    git(dir.path(), &old, &["ls-remote", &node.ssh_url("blog")])
        .fails()
        .stderr_has("Permission denied (publickey)");
    node.wait_logged("refused key old (SHA256:");
    node.wait_logged("it expired at 2020-01-01 00:00:00 UTC");
    assert_logged_in(&ssh(&node, &current, "hello"));
    // A malformed time is refused by `keys add`, naming the option.
    let (_, public) = key_pair(&node, "typo");
    keys_add_line(
        &node,
        "typo",
        &format!("expiry-time=\"2020-01-01\" {public}"),
    )
    .failure()
    .stderr_has("option expiry-time=\"2020-01-01\"");
}

#[test]
fn from_option_limits_the_source_address() {
    let node = Node::start();
    let add = |name: &str, from: &str| {
        let (key, public) = key_pair(&node, name);
        keys_add_line(&node, name, &format!("from=\"{from}\" {public}")).success();
        key
    };
    let here = add("here", "127.0.0.1");
    let loopback = add("loopback", "127.0.0.0/8,::1");
    let wildcard = add("wildcard", "127.0.0.*");
    let elsewhere = add("elsewhere", "10.0.0.0/8");
    let negated = add("negated", "127.0.0.0/8,!127.0.0.1");

    for key in [&here, &loopback, &wildcard] {
        assert_logged_in(&ssh(&node, key, "hello"));
    }
    for key in [&elsewhere, &negated] {
        assert_refused(&ssh(&node, key, "hello"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    git(
        dir.path(),
        &elsewhere,
        &["ls-remote", &node.ssh_url("blog")],
    )
    .fails()
    .stderr_has("Permission denied (publickey)");
    let log = node.log();
    assert!(
        log.contains("refused key elsewhere (SHA256:")
            && log.contains("it may not connect from 127.0.0.1 (from=\"10.0.0.0/8\""),
        "{log}"
    );
    node.keys(&["list"])
        .success()
        .stdout_has("all sites, from 10.0.0.0/8");

    // Host names would need DNS: refused, with the reason.
    let (_, public) = key_pair(&node, "named");
    keys_add_line(&node, "named", &format!("from=\"*.example.com\" {public}"))
        .failure()
        .stderr_has("option from=\"*.example.com\"")
        .stderr_has("host name pattern");
}
