# toppcloud's runner loading: how app.ini's `runner` becomes a WSGI callable.
# One copy for both places an app runs: the node's WSGI shim (shim.wsgi, in
# every mod_wsgi daemon) and the laptop's `toppcloud serve` (devserver.py).
# Both import this file by path under a private module name, so an app with
# its own `runner` module is not affected.
#
# `runner` is the dict the node writes as release.toml's [runner] table (and
# serve passes as JSON): {"kind": "python", "file": "main.py", "object":
# "application"}, {"kind": "paste", "file": "config.ini", "section": "main"}
# (section optional) or {"kind": "static"}. Paths are relative to the app
# directory. The caller puts the app directory on sys.path, sets the app's
# environment and changes into the app directory before calling load_app.
import functools
import importlib.util
import os
import sys


class LoadError(Exception):
    pass


def not_found(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"Not Found\n"]


def python_app(app_dir, runner):
    path = os.path.join(app_dir, runner["file"])
    name = os.path.splitext(os.path.basename(path))[0]
    # A runner below a subdirectory imports its siblings the way `python
    # sub/file.py` would.
    sub = os.path.dirname(path)
    if sub != app_dir:
        sys.path.insert(1, sub)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    try:
        return functools.reduce(getattr, runner["object"].split("."), module)
    except AttributeError:
        raise LoadError("%s defines no %r (app.ini runner)" % (runner["file"], runner["object"]))


def paste_app(app_dir, runner):
    try:
        from paste.deploy import loadapp
    except ImportError:
        raise LoadError("runner %s needs PasteDeploy: add it to requirements.txt" % runner["file"])
    path = os.path.join(app_dir, runner["file"])
    return loadapp("config:" + path, name=runner.get("section") or None, global_conf=global_conf())


def global_conf():
    """Paste Deploy's global configuration: the app's environment, plus the
    site's secret as `SECRET` (its name in the original toppcloud), so that
    config.ini can say `secret = %(SECRET)s`."""
    conf = dict(os.environ)
    if "CONFIG_SECRET" in os.environ:
        conf["SECRET"] = os.environ["CONFIG_SECRET"]
    return conf


def load_app(app_dir, runner):
    """The WSGI callable `runner` names in the app at `app_dir`."""
    kind = runner["kind"]
    if kind == "python":
        return python_app(app_dir, runner)
    if kind == "paste":
        return paste_app(app_dir, runner)
    if kind == "static":
        return not_found
    raise LoadError("unknown runner kind %r" % kind)

