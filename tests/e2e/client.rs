//! The laptop side: `toppcloud init` makes an app, `toppcloud serve` runs it
//! the way a node does (static/ first, the same runners and environment) and
//! restarts it when a file changes. Checked with the real binary and curl.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use crate::support::{
    App, Gate, Node, Run, Serve, children, client_home, curl, free_loopback_port,
    require_wheelhouse, run_with_timeout, toppcloud, toppcloud_cmd, wait_for,
};

fn init(args: &[&str], dir: &Path) -> crate::support::Run {
    let mut all: Vec<&OsStr> = vec![OsStr::new("init")];
    all.extend(args.iter().map(OsStr::new));
    all.push(dir.as_os_str());
    toppcloud(&all)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A main.py answering `body` (formatted with the app's environment) at every path.
fn env_app(body_expr: &str) -> String {
    format!(
        "import os\n\n\
         def application(environ, start_response):\n    \
         body = {body_expr}\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [body.encode()]\n"
    )
}

#[test]
fn init_writes_an_app_and_never_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("My Site.v2");
    let run = init(&[], &dir);
    run.success()
        .stdout_has("created app my-site-v2")
        .stdout_has("toppcloud serve")
        .stdout_has("git remote add toppcloud ssh://toppcloud@NODE:2222/SITE")
        .stdout_has("git push toppcloud main")
        .stdout_has("toppcloud update");
    let ini = read(&dir.join("app.ini"));
    assert!(ini.contains("[production]\n"), "{ini}");
    assert!(ini.contains("\napp_name = my-site-v2\n"), "{ini}");
    assert!(ini.contains("\nrunner = main.py\n"), "{ini}");
    assert!(read(&dir.join("main.py")).contains("def application(environ, start_response):"));
    assert!(dir.join("requirements.txt").is_file());
    assert!(dir.join("static/robots.txt").is_file());
    let gitignore = read(&dir.join(".gitignore"));
    for line in [".venv/", "__pycache__/", "*.pyc"] {
        assert!(gitignore.lines().any(|l| l == line), "{gitignore}");
    }
    assert!(
        dir.join(".venv/bin/python").exists(),
        "no .venv:\n{}",
        run.stderr
    );

    // A second init changes nothing and names what is in the way.
    std::fs::write(dir.join("main.py"), "# mine\n").expect("write");
    init(&[], &dir)
        .failure()
        .stderr_has("app.ini")
        .stderr_has("main.py")
        .stderr_has("never overwrites");
    assert_eq!(read(&dir.join("main.py")), "# mine\n");
    assert!(read(&dir.join("app.ini")).contains("app_name = my-site-v2"));

    // One file in the way of --config: refused, and nothing else appears.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("config.ini"), "[app:main]\n").expect("write");
    std::fs::write(other.join("README"), "notes\n").expect("write");
    init(&["--config"], &other)
        .failure()
        .stderr_has(&other.join("config.ini").display().to_string());
    let mut left: Vec<String> = std::fs::read_dir(&other)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["README", "config.ini"]);
    assert_eq!(read(&other.join("config.ini")), "[app:main]\n");

    // A directory with other files in it is fine.
    std::fs::remove_file(other.join("config.ini")).expect("rm");
    init(&["--config"], &other).success();
    assert_eq!(read(&other.join("README")), "notes\n");
}

#[test]
fn init_without_uv_falls_back_to_the_venv_module() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty_path = tmp.path().join("bin");
    std::fs::create_dir(&empty_path).expect("mkdir");
    let dir = tmp.path().join("nouv");
    let mut cmd = toppcloud_cmd();
    cmd.arg("init").arg(&dir).env("PATH", &empty_path);
    let run = crate::support::Run::from(
        "toppcloud init (no uv on PATH)".into(),
        crate::support::run_with_timeout(cmd, Duration::from_secs(240)),
    );
    run.success()
        .stderr_has("uv venv: command not found")
        .stdout_has("-m venv");
    assert!(dir.join(".venv/bin/python").exists());
}

#[test]
fn init_then_serve_answers_with_the_app() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hello");
    init(&["--main"], &dir).success();
    let serve = Serve::start(&dir);
    let page = serve.get("/");
    assert_eq!(page.code, 200, "{page:?}\n{}", serve.log());
    assert!(page.body.contains("Hello from hello"), "{page:?}");
    assert!(
        page.body
            .contains(&format!("Served at 127.0.0.1:{}", serve.port)),
        "{page:?}"
    );
    assert_eq!(serve.get("/robots.txt").body, "User-agent: *\nDisallow:\n");
    assert!(
        serve.log().contains(&format!(
            "serving {} at http://127.0.0.1:{}/ (Ctrl-C to stop)",
            dir.display(),
            serve.port
        )),
        "{}",
        serve.log()
    );
}

#[test]
fn serve_gives_the_app_the_nodes_environment() {
    let app = App::new();
    app.file("app.ini", "[production]\napp_name = envy\n").file(
        "main.py",
        &env_app(
            "'|'.join([os.environ['SITE'], os.environ['CANONICAL_HOST'], \
             os.environ['TOPPCLOUD'], os.getcwd()])",
        ),
    );
    let serve = Serve::start(&app.path);
    let page = serve.get("/");
    let host = format!("127.0.0.1:{}", serve.port);
    let cwd = app.path.canonicalize().expect("canonicalize");
    assert_eq!(
        page.body,
        format!(
            "{host}|{host}|devel/{}|{}",
            env!("CARGO_PKG_VERSION"),
            cwd.display()
        )
    );
}

/// The paths the static rules decide about, with what each must give.
const STATIC_CASES: &[(&str, u16, &str)] = &[
    ("/", 200, "from the app"),
    ("/hello.txt", 200, "static hello\n"),
    ("/docs/", 200, "<h1>docs</h1>\n"),
    ("/docs", 301, ""),
    ("/docs?page=2", 301, ""),
    ("/docs/guide.html", 200, "<p>guide</p>\n"),
    ("/hello.txt/", 200, "from the app"),
    ("/static/hello.txt", 200, "from the app"),
    ("/nothing/here", 200, "from the app"),
    ("/a/../hello.txt", 200, "static hello\n"),
    ("//hello.txt", 200, "static hello\n"),
    ("/hell%6F.txt", 200, "static hello\n"),
    ("/empty/", 200, "from the app"),
];

fn static_app() -> App {
    let app = App::new();
    app.file("app.ini", "[production]\napp_name = statics\n")
        .file("main.py", &env_app("'from the app'"))
        .file("static/hello.txt", "static hello\n")
        .file("static/docs/index.html", "<h1>docs</h1>\n")
        .file("static/docs/guide.html", "<p>guide</p>\n")
        .file("static/empty/.keep", "");
    app
}

#[test]
fn serve_puts_static_files_before_the_app() {
    let app = static_app();
    let serve = Serve::start(&app.path);
    for (path, code, body) in STATIC_CASES {
        let got = serve.get(path);
        assert_eq!(got.code, *code, "GET {path}: {got:?}\n{}", serve.log());
        if *code == 301 {
            let query = path.split_once('?').map(|(_, q)| format!("?{q}"));
            assert_eq!(
                got.location(),
                format!("{}{}", serve.url("/docs/"), query.unwrap_or_default()),
                "GET {path}"
            );
        } else {
            assert_eq!(got.body, *body, "GET {path}");
        }
    }
}

/// The same app, the same paths, through a real node: serve must agree.
#[test]
fn serve_and_the_node_agree_on_static_files() {
    let app = static_app();
    let node = Node::start();
    node.deploy("statics", &app).success();
    let serve = Serve::start(&app.path);
    let host = "statics.localhost";
    for (path, _, _) in STATIC_CASES {
        let on_node = curl(
            &format!("http://{host}:{}{path}", node.apache_port),
            Some(&format!("{host}:{}:127.0.0.1", node.apache_port)),
        );
        let local = serve.get(path);
        assert_eq!(
            local.code, on_node.code,
            "GET {path}: serve answered {local:?}, the node {on_node:?}"
        );
        // Redirects agree up to the host they name.
        let path_of = |url: &str| {
            url.split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, p)| p.to_string())
        };
        if local.code == 301 {
            assert_eq!(
                path_of(local.location()),
                path_of(on_node.location()),
                "GET {path}"
            );
            assert!(path_of(local.location()).is_some(), "GET {path}: {local:?}");
        } else {
            assert_eq!(local.body, on_node.body, "GET {path}");
        }
    }
}

#[test]
fn serve_restarts_the_app_when_a_file_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("reloader");
    init(&[], &dir).success();
    let serve = Serve::start(&dir);
    serve.wait_for_body("/", "Hello from reloader");

    std::fs::write(dir.join("main.py"), env_app("'second version'")).expect("write");
    serve.wait_for_body("/", "second version");
    assert!(
        serve.log().contains("main.py changed: restarting"),
        "{}",
        serve.log()
    );

    // A module the app imports counts too, and so does a new file.
    std::fs::write(dir.join("words.py"), "WORD = 'third'\n").expect("write");
    std::fs::write(
        dir.join("main.py"),
        env_app("__import__('words').WORD + ' version'"),
    )
    .expect("write");
    serve.wait_for_body("/", "third version");
    std::fs::write(dir.join("words.py"), "WORD = 'fourth'\n").expect("write");
    serve.wait_for_body("/", "fourth version");

    // A broken app answers with its traceback, static files still work, and
    // fixing it brings it back.
    std::fs::write(dir.join("main.py"), "def application(:\n").expect("write");
    let broken = serve.wait_for_body("/", "SyntaxError");
    assert_eq!(broken.code, 500);
    assert_eq!(serve.get("/robots.txt").code, 200);
    std::fs::write(dir.join("main.py"), env_app("'fixed'")).expect("write");
    serve.wait_for_body("/", "fixed");
}

#[test]
fn init_config_then_serve_goes_through_paste_deploy() {
    require_wheelhouse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pasted");
    init(&["--config"], &dir).success();
    let ini = read(&dir.join("app.ini"));
    assert!(ini.contains("\nrunner = config.ini\n"), "{ini}");
    assert!(read(&dir.join("requirements.txt")).contains("PasteDeploy"));
    assert!(read(&dir.join("config.ini")).contains("[app:main]"));
    let serve = Serve::start(&dir);
    let page = serve.wait_for_body("/", "Hello from pasted");
    assert_eq!(page.code, 200, "{page:?}");

    // The greeting is a Paste Deploy setting: editing config.ini reloads it.
    let config = read(&dir.join("config.ini")).replace("Hello from pasted", "Greetings via paste");
    std::fs::write(dir.join("config.ini"), config).expect("write");
    serve.wait_for_body("/", "Greetings via paste");
}

#[test]
fn serve_refuses_what_the_node_refuses() {
    let app = App::new();
    app.file("app.ini", "[production]\napp_name = bad\n\nversion = 1.0\n")
        .file("main.py", &env_app("'x'"));
    let serve_run = |dir: &Path| {
        let port = free_loopback_port().to_string();
        toppcloud(&[
            OsStr::new("serve"),
            dir.as_os_str(),
            OsStr::new("--port"),
            OsStr::new(&port),
        ])
    };
    serve_run(&app.path)
        .failure()
        .stderr_has("app.ini:4: version must be a whole number, got \"1.0\"");

    app.file("app.ini", "[production]\napp_name = bad\nservice.mysql =\n");
    serve_run(&app.path)
        .failure()
        .stderr_has("app.ini:3: service.mysql is not offered");

    app.remove("app.ini");
    serve_run(&app.path)
        .failure()
        .stderr_has("no app.ini")
        .stderr_has("toppcloud init");
}

#[test]
fn serve_names_a_port_in_use() {
    let app = App::plain("busy", 1, "x");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    toppcloud(&[
        OsStr::new("serve"),
        app.path.as_os_str(),
        OsStr::new("--port"),
        OsStr::new(&port),
    ])
    .failure()
    .stderr_has(&format!("port {port} on 127.0.0.1 is already in use"))
    .stderr_has("--port");
}

#[test]
fn sigterm_stops_serve_and_its_app() {
    let app = App::plain("stopper", 1, "running");
    let mut serve = Serve::start(&app.path);
    serve.wait_for_body("/", "running");
    // Only the serve process, not its group: it must stop the app itself.
    unsafe { libc::kill(serve.pid() as i32, libc::SIGTERM) };
    let status = serve.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", serve.log());
    // Nothing holds the port any more: the Python server is gone too.
    wait_for("the port to be free", Duration::from_secs(10), || {
        std::net::TcpListener::bind(("127.0.0.1", serve.port)).ok()
    });
}

#[test]
fn help_shows_examples() {
    toppcloud(&[OsStr::new("init"), OsStr::new("--help")])
        .success()
        .stdout_has("toppcloud init --config blog");
    toppcloud(&[OsStr::new("serve"), OsStr::new("--help")])
        .success()
        .stdout_has("toppcloud serve blog")
        .stdout_has("--port");
}

#[test]
fn an_app_that_exits_comes_back_on_the_next_change() {
    let app = App::plain("quitter", 1, "first");
    let serve = Serve::start(&app.path);
    serve.wait_for_body("/", "first");
    // The new app marks that it ran (outside its own directory, where a
    // new file would be a change), then exits.
    let gate = Gate::new();
    app.file(
        "main.py",
        &format!(
            "open({:?}, 'a').close()\nimport os\nos._exit(3)\n",
            gate.reached_file().display().to_string()
        ),
    );
    gate.wait_reached(Duration::from_secs(30));
    wait_for("serve to reap the app", Duration::from_secs(30), || {
        children(serve.pid()).is_empty().then_some(())
    });
    wait_for(
        "serve to say the app stopped",
        Duration::from_secs(10),
        || {
            serve
                .log()
                .contains("the app stopped (exit status: 3); it restarts when a file changes")
                .then_some(())
        },
    );
    app.file("main.py", &env_app("'back again'"));
    serve.wait_for_body("/", "back again");
}

/// `toppcloud serve DIR` run to its end (the tests use it for refusals),
/// with `XDG_CONFIG_HOME` at `config_home` when given.
fn serve_refused(dir: &Path, config_home: Option<&Path>) -> Run {
    let mut cmd = toppcloud_cmd();
    cmd.arg("serve")
        .arg(dir)
        .args(["--port", &free_loopback_port().to_string()]);
    if let Some(home) = config_home {
        cmd.env("XDG_CONFIG_HOME", home);
    }
    Run::from(
        format!("toppcloud serve {}", dir.display()),
        run_with_timeout(cmd, Duration::from_secs(240)),
    )
}

/// A directory to use as XDG_CONFIG_HOME, holding toppcloud/config.toml
/// with `text` (none when `text` is None).
fn laptop_config(text: Option<&str>) -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    if let Some(text) = text {
        let dir = home.path().join("toppcloud");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("config.toml"), text).expect("write config");
    }
    home
}

/// Where serve keeps what it keeps for the app `name` (the clients' HOME
/// has no XDG_DATA_HOME).
fn serve_data(name: &str) -> std::path::PathBuf {
    client_home()
        .join(".local/share/toppcloud/serve")
        .join(name)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A main.py that, at /write, writes into CONFIG_FILES and TEMP, and
/// otherwise answers where they are and what they hold.
const FILES_APP: &str = r#"import os
import tempfile


def application(environ, start_response):
    files = os.environ["CONFIG_FILES"]
    temp = os.environ["TEMP"]
    if environ["PATH_INFO"] == "/write":
        with open(os.path.join(files, "note.txt"), "w") as f:
            f.write("kept")
        with open(os.path.join(temp, "scratch"), "w") as f:
            f.write("x")
        body = "written"
    else:
        try:
            with open(os.path.join(files, "note.txt")) as f:
                note = f.read()
        except FileNotFoundError:
            note = "none"
        body = "|".join([files, note, temp, os.environ["TMPDIR"], tempfile.gettempdir(),
                         ",".join(sorted(os.listdir(temp)))])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
"#;

#[test]
fn serve_keeps_the_apps_files_and_empties_its_temp_at_each_start() {
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = keeper\nservice.files =\n",
    )
    .file("main.py", FILES_APP);
    let data = serve_data("keeper");
    let files = data.join("files").display().to_string();
    let temp = data.join("tmp").display().to_string();
    let expect =
        |note: &str, listing: &str| format!("{files}|{note}|{temp}|{temp}|{temp}|{listing}");

    let serve = Serve::start(&app.path);
    assert_eq!(serve.get("/").body, expect("none", ""), "{}", serve.log());
    assert_eq!(serve.get("/write").body, "written");
    assert_eq!(serve.get("/").body, expect("kept", "scratch"));
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("files")), 0o700);
    assert_eq!(mode(&data.join("tmp")), 0o700);
    drop(serve);

    // The next run finds the file where it was, and a clean TEMP.
    let serve = Serve::start(&app.path);
    assert_eq!(serve.get("/").body, expect("kept", ""), "{}", serve.log());
}

#[test]
fn serve_makes_a_files_path_the_apps_own_directory() {
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = instanced\nservice.files = instance\n",
    )
    .file("main.py", FILES_APP);
    let serve = Serve::start(&app.path);
    let own = app
        .path
        .canonicalize()
        .expect("canonicalize")
        .join("instance");
    let temp = serve_data("instanced").join("tmp").display().to_string();
    assert_eq!(
        serve.get("/").body,
        format!("{}|none|{temp}|{temp}|{temp}|", own.display()),
        "{}",
        serve.log()
    );
    assert!(own.is_dir());
    assert_eq!(serve.get("/write").body, "written");
    assert_eq!(read(&app.path.join("instance/note.txt")), "kept");
    // What the app writes there is its data, not a change of its code.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!serve.log().contains("restarting"), "{}", serve.log());
    assert!(serve.get("/").body.contains("|kept|"));
    drop(serve);

    // A file in the way is refused, naming it.
    let blocked = App::new();
    blocked
        .file(
            "app.ini",
            "[production]\napp_name = blocked\nservice.files = data\n",
        )
        .file("main.py", FILES_APP)
        .file("data", "not a directory\n");
    serve_refused(&blocked.path, None)
        .failure()
        .stderr_has("service.files = data:")
        .stderr_has("is not a directory");
}

/// A main.py answering the database variables it was given.
fn pg_app() -> String {
    env_app(
        "'\\n'.join('%s=%s' % (k, os.environ.get(k, '-')) for k in ['CONFIG_PG_DBNAME', \
         'CONFIG_PG_USER', 'CONFIG_PG_PASSWORD', 'CONFIG_PG_HOST', 'CONFIG_PG_PORT', \
         'CONFIG_PG_SQLALCHEMY', 'DATABASE_URL'])",
    )
}

#[test]
fn serve_without_a_database_says_what_to_configure() {
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = nodb\nservice.postgresql =\n",
    )
    .file("main.py", &pg_app());
    let config = laptop_config(None);
    let file = config.path().join("toppcloud/config.toml");
    serve_refused(&app.path, Some(config.path()))
        .failure()
        .stderr_has("service.postgresql")
        .stderr_has(&format!("{} does not exist", file.display()))
        .stderr_has(&format!("add a database of yours to {}", file.display()))
        .stderr_has("[devel]\npostgresql = \"postgresql://USER:PASSWORD@localhost:5432/DBNAME\"");

    // A config without [devel] says the same.
    let config = laptop_config(Some("default_node = \"dev\"\n"));
    serve_refused(&app.path, Some(config.path()))
        .failure()
        .stderr_has("has no [devel] postgresql")
        .stderr_has("[devel]\npostgresql = ");

    // app.ini's own errors come first.
    app.file(
        "app.ini",
        "[production]\napp_name = nodb\nversion = 1.0\nservice.postgresql =\n",
    );
    let run = serve_refused(&app.path, Some(config.path()));
    let run = run
        .failure()
        .stderr_has("app.ini:3: version must be a whole number");
    assert!(!run.stderr.contains("[devel]"), "{}", run.stderr);

    // So does a URL serve cannot read.
    app.file(
        "app.ini",
        "[production]\napp_name = nodb\nservice.postgis =\n",
    );
    let config = laptop_config(Some(
        "[devel]\npostgresql = \"postgresql://u@db.example\"\n",
    ));
    serve_refused(&app.path, Some(config.path()))
        .failure()
        .stderr_has("[devel] postgresql: names no database");
}

#[test]
fn serve_gives_the_database_the_laptop_config_names() {
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = withdb\nservice.postgis =\n",
    )
    .file("main.py", &pg_app());
    let config = laptop_config(Some(
        "[devel]\npostgresql = \"postgresql://u:p%40ss@127.0.0.1:5999/db\"\n",
    ));
    let serve = Serve::start_with_env(
        &app.path,
        &[
            ("XDG_CONFIG_HOME", config.path().as_os_str()),
            // The laptop's own values are not the app's.
            ("DATABASE_URL", OsStr::new("postgres://laptop@elsewhere/x")),
            ("CONFIG_PG_PORT", OsStr::new("1")),
        ],
    );
    assert_eq!(
        serve.get("/").body,
        "CONFIG_PG_DBNAME=db\n\
         CONFIG_PG_USER=u\n\
         CONFIG_PG_PASSWORD=p@ss\n\
         CONFIG_PG_HOST=127.0.0.1\n\
         CONFIG_PG_PORT=5999\n\
         CONFIG_PG_SQLALCHEMY=postgresql://u:p%40ss@127.0.0.1:5999/db\n\
         DATABASE_URL=postgres://u:p%40ss@127.0.0.1:5999/db",
        "{}",
        serve.log()
    );
}

#[test]
fn serve_keeps_the_apps_secret_across_runs() {
    let app = App::new();
    app.file("app.ini", "[production]\napp_name = secretive\n")
        .file(
            "main.py",
            &env_app("os.environ['CONFIG_SECRET'] + '|' + os.environ.get('DATABASE_URL', 'none')"),
        );
    let laptop_env = [("DATABASE_URL", OsStr::new("postgres://laptop@elsewhere/x"))];
    let first = Serve::start_with_env(&app.path, &laptop_env).get("/").body;
    let (secret, db) = first.split_once('|').expect("two parts");
    assert_eq!(secret.len(), 64, "{first}");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
    assert_eq!(db, "none", "an app without a database got the laptop's");
    let file = serve_data("secretive").join("secret");
    assert_eq!(read(&file).trim(), secret);
    assert_eq!(mode(&file), 0o600);

    let second = Serve::start(&app.path).get("/").body;
    assert_eq!(second, first);
}

#[test]
fn a_paste_deploy_app_gets_the_secret_in_its_global_conf() {
    require_wheelhouse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pastesecret");
    init(&["--config"], &dir).success();
    std::fs::write(
        dir.join("config.ini"),
        "[app:main]\nuse = call:app:make_app\nsecret = %(SECRET)s\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("app.py"),
        "import os\n\n\
         def make_app(global_conf, secret=None, **settings):\n    \
         body = '|'.join([global_conf.get('SECRET', '-'), secret, os.environ['CONFIG_SECRET']])\n\n    \
         def application(environ, start_response):\n        \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n        \
         return [body.encode()]\n\n    \
         return application\n",
    )
    .expect("write");
    let serve = Serve::start(&dir);
    let body = serve.get("/").body;
    let parts: Vec<&str> = body.split('|').collect();
    assert_eq!(parts.len(), 3, "{body}\n{}", serve.log());
    assert_eq!(parts[0].len(), 64, "{body}");
    assert!(parts.iter().all(|p| *p == parts[0]), "{body}");
}
