# toppcloud's WSGI shim. Every mod_wsgi daemon in the node's pool runs this
# script. A slot whose pointer (<data>/slots/<slot>/release) is unset stays an
# empty interpreter and answers 503; on the first request after the node sets
# the pointer it becomes that release, for the rest of the daemon's life. The
# node retires a slot by clearing the pointer and signalling the daemon, so a
# recycled slot can never come back as the release it used to be. The node
# never asks this script what it holds: it tracks daemons through the OS, as
# the app shares this interpreter and could make it answer anything.
import importlib.util
import ipaddress
import os
import site
import stat
import sys
import threading
import traceback
import tomllib

import mod_wsgi

_SLOT = mod_wsgi.process_group[len("tc_"):]
_SHARE = os.path.dirname(os.path.abspath(__file__))
_DATA = os.path.dirname(os.path.dirname(_SHARE))
_POINTER = os.path.join(_DATA, "slots", _SLOT, "release")
_SITE_PACKAGES = os.path.join("lib", "python%d.%d" % sys.version_info[:2], "site-packages")

_lock = threading.Lock()
_app = None
_release = None  # "<site> <id>", the release this daemon became


def _import_runner():
    """runner.py, written next to this file by the node: how app.ini's runner
    becomes a WSGI callable (shared with `toppcloud serve`). Imported by path
    under a private name so that an app's own `runner` module still works."""
    spec = importlib.util.spec_from_file_location("_toppcloud_runner", os.path.join(_SHARE, "runner.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_runner = _import_runner()
LoadError = _runner.LoadError


def _open_log(site):
    """Points fd 2 at the site's error log before any app code runs. Apache
    gave the daemon its own error log as fd 2, and mod_wsgi writes there
    what the app prints to sys.stderr, wsgi.errors and the logging module
    (each line with the time and pid), the tracebacks of unhandled
    exceptions and its own errors for the daemon; C code and subprocesses
    write to fd 2 directly. The node made the file (root's, writable by the
    site's group, in a directory the site cannot change); a daemon that
    cannot open it keeps Apache's log."""
    path = os.path.join(_DATA, "sites", site, "logs", "error.log")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        print("toppcloud: slot %s cannot open %s: %s" % (_SLOT, path, e), file=sys.stderr)
        return
    os.dup2(fd, 2)
    os.close(fd)


def _close_log_pipes():
    """Closes this daemon's copies of Apache's access-log pipe (the node's
    log pipe names its inode in the share directory): with them, an app
    could write request lines in another site's name or read every site's."""
    try:
        with open(os.path.join(_SHARE, "access-pipes")) as f:
            inodes = {int(line) for line in f if line.strip().isdigit()}
    except OSError:
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) and st.st_ino in inodes:
            os.close(fd)


def _load():
    """Becomes the release the pointer names, or returns None while unset."""
    global _app, _release
    try:
        rel = os.path.realpath(_POINTER, strict=True)
    except OSError:
        return None
    with open(os.path.join(rel, "release.toml"), "rb") as f:
        meta = tomllib.load(f)
    venv = os.path.realpath(os.path.join(rel, "venv"))
    sp = os.path.join(venv, _SITE_PACKAGES)
    if not os.path.isdir(sp):
        raise LoadError("%s is missing: the release's virtualenv was built for another Python" % sp)
    app_dir = os.path.join(rel, "app")
    sys.path.insert(0, app_dir)
    site.addsitedir(sp)
    # The daemon's own prefix is the empty base venv; code that derives its
    # environment from sys.prefix or sys.executable (subprocesses, console
    # scripts) must see the release's venv instead.
    sys.executable = os.path.join(venv, "bin", "python")
    sys.prefix = sys.exec_prefix = venv
    os.environ["VIRTUAL_ENV"] = venv
    os.environ["PATH"] = os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    os.environ.update(meta.get("env", {}))
    _open_log(meta["site"])
    _close_log_pipes()
    os.chdir(app_dir)
    app = _runner.load_app(app_dir, meta["runner"])
    _release = "%s %s" % (meta["site"], meta["id"])
    _app = app
    print("toppcloud: slot %s (pid %d) loaded %s" % (_SLOT, os.getpid(), _release), file=sys.stderr)
    return app


def _from_front(environ):
    """A request the node's TLS front handed on: Apache set TC_FRONT only
    for one from loopback that carried the front's secret (a client can set
    no such variable, only HTTP_* ones). The app sees HTTPS and the client's
    address the front sent (X-Forwarded-For, which the front writes
    itself)."""
    environ["wsgi.url_scheme"] = "https"
    environ["HTTPS"] = "on"
    _client_from(environ)


def _client_from(environ):
    """The client's address as the node's own Apache or TLS front wrote it
    (TC_CLIENT, set by Apache only for a request carrying their secret):
    through the front, or from the first Apache to the one that runs this
    daemon."""
    client = environ.pop("TC_CLIENT", "").split(",")[-1].strip()
    try:
        environ["REMOTE_ADDR"] = str(ipaddress.ip_address(client))
    except ValueError:
        pass


def application(environ, start_response):
    if environ.get("TC_FRONT") == "1":
        _from_front(environ)
    elif environ.get("TC_HOP") == "1":
        _client_from(environ)
    else:
        environ.pop("TC_CLIENT", None)
    check = environ.get("TC_CHECK") == "1"
    app = _app
    if app is None:
        with _lock:
            try:
                app = _app or _load()
            except Exception:
                text = traceback.format_exc()
                print("toppcloud: slot %s failed to load:\n%s" % (_SLOT, text), file=sys.stderr)
                body = text.encode() if check else b"Internal Server Error\n"
                start_response("500 Internal Server Error", [
                    ("Content-Type", "text/plain; charset=utf-8"), ("X-Slot-State", "failed")])
                return [body]
        if app is None:
            start_response("503 Service Unavailable", [
                ("Content-Type", "text/plain"), ("Retry-After", "1"),
                ("X-Slot-State", "empty")])
            return [b"empty slot\n"]
    if not check:
        return app(environ, start_response)

    # Checks confirm the expected release answers, not just any 200.
    def start_checked(status, headers, exc_info=None):
        headers = list(headers) + [("X-Toppcloud-Release", _release)]
        return start_response(status, headers, exc_info)

    return app(environ, start_checked)
