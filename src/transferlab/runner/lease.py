"""Who owns a RUNNING run, whether that owner still lives, and closing the runs nobody owns.

Every run transferlab starts (a sweep's parent, a job) records its owner in
tags when it is created or taken over:

- ``transferlab.owner``: ``host:pid`` of the process that runs it;
- ``transferlab.owner_id``: the host's boot id and PID namespace (two
  containers may share a host name, never a PID namespace) and the process's
  start time, so a pid reused by a later process is told apart;
- ``transferlab.lease_until``: a Unix time, pushed forward every
  ``lease_seconds() / 5`` by a daemon thread of the owning process
  (``HEARTBEAT``) for as long as the run is open.

An owner is dead when it is on this host (same boot, same PID namespace) and
its pid is gone or now belongs to a process started at another time, or,
seen from any other host, when its lease has expired. ``reap`` closes the
RUNNING runs of dead owners as KILLED with a ``transferlab.closed`` tag
saying why; a job run closed so stays resumable (job.py). A run without an
owner tag comes from before owners were recorded and counts as dead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import time
from datetime import datetime, timezone

OWNER = "transferlab.owner"
OWNER_ID = "transferlab.owner_id"
LEASE = "transferlab.lease_until"
CLOSED = "transferlab.closed"
ROLE = "transferlab.role"
ENV_LEASE = "TRANSFERLAB_LEASE_SECONDS"


def lease_seconds() -> float:
    """How long an owner's lease lasts without a heartbeat (``$TRANSFERLAB_LEASE_SECONDS``, 300)."""
    try:
        return max(2.0, float(os.environ.get(ENV_LEASE, 300)))
    except ValueError:
        return 300.0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def _machine() -> str:
    """This host's boot and PID namespace: where pids mean the same process."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = "?"
    return f"{_read('/proc/sys/kernel/random/boot_id')}/{ns}"


def _started(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


HOST = socket.gethostname()


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The tags that make this process (or local process ``pid``) a run's owner, with a fresh lease."""
    pid = os.getpid() if pid is None else pid
    return {OWNER: f"{HOST}:{pid}", OWNER_ID: f"{_machine()}@{_started(pid):.2f}",
            LEASE: f"{time.time() + lease_seconds():.0f}"}


def mine(tags: dict) -> bool:
    return tags.get(OWNER) == f"{HOST}:{os.getpid()}" and tags.get(OWNER_ID) == owner_tags()[OWNER_ID]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def owner_alive(tags: dict, now: float | None = None, run_id: str | None = None) -> tuple[bool, str]:
    """(whether the run's owner still runs it, why), from the run's tags.

    With ``run_id``, a run owned by this very process that it no longer
    holds (``HEARTBEAT``) counts as given up.
    """
    owner = tags.get(OWNER)
    if not owner:
        return False, "no owner recorded (a run from before transferlab recorded owners)"
    host, _, pid = owner.rpartition(":")
    machine, _, start = tags.get(OWNER_ID, "").rpartition("@")
    if machine == _machine():
        import psutil

        if owner == f"{HOST}:{os.getpid()}" and tags.get(OWNER_ID) == owner_tags()[OWNER_ID]:
            if run_id is not None and run_id not in HEARTBEAT.owned():
                return False, "this process gave it up (its tracking server stopped answering)"

        try:
            started = _started(int(pid))
        except (psutil.NoSuchProcess, ValueError):
            return False, f"its owner {owner} is gone (no process {pid})"
        except psutil.AccessDenied:
            return True, f"{owner} runs it"
        try:
            if abs(started - float(start)) > 1.0:
                return False, (f"its owner {owner} is gone (pid {pid} now belongs to a process "
                               f"started {_iso(started)})")
        except ValueError:
            pass
        return True, f"{owner} runs it"
    now = time.time() if now is None else now
    try:
        until = float(tags.get(LEASE, 0))
    except ValueError:
        until = 0.0
    if now > until:
        return False, f"its owner {owner} stopped renewing its lease (expired {_iso(until)})"
    return True, f"{owner} runs it (lease until {_iso(until)})"


def close(c, run, why: str, status: str = "KILLED") -> None:
    """Closes a run whose owner is dead, saying why and who closed it."""
    c.set_tag(run.info.run_id, CLOSED,
              f"{status} by {HOST}:{os.getpid()} at {_iso(time.time())}: {why}"[:5000])
    c.set_terminated(run.info.run_id, status)


def reap(c, experiment_ids: list[str] | None = None) -> list[str]:
    """Closes as KILLED every RUNNING transferlab run whose owner is dead; returns their ids.

    Args:
        c: an ``MlflowClient``.
        experiment_ids: where to look (default: every active experiment of the store).
    """
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in c.search_experiments()]
    closed = []
    for i in range(0, len(experiment_ids), 100):
        runs = c.search_runs(experiment_ids[i:i + 100], filter_string="attributes.status = 'RUNNING'",
                             max_results=5000)
        for r in runs:
            if ROLE not in r.data.tags:
                continue  # not ours
            alive, why = owner_alive(r.data.tags, run_id=r.info.run_id)
            if alive:
                continue
            r = c.get_run(r.info.run_id)  # owner changed meanwhile (taken over)?
            if r.info.status != "RUNNING" or owner_alive(r.data.tags, run_id=r.info.run_id)[0]:
                continue
            close(c, r, why)
            closed.append(r.info.run_id)
            print(f"[transferlab] closed {r.data.tags.get('mlflow.runName', r.info.run_id)} "
                  f"(MLflow run {r.info.run_id}) as KILLED: {why}")
    return closed


class Heartbeat:
    """Renews the lease of the runs this process owns, from a daemon thread.

    A run is added when this process creates or takes it over and removed
    when it closes it; at interpreter exit, runs still open here are closed
    as KILLED (an exception that escaped every handler, Ctrl-C in the
    launcher). Errors (a tracking server restarting) are retried at the next
    beat.
    """

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}  # run id -> tracking URI
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, uri: str, run_id: str) -> None:
        with self._lock:
            self._runs[run_id] = uri
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="transferlab-lease", daemon=True)
                self._thread.start()

    def remove(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def owned(self) -> dict[str, str]:
        with self._lock:
            return dict(self._runs)

    def beat(self) -> None:
        """Renews every lease now."""
        import mlflow

        until = f"{time.time() + lease_seconds():.0f}"
        for run_id, uri in self.owned().items():
            try:
                mlflow.MlflowClient(uri).set_tag(run_id, LEASE, until)
            except Exception:  # noqa: BLE001 (the next beat retries; the lease has slack)
                pass

    def _loop(self) -> None:
        while not self._wake.wait(lease_seconds() / 5):
            self.beat()

    def close_all(self, why: str) -> None:
        """Closes the runs still open here as KILLED (interpreter exit)."""
        import mlflow

        for run_id, uri in self.owned().items():
            with contextlib.suppress(Exception):
                if uri.startswith(("http://", "https://")):
                    import requests  # a server that is down: no minutes of MLflow retries at exit

                    requests.get(uri.rstrip("/") + "/health", timeout=2)
                c = mlflow.MlflowClient(uri)
                r = c.get_run(run_id)
                if r.info.status == "RUNNING" and mine(r.data.tags):
                    close(c, r, why)
            self.remove(run_id)


HEARTBEAT = Heartbeat()
atexit.register(lambda: HEARTBEAT.close_all("its process exited without closing it"))
