"""A shared MLflow tracking server: PostgreSQL backend store, artifacts served over HTTP.

    pip install -e '.[server]'                      # psycopg2 for the server
    python -m transferlab.server up --dir /srv/transferlab-tracking
    python run.py -m tracking=server backbone=vgg19,resnet50 freeze=none,last4

``up`` creates (first time) and starts a PostgreSQL cluster in ``DIR/pgdata``
(listening on 127.0.0.1 only: nothing but the MLflow server talks to it), then
runs ``mlflow server --serve-artifacts`` on it with the artifacts in
``DIR/artifacts``, bound to 127.0.0.1:5000 by default, until Ctrl-C. Jobs log
runs, metrics and artifacts over HTTP only, so workers on other hosts need no
shared filesystem and no local store: start the server with ``--host 0.0.0.0``
(or this host's address) and sweep with ``tracking.uri=http://<this host>:5000``.
``--backend-store-uri postgresql://...`` uses a PostgreSQL you already run.

Bound beyond loopback (``--host 0.0.0.0``, this host's address), the server
runs MLflow's built-in basic-auth app (``--app-name basic-auth``; ``--auth
on|off`` overrides): the first start generates an admin password, prints it
once and keeps it in ``DIR/auth/admin_password`` (mode 0600); users live in
``DIR/auth/basic_auth.db``, every signed-in user may log runs (``default
permission = EDIT`` in ``DIR/auth/basic_auth.ini``), nobody else gets
anything but 401. Sweeps sign in through MLflow's own variables
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``; ``add-user`` creates
an account.

The PostgreSQL server binaries come from Debian's ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``). PostgreSQL refuses to run as root:
as root, the cluster is owned by and runs as ``--pg-user`` (default ``nobody``),
which must be able to reach DIR. Tests use the same functions.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DB_NAME = "mlflow"
DB_USER = "mlflow"
# Measured: defaults start 4 workers + a job runner (~2.5 GB, 15-25 s); these
# keep the server at ~490 MB and 7-14 s.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class ServerError(RuntimeError):
    """A tracking-server setup problem; the message says what to install or change."""


def pg_bindir() -> Path:
    """The folder with ``initdb`` and ``pg_ctl`` (PATH first, then Debian's layout)."""
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().with_name("createdb").exists():
        return Path(found).resolve().parent  # /usr/local/bin/pg_ctl may be a symlink
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                    reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    raise ServerError("PostgreSQL server binaries (initdb, pg_ctl) not found. Install them: "
                      "apt-get install postgresql (Debian/Ubuntu), or pass "
                      "--backend-store-uri postgresql://... for a PostgreSQL you already run.")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A PostgreSQL cluster in ``<root>/pgdata``, reachable on 127.0.0.1:``port`` only."""

    def __init__(self, root: str | Path, port: int = 5433, run_as: str = "nobody") -> None:
        self.root = Path(root).resolve()
        self.port = port
        self.data = self.root / "pgdata"
        self.sockets = self.root / "pgsocket"
        self.log = self.root / "postgres.log"
        self.bindir = pg_bindir()
        self.user = run_as if os.geteuid() == 0 else None

    @property
    def uri(self) -> str:
        """The backend store URI for ``mlflow server`` (trust auth on loopback)."""
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self.user,
                           capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if p.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise ServerError(f"{args[0]} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}"
                              + (f"\n--- {self.log}:\n{log}" if log else ""))
        return p

    def init(self) -> bool:
        """Creates the cluster unless it exists; returns whether it was created."""
        if (self.data / "PG_VERSION").exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self.user:  # as root: the cluster belongs to the unprivileged user
            import pwd

            pw = pwd.getpwnam(self.user)
            for p in (self.sockets, self.data):
                p.mkdir(exist_ok=True)
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self.log.touch()
            os.chown(self.log, pw.pw_uid, pw.pw_gid)
            if subprocess.run(["test", "-x", str(self.root)], user=self.user).returncode:
                raise ServerError(f"user {self.user!r} cannot reach {self.root}: PostgreSQL refuses "
                                  "to run as root and runs as that user. Pick a folder it can "
                                  "traverse (e.g. under /srv or /tmp), or --pg-user.")
        self._run("initdb", "-D", str(self.data), "-U", DB_USER, "-E", "UTF8",
                  "--auth-local=trust", "--auth-host=trust", "--no-instructions")
        return True

    def start(self, timeout: float = 60) -> None:
        created = self.init()
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts,
                  "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10)
        if created:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, DB_NAME)

    def stop(self, timeout: float = 60) -> None:
        """Fast shutdown (disconnects clients); nothing if it is not running."""
        if not (self.data / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)),
                  "stop", timeout=timeout + 10)


def with_driver(uri: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://``: SQLAlchemy 2.1 (what MLflow 3.17
    brings) defaults to psycopg 3, while the ``server`` extra installs psycopg2."""
    if uri.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + uri.split("://", 1)[1]
    return uri


def mlflow_command(backend_uri: str, artifacts: str | Path, host: str = "127.0.0.1",
                   port: int = 5000, workers: int = 1, extra: list[str] | None = None,
                   auth: bool = False) -> list[str]:
    """The ``mlflow server`` command line: artifacts served by the server itself."""
    mlflow = Path(sys.executable).with_name("mlflow")
    exe = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
    return [*exe, "server", "--backend-store-uri", with_driver(backend_uri),
            "--serve-artifacts", "--artifacts-destination", Path(artifacts).resolve().as_uri(),
            "--host", host, "--port", str(port), "--workers", str(workers),
            *(["--app-name", "basic-auth"] if auth else []), *(extra or [])]


LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADMIN = "admin"


def needs_auth(host: str, auth: str = "auto") -> bool:
    """``auth=auto``: sign-in required exactly when the server is reachable beyond this host."""
    if auth in ("on", "off"):
        return auth == "on"
    return host not in LOOPBACK and not host.startswith("127.")


def _secret(path: Path, nbytes: int = 18) -> tuple[str, bool]:
    """The secret stored in ``path`` (mode 0600), generated on first use; (value, generated)."""
    import secrets

    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)
    return value, True


def auth_env(root: str | Path) -> tuple[dict[str, str], str | None]:
    """What ``mlflow server --app-name basic-auth`` needs, kept under ``<root>/auth``.

    Returns:
        (environment for the server, the admin password when it was generated
        just now, else None: it is printed once).
    """
    folder = Path(root).resolve() / "auth"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    password, new = _secret(folder / "admin_password")
    secret_key, _ = _secret(folder / "flask_secret_key", 32)
    ini = folder / "basic_auth.ini"
    if not ini.exists():
        ini.write_text("[mlflow]\n"
                       "# Signed-in users may read and log runs in every experiment; anonymous: 401.\n"
                       "default_permission = EDIT\n"
                       f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
                       f"admin_username = {ADMIN}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key}
    return env, password if new else None


def add_user(url: str, root: str | Path, username: str, password: str | None = None) -> str:
    """Creates a user on the server at ``url`` with the admin password kept in ``root``; returns its password."""
    import secrets

    from mlflow.server.auth.client import AuthServiceClient

    password = password or secrets.token_urlsafe(12)
    admin = (Path(root).resolve() / "auth" / "admin_password").read_text().strip()
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=admin)
    try:
        AuthServiceClient(url).create_user(username, password)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return password


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
    """Polls ``<url>/health`` until the server answers OK."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"mlflow server exited with status {proc.returncode} before answering")
        try:
            with opener.open(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(f"mlflow server at {url} did not answer /health within {timeout:.0f} s")


def start_mlflow(backend_uri: str, artifacts: str | Path, host: str = "127.0.0.1",
                 port: int = 5000, log: str | Path | None = None, timeout: float = 90,
                 extra: list[str] | None = None, auth: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts ``mlflow server`` in its own process group and waits until it is healthy.

    Args:
        auth: ``auth_env(...)[0]``: run MLflow's basic-auth app with it; None: no sign-in.
    """
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        if backend_uri.startswith("postgresql"):
            raise ServerError("the MLflow server needs psycopg2 for PostgreSQL: "
                              "pip install -e '.[server]'") from None
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(mlflow_command(backend_uri, artifacts, host, port, extra=extra, auth=bool(auth)),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **SERVER_ENV, **(auth or {})})
    try:
        wait_healthy(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", proc, timeout)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transferlab.server", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start PostgreSQL (if needed) and mlflow server; Ctrl-C stops both")
    down = sub.add_parser("down", help="stop a PostgreSQL cluster left running in DIR")
    adduser = sub.add_parser("add-user", help="create a user on a server started with sign-in (prints its password)")
    adduser.add_argument("--dir", required=True, help="the server's DIR (holds auth/admin_password)")
    adduser.add_argument("--url", default="http://127.0.0.1:5000")
    adduser.add_argument("--password", help="default: generated")
    adduser.add_argument("username")
    for p in (up, down):
        p.add_argument("--dir", required=True, help="holds pgdata/, artifacts/ and the logs")
        p.add_argument("--pg-port", type=int, default=5433)
        p.add_argument("--pg-user", default="nobody", help="OS user PostgreSQL runs as when started by root")
    up.add_argument("--host", default="127.0.0.1", help="0.0.0.0 (or this host's address) for workers on other hosts")
    up.add_argument("--port", type=int, default=5000)
    up.add_argument("--backend-store-uri", help="an existing PostgreSQL (postgresql://user:pw@host:port/db)")
    up.add_argument("--allowed-hosts", help="Host headers the server accepts (mlflow's default: localhost + private IPs)")
    up.add_argument("--auth", choices=("auto", "on", "off"), default="auto",
                    help="sign-in (MLflow basic-auth); auto: on when --host is not loopback")
    a = ap.parse_args(argv)
    if a.cmd == "add-user":
        pw = add_user(a.url, a.dir, a.username, a.password)
        print(f"user {a.username} created; password: {pw}\n"
              f"sweep as it with: MLFLOW_TRACKING_USERNAME={a.username} MLFLOW_TRACKING_PASSWORD=<password>")
        return 0
    # `kill`/`timeout` send SIGTERM: stop the server and PostgreSQL as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    root = Path(a.dir).resolve()
    pg = None if getattr(a, "backend_store_uri", None) else Postgres(root, a.pg_port, a.pg_user)
    if a.cmd == "down":
        pg.stop()
        return 0
    try:
        if pg:
            pg.start()
            print(f"PostgreSQL: {pg.uri} (data {pg.data}, log {pg.log})", flush=True)
        uri = a.backend_store_uri or pg.uri
        extra = ["--allowed-hosts", a.allowed_hosts] if a.allowed_hosts else []
        auth, new_password = auth_env(root) if needs_auth(a.host, a.auth) else (None, None)
        proc = start_mlflow(uri, root / "artifacts", a.host, a.port, root / "mlflow-server.log", extra=extra,
                            auth=auth)
        if auth:
            print(f"Sign-in required (MLflow basic-auth): user {ADMIN}, password "
                  + (f"{new_password} (shown once; kept in {root / 'auth' / 'admin_password'}, mode 0600)"
                     if new_password else f"in {root / 'auth' / 'admin_password'}")
                  + f"\nAdd users: python -m transferlab.server add-user --dir {root} "
                    f"--url http://<host>:{a.port} NAME\n"
                  "Sweeps sign in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.", flush=True)
        elif a.host not in LOOPBACK:
            print("WARNING: --auth off on a non-loopback address: anyone who reaches it can read "
                  "and change every run.", flush=True)
        print(f"MLflow server: http://{a.host}:{a.port} (pid {proc.pid}, log {root / 'mlflow-server.log'})\n"
              f"Sweep with:    python run.py -m tracking=server"
              + ("" if a.host == "127.0.0.1" and a.port == 5000 else f" tracking.uri=http://<host>:{a.port}")
              + "\nCtrl-C stops the server" + (" and PostgreSQL." if pg else "."), flush=True)
        try:
            proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_process(proc)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if pg:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
