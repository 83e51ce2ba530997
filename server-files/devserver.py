# `toppcloud serve`'s development server. The toppcloud binary writes this
# file and runner.py to a private temporary directory and runs it with the
# app's Python (its .venv, else /usr/bin/python3) in the app directory, with
# the node's environment variables already set; it restarts this process
# whenever a file of the app changes.
#
# It serves the app the way a node does: files under static/ first, with the
# rules of the node's Apache configuration (sites.conf.in), then the app,
# loaded by the same runner.py the node's WSGI shim uses.
#
# The toppcloud binary owns the listening socket and passes it as an open
# file descriptor, so that connections made during a restart wait for the new
# process instead of being refused.
import argparse
import email.utils
import html
import json
import mimetypes
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import urllib.parse
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

_HERE = os.path.dirname(os.path.abspath(__file__))


def _import_runner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_toppcloud_runner", os.path.join(_HERE, "runner.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def error_app(text):
    """Answers every request with `text`: the app could not be loaded."""
    body = text.encode("utf-8", "replace")

    def app(environ, start_response):
        start_response("500 Internal Server Error", [
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def _segments(path):
    """The request path as Apache normalises it before mod_rewrite sees it
    (repeated slashes merged, "." and ".." resolved): the list of segments and
    whether it ends with a slash, or None for a path that climbs above the
    root (Apache answers 400)."""
    parts = path.split("/")
    trailing = parts[-1] in ("", ".", "..")
    out = []
    for seg in parts:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(seg)
    return out, trailing or not out


class Static:
    """static/ before the app, as the node's Apache rules do it:
    - static/PATH, when it is a file, for a path not ending in "/";
    - static/PATH/index.html for a path ending in "/" ("/" gives static/index.html);
    - a 301 from PATH to PATH/ when static/PATH/index.html exists;
    - anything else goes to the app.
    Files must resolve inside the app: a release keeps only the symlinks that
    stay inside it."""

    def __init__(self, app, app_dir):
        self.app = app
        self.root = os.path.realpath(app_dir)
        self.static = os.path.join(self.root, "static")

    def _file(self, *parts):
        path = os.path.join(self.static, *parts)
        try:
            real = os.path.realpath(path)
            if os.path.isfile(path) and real.startswith(self.root + os.sep):
                return path
        except (OSError, ValueError):
            pass
        return None

    def __call__(self, environ, start_response):
        # PEP 3333: PATH_INFO holds the URL-decoded bytes as latin-1.
        raw = environ.get("PATH_INFO", "") or "/"
        parsed = _segments(os.fsdecode(raw.encode("latin-1")))
        if parsed is None:
            return _plain(start_response, "400 Bad Request", "Bad Request\n")
        segs, trailing = parsed
        if not trailing:
            found = self._file(*segs)
            if found:
                return self._send(environ, start_response, found)
            if self._file(*segs, "index.html"):
                return self._redirect(environ, start_response, segs)
        else:
            found = self._file(*segs, "index.html")
            if found:
                return self._send(environ, start_response, found)
        return self.app(environ, start_response)

    def _redirect(self, environ, start_response, segs):
        host = environ.get("HTTP_HOST") or "%s:%s" % (environ["SERVER_NAME"], environ["SERVER_PORT"])
        path = urllib.parse.quote(os.fsencode("/" + "/".join(segs) + "/"), safe="/:@!$&'()*+,;=-._~")
        location = "%s://%s%s" % (environ.get("wsgi.url_scheme", "http"), host, path)
        if environ.get("QUERY_STRING"):
            location += "?" + environ["QUERY_STRING"]
        body = ("<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\" "
                "\"http://www.w3.org/TR/html4/strict.dtd\">\n<html><head>\n"
                "<title>301 Moved Permanently</title>\n</head><body>\n<h1>Moved Permanently</h1>\n"
                "<p>The document has moved <a href=\"%s\">here</a>.</p>\n</body></html>\n"
                % html.escape(location))
        return _plain(start_response, "301 Moved Permanently", body, [("Location", location)],
                      "text/html; charset=iso-8859-1")

    def _send(self, environ, start_response, path):
        method = environ.get("REQUEST_METHOD", "GET")
        allow = [("Allow", "HEAD,GET,POST,OPTIONS,TRACE")]
        if method == "OPTIONS":
            return _plain(start_response, "200 OK", "", allow)
        if method not in ("GET", "HEAD", "POST"):
            return _plain(start_response, "405 Method Not Allowed", "Method Not Allowed\n", allow)
        try:
            st = os.stat(path)
            f = open(path, "rb")
        except OSError:
            return _plain(start_response, "403 Forbidden", "Forbidden\n")
        headers = [("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))]
        # mod_mime with /etc/mime.types: the type of the last extension, none if unknown.
        ctype = mimetypes.types_map.get(os.path.splitext(path)[1].lower())
        if ctype:
            headers.append(("Content-Type", ctype))
        if _not_modified(environ.get("HTTP_IF_MODIFIED_SINCE"), st.st_mtime):
            f.close()
            start_response("304 Not Modified", headers[:1])
            return []
        headers.append(("Content-Length", str(st.st_size)))
        start_response("200 OK", headers)
        if method == "HEAD":
            f.close()
            return []
        wrapper = environ.get("wsgi.file_wrapper")
        return wrapper(f) if wrapper else iter(lambda: f.read(65536), b"")


def _not_modified(since, mtime):
    """Apache's rule: a date in the future is ignored."""
    if not since:
        return False
    try:
        when = email.utils.parsedate_to_datetime(since).timestamp()
    except (TypeError, ValueError, OverflowError):
        return False
    return int(mtime) <= when <= time.time()


def _plain(start_response, status, text, extra=(), ctype="text/plain; charset=utf-8"):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))] + list(extra))
    return [body]


class ShowErrors:
    """An exception from the app answers 500 with its traceback (on a node,
    Apache's plain 500 page; here, what a developer needs to see)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        try:
            return self.app(environ, start_response)
        except Exception:
            text = _app_traceback()
            sys.stderr.write(text)
            body = text.encode("utf-8", "replace")
            start_response("500 Internal Server Error", [
                ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
                sys.exc_info())
            return [body]


def _app_traceback():
    """The traceback of the exception being handled, without the frames of
    this server and of importlib: what is left is the app's."""
    te = traceback.TracebackException(*sys.exc_info())
    te.stack = traceback.StackSummary.from_list([
        frame for frame in te.stack
        if not frame.filename.startswith(_HERE + os.sep) and not frame.filename.startswith("<frozen ")])
    return "".join(te.format())


class Handler(WSGIRequestHandler):
    def log_message(self, format, *args):
        sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))


class DevServer(socketserver.ThreadingMixIn, WSGIServer):
    """A threaded WSGI server on an already listening socket."""

    daemon_threads = True

    def __init__(self, sock):
        WSGIServer.__init__(self, sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        # What WSGIServer.server_bind would set, without its reverse DNS lookup.
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


def _exit_with_parent(parent):
    """If the toppcloud binary goes away without stopping us, so do we."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main():
    parser = argparse.ArgumentParser(description="toppcloud serve's development server")
    parser.add_argument("--app-dir", required=True)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket")
    parser.add_argument("--parent", type=int, required=True, help="exit when this process does")
    parser.add_argument("--runner", help="the runner, as release.toml's [runner] in JSON")
    parser.add_argument("--error", help="serve this error instead of the app")
    args = parser.parse_args()

    # The toppcloud binary stops this process; Ctrl-C in the terminal reaches
    # both, and only the binary should act on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(args.parent,), daemon=True).start()

    runner = _import_runner()
    # Like the node: the app directory first on sys.path (instead of this
    # script's own), and the working directory.
    app_dir = os.path.abspath(args.app_dir)
    sys.path[0] = app_dir
    os.chdir(app_dir)
    sock = socket.socket(fileno=args.fd)

    if args.error is not None:
        app = error_app(args.error)
    else:
        try:
            app = runner.load_app(app_dir, json.loads(args.runner))
        except (Exception, SystemExit):
            text = _app_traceback()
            sys.stderr.write("toppcloud serve: the app failed to load (fix it and save: "
                             "it reloads):\n%s" % text)
            sys.stderr.flush()
            app = error_app("The app failed to load:\n\n%s" % text)

    server = DevServer(sock)
    server.set_app(Static(ShowErrors(app), app_dir))
    server.serve_forever()


if __name__ == "__main__":
    main()
