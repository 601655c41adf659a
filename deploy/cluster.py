"""Two llmserver processes behind nginx on one machine: what `make cluster` runs.

    python deploy/cluster.py run      # start, wait in the foreground; Ctrl-C stops it all
    python deploy/cluster.py start    # start and return (the processes keep running)
    python deploy/cluster.py stop     # stop what `run` or `start` started
    python deploy/cluster.py status   # what is running, from the pid files

The servers share one database (DATABASE_URL, default the local PostgreSQL database
``llmserver``, created if missing and migrated once before the servers start) and one
Redis (REDIS_URL, the chat page's channel layer). They listen on loopback only, with
TRUST_X_FORWARDED_FOR=true: nginx (Debian's, `make nginx`) sets X-Forwarded-For, so the
servers see each client's address. nginx runs as an unprivileged master of its own, from
the run directory (``.cluster/`` by default): its config (rendered from
deploy/nginx/cluster.conf.template, with the shared proxy settings of
deploy/nginx/llmserver-proxy.conf), pid file and logs are there, beside the servers' pid
files and logs. The system's nginx (its /etc/nginx config, its service) is never used.

Every other variable of the environment reaches the servers as it is (MODEL_PATH,
SHUTDOWN_GRACE_SECONDS, METRICS_ALLOWED_IPS, ...). Settings of this script, from the
environment or the options:

    CLUSTER_PORT           nginx's port (on CLUSTER_HOST, default 127.0.0.1)       8080
    CLUSTER_BACKEND_PORTS  the servers' loopback ports, comma-separated           8001,8002
    CLUSTER_RUN_DIR        pid files, logs, nginx's config                        .cluster
    NGINX                  the nginx binary                                        nginx

Stopping: nginx is asked to quit gracefully (SIGQUIT: it stops accepting and finishes
the responses in flight) and each server is sent SIGTERM at the same time (it drains:
the requests in flight finish, for up to SHUTDOWN_GRACE_SECONDS, llmserver/shutdown.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx" / "cluster.conf.template"
PROXY_INCLUDE = ROOT / "deploy" / "nginx" / "llmserver-proxy.conf"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/llmserver"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# How long a server gets to load its model and answer /health.
START_TIMEOUT = 120.0


class ClusterError(Exception):
    """Something that stops the cluster from starting, said in one line."""


def say(message: str) -> None:
    print(f"cluster: {message}", flush=True)


# --- configuration --------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "start", "stop", "status"))
    parser.add_argument("--host", default=os.environ.get("CLUSTER_HOST", "127.0.0.1"),
                        help="nginx's address (default 127.0.0.1, CLUSTER_HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CLUSTER_PORT", "8080")),
                        help="nginx's port (default 8080, CLUSTER_PORT)")
    parser.add_argument("--backend-ports", default=os.environ.get("CLUSTER_BACKEND_PORTS", "8001,8002"),
                        help="the servers' loopback ports, comma-separated (CLUSTER_BACKEND_PORTS)")
    parser.add_argument("--run-dir", type=Path, default=Path(os.environ.get("CLUSTER_RUN_DIR", ROOT / ".cluster")),
                        help="pid files, logs and nginx's config (default .cluster, CLUSTER_RUN_DIR)")
    parser.add_argument("--nginx", default=os.environ.get("NGINX") or shutil.which("nginx") or "/usr/sbin/nginx",
                        help="the nginx binary (NGINX; default: nginx on PATH, else /usr/sbin/nginx)")
    args = parser.parse_args(argv)
    args.run_dir = args.run_dir.resolve()
    try:
        args.backend_ports = [int(port) for port in args.backend_ports.split(",") if port.strip()]
    except ValueError:
        parser.error(f"--backend-ports must be port numbers, got {args.backend_ports!r}")
    if not args.backend_ports:
        parser.error("--backend-ports names no port")
    return args


def server_environment() -> dict:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    env["TRUST_X_FORWARDED_FOR"] = "true"  # behind nginx, which sets X-Forwarded-For
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("SERVER_HOST", None)  # the command line says where each listens
    env.pop("SERVER_PORT", None)
    return env


def max_body(env: dict) -> str:
    """client_max_body_size for MAX_REQUEST_SIZE_MB (nginx's m is MiB, as the server's MB)."""
    megabytes = float(env.get("MAX_REQUEST_SIZE_MB") or 10)
    return f"{int(megabytes)}m" if megabytes == int(megabytes) else f"{int(megabytes * 1024 * 1024)}"


def render_nginx_config(args: argparse.Namespace, env: dict) -> Path:
    text = TEMPLATE.read_text()
    values = {
        "RUN_DIR": str(args.run_dir),
        "LISTEN": f"{args.host}:{args.port}",
        "UPSTREAM_SERVERS": "\n".join(f"        server 127.0.0.1:{port};" for port in args.backend_ports),
        "MAX_BODY": max_body(env),
        "PROXY_INCLUDE": str(PROXY_INCLUDE),
    }
    for name, value in values.items():
        text = text.replace("{{%s}}" % name, value)
    if "{{" in text:
        raise ClusterError(f"{TEMPLATE} has a placeholder this script does not fill: {text[text.index('{{'):][:40]}")
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (args.run_dir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
    path = args.run_dir / "nginx.conf"
    path.write_text(text)
    return path


# --- processes and pid files ------------------------------------------------------------


def pid_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("server-*.pid")) + [run_dir / "nginx.pid"]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int, expect: str) -> bool:
    """Whether ``pid`` runs, is not a zombie, and is what its pid file says (``expect`` in
    its command line: a pid file left by a crash may name a pid reused since)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and expect in cmdline


def expected_command(path: Path) -> str:
    if path.name == "nginx.pid":
        return "nginx"
    return f"--port {path.stem.removeprefix('server-')}"


def running(run_dir: Path) -> dict[Path, int]:
    """The processes of the pid files that are still running."""
    found = {}
    for path in pid_files(run_dir):
        pid = read_pid(path)
        if pid is not None and alive(pid, expected_command(path)):
            found[path] = pid
    return found


def wait_healthy(port: int, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"the server on port {port} exited with {process.returncode}; "
                               f"its log ({log_path}) ends:\n{tail(log_path)}")
        # Its own log says it listens: another process could hold the port.
        if f"listening on 127.0.0.1:{port}" in log_path.read_text(errors="replace"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.2)
    raise ClusterError(f"the server on port {port} did not answer /health in {START_TIMEOUT:.0f}s; "
                       f"its log ({log_path}) ends:\n{tail(log_path)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- the database -----------------------------------------------------------------------


def create_database_if_missing(url: str) -> None:
    """PostgreSQL: CREATE DATABASE, unless it exists (through the server's ``postgres``
    database, with the same credentials). Other databases (SQLite) need nothing."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql", "psql"):
        return
    import psycopg
    from psycopg import sql

    name = parts.path.lstrip("/")
    if not name:
        raise ClusterError(f"DATABASE_URL names no database: {url}")
    maintenance = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                say(f"created the database {name}")
    except psycopg.Error as error:
        raise ClusterError(f"PostgreSQL at {parts.hostname}:{parts.port or 5432} did not let the database "
                           f"{name!r} be found or created: {str(error).strip()}") from None


def migrate(env: dict, run_dir: Path) -> None:
    log_path = run_dir / "migrate.log"
    with open(log_path, "wb") as log:
        done = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise ClusterError(f"manage.py migrate failed ({log_path}):\n{tail(log_path)}")


# --- the commands -----------------------------------------------------------------------


def start(args: argparse.Namespace) -> None:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    if running(args.run_dir):
        raise ClusterError(f"already running (from {args.run_dir}); stop it first: make cluster-stop")
    (args.run_dir / "stopping").unlink(missing_ok=True)  # left by a stop cut short
    nginx = shutil.which(args.nginx)
    if nginx is None:  # not installed, or not executable
        raise ClusterError(f"no {args.nginx} on PATH: make nginx (or apt-get install nginx)")
    env = server_environment()
    config = render_nginx_config(args, env)
    checked = subprocess.run([nginx, "-t", "-q", "-c", str(config), "-p", str(args.run_dir)],
                             capture_output=True, text=True)
    if checked.returncode != 0:
        raise ClusterError(f"nginx refuses {config}:\n{checked.stderr.strip()}")

    create_database_if_missing(env["DATABASE_URL"])
    say(f"migrating {redacted(env['DATABASE_URL'])}")
    migrate(env, args.run_dir)

    servers = []
    try:
        for port in args.backend_ports:
            log_path = args.run_dir / f"server-{port}.log"
            with open(log_path, "wb") as log:
                # A session of its own: a Ctrl-C in the terminal reaches this script only,
                # which stops everything in order.
                process = subprocess.Popen(
                    [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            (args.run_dir / f"server-{port}.pid").write_text(f"{process.pid}\n")
            servers.append((port, process, log_path))
            say(f"server on 127.0.0.1:{port} starting (pid {process.pid}, log {log_path})")
        for port, process, log_path in servers:
            wait_healthy(port, process, log_path)
        launched = subprocess.run([nginx, "-c", str(config), "-p", str(args.run_dir)],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if launched.returncode != 0:
            raise ClusterError(f"nginx did not start:\n{launched.stderr.strip()}\n{tail(args.run_dir / 'nginx-error.log')}")
        deadline = time.monotonic() + 10
        while not running(args.run_dir).get(args.run_dir / "nginx.pid"):
            if time.monotonic() > deadline:
                raise ClusterError(f"nginx wrote no pid file:\n{tail(args.run_dir / 'nginx-error.log')}")
            time.sleep(0.05)
    except BaseException:
        stop(args, quiet=True)
        raise
    say(f"nginx on http://{args.host}:{args.port} -> " + ", ".join(f"127.0.0.1:{p}" for p in args.backend_ports))


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def stop(args: argparse.Namespace, *, quiet: bool = False) -> bool:
    """Stop what the pid files name; True if everything ended by itself (no SIGKILL)."""
    processes = running(args.run_dir)
    if not processes:
        if not quiet:
            say("nothing running")
        clean_pid_files(args.run_dir)
        return True
    # For `run`, waiting in the foreground: the stop is under way (a second SIGTERM from
    # it would cut the servers' drains short).
    marker = args.run_dir / "stopping"
    marker.touch()
    for path, pid in processes.items():
        # nginx: SIGQUIT is its graceful stop (SIGTERM would cut the responses in flight);
        # a server: SIGTERM drains it.
        os.kill(pid, signal.SIGQUIT if path.name == "nginx.pid" else signal.SIGTERM)
        if not quiet:
            say(f"stopping {path.stem} (pid {pid})")
    grace = float(os.environ.get("SHUTDOWN_GRACE_SECONDS") or 30) + 15
    clean = wait_gone(processes, grace)
    if not clean:
        for path, pid in processes.items():
            if alive(pid, expected_command(path)):
                say(f"{path.stem} (pid {pid}) still running after {grace:.0f}s: killing it")
                os.kill(pid, signal.SIGKILL)
        wait_gone(processes, 5)
    clean_pid_files(args.run_dir)
    marker.unlink(missing_ok=True)
    if not quiet:
        say("stopped")
    return clean


def wait_gone(processes: dict[Path, int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(pid, expected_command(path)) for path, pid in processes.items()):
            return True
        reap()
        time.sleep(0.05)
    return False


def reap() -> None:
    """Collect this script's own exited children (the servers, when it started them)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def clean_pid_files(run_dir: Path) -> None:
    for path in pid_files(run_dir):
        pid = read_pid(path)
        if pid is None or not alive(pid, expected_command(path)):
            path.unlink(missing_ok=True)


def status(args: argparse.Namespace) -> int:
    processes = running(args.run_dir)
    paths = pid_files(args.run_dir)
    if not any(path.exists() for path in paths):
        say(f"not running (no pid files in {args.run_dir})")
        return 1
    for path in paths:
        pid = read_pid(path)
        state = f"running (pid {pid})" if path in processes else "not running"
        say(f"{path.stem}: {state}")
    return 0 if len(processes) == len([p for p in paths if p.exists()]) else 1


def run(args: argparse.Namespace) -> int:
    """Start, then wait until Ctrl-C (or SIGTERM, or `make cluster-stop`, or a process
    dying), then stop everything."""
    stopping = []
    started = False

    def on_signal(signum, frame):
        if not started:  # while starting: undo what is started (start() stops it)
            raise KeyboardInterrupt
        if stopping:  # a second Ctrl-C: cut the servers' drains short (their second signal)
            for path, pid in running(args.run_dir).items():
                if path.name != "nginx.pid":
                    os.kill(pid, signal.SIGTERM)
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        start(args)
    except KeyboardInterrupt:
        say("interrupted while starting: stopped")
        return 130
    started = True
    say(f"serving on http://{args.host}:{args.port} (logs in {args.run_dir}); "
        "Ctrl-C here or `make cluster-stop` stops it")
    expected = len(args.backend_ports) + 1
    while not stopping:
        reap()
        if (args.run_dir / "stopping").exists():  # `make cluster-stop` from elsewhere
            say("stopping (make cluster-stop)")
            while running(args.run_dir) and not stopping:
                reap()
                time.sleep(0.1)
            if not stopping:
                say("stopped")
                return 0
        if len(running(args.run_dir)) < expected:
            say("a process of the cluster ended: stopping the rest")
            break
        time.sleep(0.2)
    return 0 if stop(args) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "start":
            start(args)
            say(f"serving on http://{args.host}:{args.port}; stop it with `make cluster-stop`")
            return 0
        if args.command == "run":
            return run(args)
        if args.command == "stop":
            return 0 if stop(args) else 1
        return status(args)
    except ClusterError as error:
        say(f"error: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
