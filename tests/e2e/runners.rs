//! Each kind of app.ini runner, and static files served before the app.

use crate::support::{App, Node, require_wheelhouse};

#[test]
fn flask_app_from_requirements_txt() {
    require_wheelhouse();
    let node = Node::start();
    let app = App::new();
    app.file("app.ini", "[production]\napp_name = flasky\nversion = 1\n")
        .file("requirements.txt", "flask\n")
        .file(
            "main.py",
            "from flask import Flask\napplication = Flask(__name__)\n\n\
             @application.route('/')\ndef index():\n    return 'flask v1\\n'\n\n\
             @application.route('/hello/<name>')\ndef hello(name):\n    return 'hello %s\\n' % name\n",
        );
    node.deploy("flasky", &app)
        .success()
        .stdout_has("installing requirements.txt");
    assert_eq!(node.body("flasky.localhost"), "flask v1\n");
    assert_eq!(
        node.get("flasky.localhost", "/hello/ann").code_body(),
        (200, "hello ann\n")
    );

    // Same requirements: nothing is installed again.
    app.file(
        "main.py",
        "from flask import Flask\napplication = Flask(__name__)\n\n\
         @application.route('/')\ndef index():\n    return 'flask v2\\n'\n",
    );
    node.deploy("flasky", &app)
        .success()
        .stdout_has("requirements.txt unchanged: reusing environment");
    assert_eq!(node.body("flasky.localhost"), "flask v2\n");
    assert_eq!(node.body("prev.flasky.localhost"), "flask v1\n");
}

#[test]
fn paste_deploy_config_ini_app() {
    require_wheelhouse();
    let node = Node::start();
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = pasted\nversion = 3\nrunner = config.ini#main\n",
    )
    .file("requirements.txt", "PasteDeploy\n")
    .file(
        "config.ini",
        "[app:main]\nuse = call:pasteapp:make_app\ngreeting = hello from paste\n",
    )
    .file(
        "pasteapp.py",
        "def make_app(global_conf, greeting):\n    \
         def app(environ, start_response):\n        \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n        \
         return [(greeting + '\\n').encode()]\n    return app\n",
    );
    node.deploy("pasted", &app).success();
    assert_eq!(node.body("pasted.localhost"), "hello from paste\n");
    assert_eq!(node.body("3.pasted.localhost"), "hello from paste\n");
}

#[test]
fn static_only_app() {
    let node = Node::start();
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = brochure\nrunner = static\n",
    )
    .file("static/index.html", "<h1>brochure</h1>\n")
    .file("static/css/site.css", "body { color: red }\n");
    node.deploy("brochure", &app).success();
    assert_eq!(node.body("brochure.localhost"), "<h1>brochure</h1>\n");
    assert_eq!(
        node.get("brochure.localhost", "/css/site.css").code_body(),
        (200, "body { color: red }\n")
    );
    assert_eq!(node.get("brochure.localhost", "/missing").code, 404);
}

#[test]
fn static_files_win_over_the_app() {
    let node = Node::start();
    let app = App::plain("shadow", 1, "from the app\n");
    app.file("static/robots.txt", "User-agent: *\n")
        .file("static/docs/index.html", "docs index\n");
    node.deploy("shadow", &app).success();
    assert_eq!(
        node.get("shadow.localhost", "/robots.txt").code_body(),
        (200, "User-agent: *\n")
    );
    assert_eq!(
        node.get("shadow.localhost", "/docs/").code_body(),
        (200, "docs index\n")
    );
    assert_eq!(
        node.get("shadow.localhost", "/docs").code,
        301,
        "a directory gets its slash"
    );
    assert_eq!(
        node.get("shadow.localhost", "/anything").code_body(),
        (200, "from the app\n")
    );
}

#[test]
fn update_fetch_paths_are_requested_before_the_switch() {
    let node = Node::start();
    let app = App::new();
    app.file(
        "app.ini",
        "[production]\napp_name = fetchy\nupdate_fetch =\n    /setup\n    /warm\n",
    )
    .file(
        "main.py",
        "def application(environ, start_response):\n    \
         path = environ['PATH_INFO']\n    \
         status = '500 Internal Server Error' if path == '/warm' and FAIL else '200 OK'\n    \
         start_response(status, [('Content-Type', 'text/plain')])\n    \
         return [('%s ok\\n' % path).encode()]\nFAIL = False\n",
    );
    node.deploy("fetchy", &app)
        .success()
        .stdout_has("checked GET /setup: 200")
        .stdout_has("checked GET /warm: 200");
    let good = node.body("fetchy.localhost");

    app.file(
        "main.py",
        &std::fs::read_to_string(app.path.join("main.py"))
            .expect("read")
            .replace("FAIL = False", "FAIL = True"),
    );
    node.deploy("fetchy", &app)
        .failure()
        .stderr_has("update_fetch /warm answered 500");
    assert_eq!(node.body("fetchy.localhost"), good);
}

#[test]
fn pyproject_dependencies_are_installed() {
    require_wheelhouse();
    let node = Node::start();
    let app = App::new();
    app.file("app.ini", "[production]\napp_name = proj\n")
        .file(
            "pyproject.toml",
            "[project]\nname = \"proj\"\nversion = \"0.1\"\ndependencies = [\"flask\"]\n",
        )
        .file(
            "main.py",
            "import flask\n\
             def application(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [b'flask is here\\n']\n",
        );
    node.deploy("proj", &app)
        .success()
        .stdout_has("installing pyproject.toml");
    assert_eq!(node.body("proj.localhost"), "flask is here\n");
}
