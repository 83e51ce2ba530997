# toppcloud's WSGI shim. Every mod_wsgi daemon in the node's pool runs this
# script. A slot whose pointer (<data>/slots/<slot>/release) is unset stays an
# empty interpreter and answers 503; on the first request after the node sets
# the pointer it becomes that release, for the rest of the daemon's life. The
# node retires a slot by clearing the pointer and signalling the daemon, so a
# recycled slot can never come back as the release it used to be. The node
# never asks this script what it holds: it tracks daemons through the OS, as
# the app shares this interpreter and could make it answer anything.
import importlib.util
import io
import os
import site
import stat
import sys
import threading
import time
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


class _Stamped(io.TextIOBase):
    """The site's error log as sys.stderr (and sys.stdout): every line
    starts with the time and the daemon's pid, whoever writes it (print,
    the logging module, tracebacks). Line buffered: nothing waits in a
    buffer for a daemon that is killed."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, fd):
        self._fd = fd
        self._lock = threading.Lock()
        self._at_start = True
        self.buffer = io.FileIO(fd, "w", closefd=False)

    def _prefix(self):
        now = time.time()
        return "[%s.%03d] [pid %d] " % (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), int(now % 1 * 1000), os.getpid())

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        with self._lock:
            out = []
            for piece in s.splitlines(keepends=True):
                if self._at_start:
                    out.append(self._prefix())
                out.append(piece)
                self._at_start = piece.endswith("\n")
            data = "".join(out).encode("utf-8", "backslashreplace")
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
        return len(s)

    def fileno(self):
        return self._fd

    def writable(self):
        return True

    def isatty(self):
        return False

    def flush(self):
        pass


_log = None


def _open_log(site):
    """Points fd 2, sys.stderr and sys.stdout at the site's error log, so C
    code and subprocesses write there too. The node made the file (root's,
    writable by the site's group, in a directory the site cannot change);
    a daemon that cannot open it keeps Apache's log."""
    global _log
    path = os.path.join(_DATA, "sites", site, "logs", "error.log")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        print("toppcloud: slot %s cannot open %s: %s" % (_SLOT, path, e), file=sys.stderr)
        return
    os.dup2(fd, 2)
    os.close(fd)
    _log = _Stamped(2)
    sys.stderr = sys.stdout = _log


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


def _log_exception(what):
    text = traceback.format_exc()
    print("toppcloud: %s:\n%s" % (what, text.rstrip("\n")), file=sys.stderr)
    return text


class _Logged:
    """A response iterable whose failures land in the site's log."""

    def __init__(self, result, environ):
        self._result = result
        self._environ = environ

    def __iter__(self):
        try:
            for chunk in self._result:
                yield chunk
        except Exception:
            _log_exception("exception in the response to %s" % _request_line(self._environ))
            raise

    def close(self):
        close = getattr(self._result, "close", None)
        if close is not None:
            close()


def _request_line(environ):
    return "%s %s" % (environ.get("REQUEST_METHOD", "?"), environ.get("REQUEST_URI", "?"))


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


def application(environ, start_response):
    check = environ.get("TC_CHECK") == "1"
    app = _app
    if app is None:
        with _lock:
            try:
                app = _app or _load()
            except Exception:
                text = _log_exception("slot %s failed to load" % _SLOT)
                body = text.encode() if check else b"Internal Server Error\n"
                start_response("500 Internal Server Error", [
                    ("Content-Type", "text/plain; charset=utf-8"), ("X-Slot-State", "failed")])
                return [body]
        if app is None:
            start_response("503 Service Unavailable", [
                ("Content-Type", "text/plain"), ("Retry-After", "1"),
                ("X-Slot-State", "empty")])
            return [b"empty slot\n"]
    if _log is not None:
        # Frameworks log a request's errors to wsgi.errors (Flask does):
        # the site's log, not Apache's.
        environ["wsgi.errors"] = _log
    if check:
        # Checks confirm the expected release answers, not just any 200.
        def start_checked(status, headers, exc_info=None):
            headers = list(headers) + [("X-Toppcloud-Release", _release)]
            return start_response(status, headers, exc_info)
    else:
        start_checked = start_response
    try:
        result = app(environ, start_checked)
    except Exception:
        _log_exception("exception in %s" % _request_line(environ))
        raise
    wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(result, (list, tuple)) or (isinstance(wrapper, type) and isinstance(result, wrapper)):
        return result
    return _Logged(result, environ)
