"""A Ray cluster on this machine, bound to 127.0.0.1, for trying `hydra/launcher=ray`.

    python scripts/local_ray.py          # starts it, prints the RAY_ADDRESS line, Ctrl-C stops it

The tests and scripts/bench_launchers.py use ``LocalRayCluster``. Everything
it starts runs in one new process session and is stopped by that session's
id (never ``ray stop``, which would stop every Ray process on the machine).
Ray normally advertises the machine's network address even for
``--node-ip-address=127.0.0.1``; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps
the whole cluster, and every driver that connects with ``ENV``, on loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# For `ray start` and for every process that connects to the cluster.
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback addresses only
       "RAY_USAGE_STATS_ENABLED": "0"}           # no usage report sent anywhere


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayUnavailable(RuntimeError):
    """Ray is not installed or its head node did not start; the message says why."""


class LocalRayCluster:
    """``with LocalRayCluster(num_cpus=2) as c: ...`` -> ``c.address`` ("127.0.0.1:PORT")."""

    def __init__(self, num_cpus: int = 2, memory_gb: float = 12, start_timeout: float = 90) -> None:
        self.num_cpus = num_cpus
        self.memory = int(memory_gb * 2**30)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.tmp: str | None = None
        self.address: str | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a driver (a sweep) needs in its environment to use this cluster."""
        return {**ENV, "RAY_ADDRESS": self.address or ""}

    def start(self) -> "LocalRayCluster":
        ray = Path(sys.executable).with_name("ray")
        if not ray.exists():
            raise RayUnavailable(f"{ray} not found: pip install -e '.[ray]'")
        # Short path: Ray's unix socket paths under it must fit in 107 characters.
        self.tmp = tempfile.mkdtemp(prefix="tlray", dir="/tmp")
        port = _free_port()
        cmd = [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={port}", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
               f"--memory={self.memory}", "--object-store-memory=200000000",
               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.tmp}",
               f"--ray-client-server-port={_free_port()}",
               f"--dashboard-agent-listen-port={_free_port()}",
               f"--metrics-export-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}"]
        log = Path(self.tmp, "ray-start.log")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp,
                                         start_new_session=True, env={**os.environ, **ENV})
        try:
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                text = log.read_text(errors="replace")
                if "Ray runtime started" in text:
                    self.address = f"127.0.0.1:{port}"
                    return self
                if self.proc.poll() is not None:
                    raise RayUnavailable(f"`ray start --head` exited with {self.proc.returncode}:\n"
                                         f"{text[-2000:]}")
                time.sleep(0.5)
            raise RayUnavailable(f"`ray start --head` did not come up in {self.start_timeout:.0f} s")
        except BaseException:  # Ctrl-C included: never leave a half-started cluster behind
            self.stop()
            raise

    def stop(self, timeout: float = 5) -> None:
        """Stops every process of the cluster's session (SIGTERM, then SIGKILL), removes its folder."""
        if self.proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and _session_alive(self.proc.pid):
                    self.proc.poll()
                    time.sleep(0.3)
                if not _session_alive(self.proc.pid):
                    break
            self.proc.poll()
            self.proc = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _session_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still runs (zombies aside)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


if __name__ == "__main__":
    with LocalRayCluster(num_cpus=os.cpu_count() or 2) as c:
        print("Ray cluster on 127.0.0.1. In another shell:\n"
              + " ".join(f"{k}={v}" for k, v in c.env.items())
              + " python run.py -m hydra/launcher=ray ...\nCtrl-C stops it.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            c.proc.wait()
        except KeyboardInterrupt:
            pass
