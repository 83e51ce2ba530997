"""Shared helpers for the toppcloud benchmark scripts (stdlib only).

- find_binary(): the toppcloud binary ($TOPPCLOUD, else target/release/
  toppcloud under the repo root, built with `cargo build --release` if missing).
- Node: a private node in a fresh temp dir (loopback ports picked by the
  kernel), started and stopped as a context manager; the temp dir and the
  node (with its Apache) are cleaned up even when the benchmark fails.
- write_app(): a trivial WSGI app or a Flask app whose body is a given text;
  write_django_app(): a Django project on the site's PostgreSQL database,
  migrated by its release task, whose index view answers a given text.
- get(), wait_body(): plain HTTP/1.1 requests to the node's Apache on
  127.0.0.1 with a Host header.
- percentile(), median(), ms(): the statistics the scripts print.
- run_lines(), run_streams(): run a command, keeping each output line with
  the time it was read (run_streams keeps stdout and stderr apart).
- ensure_sshd(), Sshd: a private OpenSSH server on loopback (as bench/push
  sets it up), for comparisons with plain ssh transports.
"""

import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """A failure that ends the benchmark: printed as one line, exit 2."""


def log(msg):
    print(msg, flush=True)


def find_binary():
    """$TOPPCLOUD, else <repo>/target/release/toppcloud (built if missing)."""
    env = os.environ.get("TOPPCLOUD")
    if env:
        if not os.access(env, os.X_OK):
            raise BenchError(f"$TOPPCLOUD={env} is not an executable file")
        return os.path.abspath(env)
    path = os.path.join(REPO_ROOT, "target", "release", "toppcloud")
    if not os.access(path, os.X_OK):
        log(f"building {path} (cargo build --release) ...")
        try:
            # The binary must land where we look, whatever CARGO_TARGET_DIR says.
            env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(REPO_ROOT, "target"))
            subprocess.run(["cargo", "build", "--release"], cwd=REPO_ROOT,
                           env=env, check=True, timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired,
                FileNotFoundError) as e:
            raise BenchError(f"cannot build toppcloud: {e}")
        if not os.access(path, os.X_OK):
            raise BenchError(f"cargo build --release did not produce {path}")
    return path


# --- cleanup on signals -------------------------------------------------------

class Interrupted(BaseException):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def install_signal_handlers():
    """SIGTERM/SIGHUP unwind the stack like Ctrl-C, so `finally` cleans up."""
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


def _child_dies_with_parent():
    # Runs in the child before exec: if the benchmark dies hard (SIGKILL),
    # the node gets SIGTERM and stops its Apache itself.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def main_wrapper(main):
    """Runs main() with signal handling; maps errors to exit codes."""
    install_signal_handlers()
    try:
        code = main()
    except BenchError as e:
        log(f"error: {e}")
        code = 2
    except (KeyboardInterrupt, Interrupted) as e:
        log(f"interrupted ({e or 'Ctrl-C'}); cleaned up")
        code = 130
    sys.exit(code or 0)


# --- statistics ---------------------------------------------------------------

def percentile(values, p):
    """Nearest-rank percentile (p in 0..100): always an observed value."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def median(values):
    return statistics.median(values) if values else float("nan")


def ms(seconds):
    return f"{seconds * 1000:.1f}"


# --- apps -----------------------------------------------------------------------

APP_INI = "[production]\napp_name = {name}\nversion = 1\nrunner = main.py\n"

TRIVIAL_MAIN = '''\
BODY = {body!r}


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(BODY)))])
    return [BODY]
'''

FLASK_MAIN = '''\
from flask import Flask

application = Flask(__name__)
BODY = {body!r}


@application.route("/")
def index():
    return BODY, 200, {{"Content-Type": "text/plain"}}
'''


def write_app(app_dir, body, flask=False, name="bench"):
    """Writes app.ini and main.py (and requirements.txt for Flask).

    `body` is a str; the app answers GET / with exactly it. Only main.py
    changes between calls with the same `flask`, so the requirements (and
    the venv the node caches by their hash) stay the same.
    """
    os.makedirs(app_dir, exist_ok=True)
    with open(os.path.join(app_dir, "app.ini"), "w") as f:
        f.write(APP_INI.format(name=name))
    tmpl = FLASK_MAIN if flask else TRIVIAL_MAIN
    data = body.encode() if not flask else body
    tmp = os.path.join(app_dir, ".main.py.tmp")
    with open(tmp, "w") as f:
        f.write(tmpl.format(body=data))
    os.replace(tmp, os.path.join(app_dir, "main.py"))
    req = os.path.join(app_dir, "requirements.txt")
    if flask:
        with open(req, "w") as f:
            f.write("flask\n")
    elif os.path.exists(req):
        os.remove(req)


# A Django project laid out as `django-admin startproject benchsite` and
# `manage.py startapp notes` lay it out (settings trimmed to what differs:
# the secret, the hosts and the database come from the node), with one model
# and its migration. Its release task, `manage.py migrate --noinput`, runs at
# every deploy; after the first one it has nothing to apply.
DJANGO_FILES = {
    "app.ini": (
        "[production]\napp_name = {name}\nversion = 1\n"
        "runner = benchsite/wsgi.py\n"
        "update_fetch = script:manage.py migrate --noinput\n"
        "service.postgresql =\n"),
    "requirements.txt": "django\ndj-database-url\npsycopg2-binary\n",
    "manage.py": '''\
#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
''',
    "benchsite/__init__.py": "",
    "benchsite/settings.py": '''\
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ["CONFIG_SECRET"]
DEBUG = False
ALLOWED_HOSTS = ["." + os.environ["CANONICAL_HOST"]]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "notes",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "benchsite.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
WSGI_APPLICATION = "benchsite.wsgi.application"
DATABASES = {"default": dj_database_url.config()}
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
''',
    "benchsite/urls.py": '''\
from django.contrib import admin
from django.urls import path

from notes import views

urlpatterns = [path("admin/", admin.site.urls), path("", views.index)]
''',
    "benchsite/wsgi.py": '''\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
application = get_wsgi_application()
''',
    "notes/__init__.py": "",
    "notes/models.py": '''\
from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
''',
    "notes/migrations/__init__.py": "",
    "notes/migrations/0001_initial.py": '''\
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Note",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("text", models.CharField(max_length=200)),
            ],
        ),
    ]
''',
}

DJANGO_VIEWS = '''\
from django.http import HttpResponse

from .models import Note

BODY = {body!r}


def index(request):
    Note.objects.count()  # a query, so the answer needs the database
    return HttpResponse(BODY, content_type="text/plain")
'''


def write_django_app(app_dir, body, name="bench"):
    """Writes the Django project (DJANGO_FILES); its index view answers GET /
    with exactly `body` (a str) after a query. Only notes/views.py changes
    between calls, so the venv is reused and migrate has nothing to do."""
    for rel, text in DJANGO_FILES.items():
        path = os.path.join(app_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text.format(name=name) if rel == "app.ini" else text)
    views = os.path.join(app_dir, "notes", "views.py")
    tmp = views + ".tmp"
    with open(tmp, "w") as f:
        f.write(DJANGO_VIEWS.format(body=body))
    os.replace(tmp, views)


# --- HTTP -----------------------------------------------------------------------

def get(port, host, path="/", timeout=5.0):
    """One request on a fresh connection: (status, body bytes)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_body(port, host, body, deadline_s=10.0, interval=0.005):
    """Polls until `host` answers 200 with exactly `body` (bytes).

    Returns the perf_counter() time it first did, or None at the deadline.
    """
    end = time.perf_counter() + deadline_s
    while True:
        try:
            status, got = get(port, host, timeout=2.0)
            if status == 200 and got == body:
                return time.perf_counter()
        except (OSError, http.client.HTTPException):
            pass
        if time.perf_counter() >= end:
            return None
        time.sleep(interval)


# --- the node -------------------------------------------------------------------

def _proc_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Node:
    """A private toppcloud node in a fresh temp dir.

    with Node(binary) as node:
        node.deploy("bench", app_dir)
        node.apache_port, node.http_port, node.pid, node.data_dir, node.tmp
    """

    def __init__(self, binary, ready_timeout=60.0, stop_timeout=60.0,
                 keep_tmp=False, ssh=False, apache_cells=None,
                 extra_http="", extra_config="", wheelhouse=None,
                 extra_apache="", apache_port=0):
        """extra_http: lines added to the config's [http] table;
        extra_apache: lines added to its [apache] table; apache_port:
        the loopback port Apache listens on (0: one the kernel picks);
        extra_config: TOML appended after the last table ([sites.*]);
        wheelhouse: a directory of wheels the node installs from, and from
        nothing else (`[build] find_links`, `no_index = true`); without it,
        the package index.
        The node always listens for ssh on a free loopback port (a dev node
        or another bench may hold 2222); ssh=True also requires node.ready to
        name it (node.ssh_port). apache_cells sets [apache] cells (a site
        takes one cell for its life)."""
        self.binary = binary
        self.extra_http = extra_http
        self.extra_apache = extra_apache
        self.apache_port_want = int(apache_port)
        self.extra_config = extra_config
        self.wheelhouse = wheelhouse
        self.ssh = ssh
        self.apache_cells = apache_cells
        self.ssh_addr = self.ssh_port = None
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.keep_tmp = keep_tmp
        self.proc = None
        self.tmp = None
        self.warnings = []

    # context manager
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        self.tmp = tempfile.mkdtemp(prefix="toppcloud-bench-", dir="/tmp")
        # Apache serves as www-data: every dir above the data must be 0755.
        os.chmod(self.tmp, 0o755)
        self.data_dir = os.path.join(self.tmp, "data")
        self.apps_dir = os.path.join(self.tmp, "apps")
        uv_cache = os.path.join(self.tmp, "uv-cache")
        for d in (self.data_dir, self.apps_dir, uv_cache):
            os.makedirs(d, mode=0o755)
            os.chmod(d, 0o755)
        self.config = os.path.join(self.tmp, "node.toml")
        # The config may hold secrets: the node refuses one others can read.
        with open(os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  "w") as f:
            f.write(
                f'data_dir = "{self.data_dir}"\n'
                'domain = "localhost"\n'
                '[http]\nlisten = "127.0.0.1:0"\n'
                f'{self.extra_http}'
                f'[apache]\nlisten = "127.0.0.1:{self.apache_port_want}"\n'
                + (f'cells = {int(self.apache_cells)}\n'
                   if self.apache_cells else '')
                + self.extra_apache
                + '[ssh]\nlisten = "127.0.0.1:0"\n'
                + f'[build]\nkeep_releases = 5\nuv_cache_dir = "{uv_cache}"\n'
                + (f'find_links = ["{self.wheelhouse}"]\nno_index = true\n'
                   if self.wheelhouse else '')
                + f'{self.extra_config}'
            )
        self.log_path = os.path.join(self.tmp, "node.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "node", "run", "--config", self.config],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_child_dies_with_parent)
        ready = os.path.join(self.data_dir, "node.ready")
        deadline = time.monotonic() + self.ready_timeout
        info = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"node exited with {self.proc.returncode} before ready:\n"
                    + self.log_tail())
            try:
                with open(ready) as f:
                    info = json.load(f)
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        if info is None:
            raise BenchError(f"node not ready within {self.ready_timeout:.0f} s:\n"
                             + self.log_tail())
        self.ready_at = time.monotonic()
        self.pid = int(info["pid"])
        self.http_addr = info["http"]
        self.apache_addr = info["apache"]
        for addr in (self.http_addr, self.apache_addr):
            if not addr.startswith(LOOPBACK + ":"):
                raise BenchError(f"node listens on {addr}, not loopback; refusing")
        if self.ssh:
            self.ssh_addr = info.get("ssh")
            if not self.ssh_addr or not self.ssh_addr.startswith(LOOPBACK + ":"):
                raise BenchError(f"node.ready has ssh {self.ssh_addr!r}, "
                                 "not a loopback address")
            self.ssh_port = int(self.ssh_addr.rsplit(":", 1)[1])
        self.http_port = int(self.http_addr.rsplit(":", 1)[1])
        self.apache_port = int(self.apache_addr.rsplit(":", 1)[1])
        url = f"http://{self.http_addr}/healthz"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise BenchError(f"GET {url} is not 200 within "
                                 f"{self.ready_timeout:.0f} s")
            time.sleep(0.05)

    def log_tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no node log)"

    def log_lines(self, *markers):
        """Node log lines (colour codes stripped) containing any marker."""
        try:
            with open(self.log_path, "rb") as f:
                text = strip_ansi(f.read().decode(errors="replace"))
        except OSError:
            return []
        return [l for l in text.splitlines()
                if not markers or any(m in l for m in markers)]

    def add_key(self, name, pub_path):
        """`toppcloud node keys add NAME PUB --config node.toml`."""
        r = subprocess.run([self.binary, "node", "keys", "add", name, pub_path,
                            "--config", self.config], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise BenchError(f"node keys add failed ({r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()}")

    def apache_pid(self):
        """The private Apache's parent pid from its pid file, or None."""
        path = os.path.join(self.data_dir, "apache", "run", "httpd.pid")
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def apache_pids(self):
        """The parent pids of every Apache of the node's pool: the one
        clients reach, then one per growth of the pool (apache/shard-K)."""
        dirs = [os.path.join(self.data_dir, "apache")]
        try:
            shards = sorted(d for d in os.listdir(dirs[0]) if d.startswith("shard-"))
        except OSError:
            shards = []
        dirs += [os.path.join(dirs[0], d) for d in shards]
        pids = []
        for d in dirs:
            try:
                with open(os.path.join(d, "run", "httpd.pid")) as f:
                    pids.append(int(f.read().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def app_dir(self, name):
        return os.path.join(self.apps_dir, name)

    def deploy(self, site, app_dir, timeout=300.0):
        """Runs `toppcloud node deploy`; returns a DeployResult.

        Output lines (stdout and stderr) are read as they arrive and kept
        with the perf_counter() time each was read, so a caller can see
        where a deploy spends its time.
        """
        cmd = [self.binary, "node", "deploy", site, app_dir,
               "--data-dir", self.data_dir]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        lines = []
        try:
            for raw in p.stdout:
                lines.append((time.perf_counter(),
                              raw.decode(errors="replace").rstrip("\n")))
            rc = p.wait()
            t1 = time.perf_counter()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
        if timed_out and rc != 0:
            rc = None
            lines.append((t1, f"(killed: no exit within {timeout:.0f} s)"))
        return DeployResult(t0, t1, rc, lines)

    def stop(self):
        """SIGTERM the node and wait (bounded); make sure Apache is gone."""
        if self.proc is None:
            return
        apaches = [(a, _cmdline(a)) for a in self.apache_pids()]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.warnings.append(
                    f"node did not exit within {self.stop_timeout:.0f} s of "
                    "SIGTERM; killed it")
                self.proc.kill()
                self.proc.wait(timeout=10)
        elif self.proc.returncode not in (0, None):
            self.warnings.append(f"node had exited with {self.proc.returncode}")
        # The node stops its Apaches; if it did not, clean up (and say so).
        for apache, apache_cmd in apaches:
            if self.data_dir not in apache_cmd:
                continue
            end = time.monotonic() + 10
            while _proc_alive(apache) and self.data_dir in _cmdline(apache):
                if time.monotonic() >= end:
                    self.warnings.append(
                        f"Apache (pid {apache}) still ran after the node "
                        "stopped; sent it SIGTERM")
                    try:
                        os.kill(apache, signal.SIGTERM)
                    except OSError:
                        pass
                    break
                time.sleep(0.1)
        self.proc = None

    def close(self):
        try:
            self.stop()
        finally:
            if getattr(self, "_log", None):
                self._log.close()
            if self.tmp and not self.keep_tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
            elif self.tmp:
                log(f"kept {self.tmp}")
            for w in self.warnings:
                log(f"warning: {w}")
            self.warnings = []


class DeployResult:
    def __init__(self, t0, t1, returncode, lines):
        self.t0, self.t1 = t0, t1
        self.returncode = returncode
        self.lines = lines  # [(perf_counter time, line)]

    @property
    def ok(self):
        return self.returncode == 0

    @property
    def seconds(self):
        return self.t1 - self.t0

    @property
    def last_line(self):
        return self.lines[-1][1] if self.lines else ""

    def at(self, marker):
        """Seconds from invocation to the first output line containing
        `marker`, or None."""
        for t, line in self.lines:
            if marker in line:
                return t - self.t0
        return None

    def describe_failure(self):
        tail = "\n    ".join(line for _, line in self.lines[-6:])
        return (f"deploy exited {self.returncode} after {self.seconds:.2f} s:"
                f"\n    {tail}")


def add_common_args(parser):
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (node log, data) for inspection")


# --- commands, git and ssh --------------------------------------------------------

_ANSI = None


def strip_ansi(text):
    global _ANSI
    if _ANSI is None:
        import re
        _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
    return _ANSI.sub("", text)


def run_lines(cmd, timeout, cwd=None, env=None):
    """Runs cmd, keeping each output line (stdout and stderr) with the
    perf_counter() time it was read; killed after `timeout` s. Returns a
    DeployResult (returncode None if killed)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    lines = []
    try:
        for raw in p.stdout:
            text = raw.decode(errors="replace").rstrip()
            # git's sideband pads remote lines with spaces and may use \r.
            for part in text.split("\r"):
                if part.strip():
                    lines.append((time.perf_counter(), part.rstrip()))
        rc = p.wait()
        t1 = time.perf_counter()
    finally:
        timed_out = not timer.is_alive()
        timer.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    if timed_out and rc != 0:
        rc = None
        lines.append((t1, f"(killed: no exit within {timeout:.0f} s)"))
    return DeployResult(t0, t1, rc, lines)


def git_env(ssh_key=None):
    """An environment for git that ignores the user's and system's config;
    with ssh_key, GIT_SSH_COMMAND uses only that key and trusts any host."""
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost",
               GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    if ssh_key:
        env["GIT_SSH_COMMAND"] = " ".join(ssh_command(ssh_key))
    return env


def ssh_command(key):
    return ["ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


def git(cwd, *args, env=None, timeout=120):
    """Runs git quietly; raises BenchError with its output if it fails."""
    try:
        r = subprocess.run(["git", *args], cwd=cwd, env=env or git_env(),
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"git {' '.join(args)} took over {timeout} s")
    if r.returncode != 0:
        raise BenchError(f"git {' '.join(args)} exited {r.returncode}: "
                         f"{(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout


def ssh_keygen(path):
    """A fresh passphrase-less ed25519 key pair at path / path.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench",
                    "-f", path], stdin=subprocess.DEVNULL, check=True, timeout=30)
    return path


def free_port():
    """A loopback TCP port that was free a moment ago."""
    import socket
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def run_streams(cmd, timeout, cwd=None, env=None):
    """Like run_lines, but keeps stdout and stderr apart: each line is kept
    as (perf_counter() time, "out" or "err", text). Returns a DeployResult
    whose `lines` are (time, text) for both streams, in the order read,
    and whose `streams` are the tagged lines (returncode None if killed)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    tagged, lock = [], threading.Lock()

    def reader(pipe, tag):
        for raw in pipe:
            t = time.perf_counter()
            text = raw.decode(errors="replace").rstrip()
            if text.strip():
                with lock:
                    tagged.append((t, tag, text))

    threads = [threading.Thread(target=reader, args=(p.stdout, "out"), daemon=True),
               threading.Thread(target=reader, args=(p.stderr, "err"), daemon=True)]
    try:
        for th in threads:
            th.start()
        rc = p.wait()
        t1 = time.perf_counter()
        for th in threads:
            th.join(timeout=10)
    finally:
        timed_out = not timer.is_alive()
        timer.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    if timed_out and rc != 0:
        rc = None
        tagged.append((t1, "err", f"(killed: no exit within {timeout:.0f} s)"))
    tagged.sort(key=lambda x: x[0])
    res = DeployResult(t0, t1, rc, [(t, text) for t, _, text in tagged])
    res.streams = tagged
    return res


# --- a private OpenSSH server (the same setup as bench/push's) ------------------

SSHD = "/usr/sbin/sshd"


def ensure_sshd():
    """Returns None if /usr/sbin/sshd is there (installing openssh-server
    with apt-get if need be, as root), else why an OpenSSH comparison is
    skipped."""
    if os.access(SSHD, os.X_OK):
        return None
    if os.geteuid() != 0:
        return f"{SSHD} is missing and installing openssh-server needs root"
    log("installing openssh-server (apt-get) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
           "openssh-server"]
    for attempt in (1, 2):
        try:
            r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return "apt-get install openssh-server took over 600 s"
        if r.returncode == 0 and os.access(SSHD, os.X_OK):
            return None
        if attempt == 1:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update", "-q"], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=600)
    return ("apt-get install openssh-server failed: "
            + (r.stderr or r.stdout).strip()[-300:])


class Sshd:
    """A private `sshd -D` on a free loopback port, its host key,
    authorized_keys (client_pub), config, log and pid file in DIR/sshd;
    a context manager that kills it (by its pid) on exit. UsePAM no,
    StrictModes no, public keys only."""

    def __init__(self, tmp, client_pub):
        self.dir = os.path.join(tmp, "sshd")
        os.makedirs(self.dir)
        self.proc = None
        self.client_pub = client_pub

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        import socket
        d = self.dir
        host_key = ssh_keygen(os.path.join(d, "host_ed25519"))
        shutil.copy(self.client_pub, os.path.join(d, "authorized_keys"))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privsep dir
        self.port = free_port()
        self.conf = os.path.join(d, "sshd_config")
        self.log_path = os.path.join(d, "sshd.log")
        with open(self.conf, "w") as f:
            f.write(f"ListenAddress {LOOPBACK}:{self.port}\n"
                    f"HostKey {host_key}\n"
                    f"PidFile {d}/sshd.pid\n"
                    f"AuthorizedKeysFile {d}/authorized_keys\n"
                    "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                    "PermitRootLogin prohibit-password\nLogLevel INFO\n")
        # -D: stays in the foreground as our child, so we can kill it by pid.
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-f", self.conf, "-E", self.log_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_child_dies_with_parent)
        end = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"sshd exited {self.proc.returncode}:\n"
                                 + self.log_tail())
            try:
                socket.create_connection((LOOPBACK, self.port), 1).close()
                break
            except OSError:
                pass
            if time.monotonic() >= end:
                raise BenchError("sshd does not accept connections within "
                                 "15 s:\n" + self.log_tail())
            time.sleep(0.05)

    def log_tail(self, n=10):
        try:
            with open(self.log_path) as f:
                return "\n".join(f.read().splitlines()[-n:])
        except OSError:
            return "(no sshd log)"

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
