"""MLflow plumbing: the store, the sweep's parent run, one child run per job.

Everything goes through ``mlflow.MlflowClient`` with an explicit tracking
URI, so runs land in one store whatever working directory a launcher gives
a job, and nothing depends on MLflow's global "active run" state.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab.config.schema import NON_RESULT_KEYS
from transferlab.models.freeze import freeze_label
from transferlab.models.freezeparams import bn_policy
from transferlab.runner import lease, store

# The launching process puts the sweep's identity here; jobs (same process,
# or child processes of joblib / submitit) read it back.
ENV_PARENT = "TRANSFERLAB_PARENT_RUN_ID"
ENV_SWEEP = "TRANSFERLAB_SWEEP_ID"
EXPERIMENT_KIND = "mlflow.experimentKind"

def tracking_uri(cfg: DictConfig) -> str:
    """``tracking.uri`` or the default SQLite store under ``<root>/mlruns``."""
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    return f"sqlite:///{default_store_dir(cfg) / 'mlflow.db'}"


def default_store_dir(cfg: DictConfig) -> Path:
    return Path(cfg.root_dir).resolve() / "mlruns"


def artifact_root(cfg: DictConfig) -> str | None:
    """Where a new experiment keeps artifacts (next to the default store)."""
    if cfg.tracking.artifact_root:
        return str(cfg.tracking.artifact_root)
    if cfg.tracking.uri:
        return None  # a server decides
    return (default_store_dir(cfg) / "artifacts").as_uri()


def backup_dir(cfg: DictConfig, chash: str) -> Path:
    """Where a job keeps its per-epoch backups until it finishes (``runtime.backup_dir``:
    a folder shared by every host, so another host can resume the job)."""
    shared = cfg.runtime.get("backup_dir")
    return (Path(shared).expanduser().resolve() if shared else default_store_dir(cfg) / "backups") / chash


class TrackingUnreachable(RuntimeError):
    """The tracking server of ``tracking.uri`` does not answer."""


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fails in seconds, naming the URI, when an http(s) tracking server does not answer.

    MLflow's client retries a refused connection 7 times with exponential
    backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, _BACKOFF_FACTOR=2, then
    MLFLOW_HTTP_REQUEST_TIMEOUT=120 s per request): minutes before any error.
    One request to the server's ``/health``, without retries, answers in
    seconds; any HTTP answer (even 401/404) counts as reachable.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    verify = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() not in ("true", "1")
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout, verify=verify)
        # A server with sign-in (server.py: basic-auth) answers 401 without valid credentials.
        user, pw = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        r = requests.get(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                         timeout=timeout, verify=verify, auth=(user, pw) if user and pw else None)
    except requests.RequestException as e:
        raise TrackingUnreachable(
            f"MLflow tracking server {uri} is not reachable ({type(e).__name__}: "
            f"{str(e)[:300]}). Start it (e.g. mlflow server --host 127.0.0.1 --port 5000), "
            "fix tracking.uri, or drop tracking.uri to use the local SQLite store "
            "under mlruns/.") from None
    if r.status_code in (401, 403):
        raise TrackingUnreachable(
            f"MLflow tracking server {uri} requires sign-in and refused "
            + (f"user {user!r} ({r.status_code})" if user else f"a request without credentials ({r.status_code})")
            + ". Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (an account made with "
            "`python -m transferlab.server add-user`).")


# How long a job of a running sweep waits for its tracking server (restarting, say)
# before it gives up; the sweep's first contact still fails in seconds.
ENV_WAIT = "TRANSFERLAB_TRACKING_WAIT"


def wait_seconds() -> float:
    try:
        return float(os.environ.get(ENV_WAIT, 300))
    except ValueError:
        return 300.0


def wait_reachable(uri: str, seconds: float | None = None) -> None:
    """``check_reachable``, retried for up to ``seconds`` (default ``$TRANSFERLAB_TRACKING_WAIT``, 300)."""
    import time

    deadline = time.monotonic() + (wait_seconds() if seconds is None else seconds)
    said = False
    while True:
        try:
            return check_reachable(uri)
        except TrackingUnreachable as e:
            if time.monotonic() > deadline or "requires sign-in" in str(e):
                raise
            if not said:
                print(f"[transferlab] tracking server {uri} not answering; waiting up to "
                      f"{deadline - time.monotonic():.0f} s for it ({ENV_WAIT})", flush=True)
                said = True
            time.sleep(2)


# What MLflow's error says once its retries gave up on a server that is away (not one
# that answers with an error: a 500 is a bug, not a restart).
_UNREACHABLE = ("NewConnectionError", "Connection refused", "Connection aborted", "RemoteDisconnected",
                "ConnectionResetError", "Read timed out", "too many 502 error", "too many 503 error",
                "too many 504 error")


def is_unreachable(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a tracking server that stopped answering."""
    import requests

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.ConnectionError, requests.Timeout, TrackingUnreachable)):
            return True
        text = str(e)
        if any(m in text for m in _UNREACHABLE):
            return True
        e = e.__cause__ or e.__context__
    return False


def ui_command(uri: str) -> str:
    """The exact ``mlflow ui`` line for a store: ``mlflow`` if it is on PATH, else the one
    beside this Python (a virtual environment that is not activated)."""
    import shutil
    import sys

    exe = "mlflow"
    if not shutil.which("mlflow") and (Path(sys.executable).parent / "mlflow").exists():
        exe = str(Path(sys.executable).parent / "mlflow")
    return f"{exe} ui --backend-store-uri {uri}"


def runs_view_url(uri: str, experiment_id: str, metric: str = "val_acc") -> str:
    """The MLflow UI page of an experiment's job runs with their training charts.

    MLflow 3's UI opens experiments in its GenAI view unless told otherwise
    (``workflowType``); sorted by a metric, it lists the jobs themselves instead
    of folding them under their sweep's parent run, and the chart view draws the
    listed runs' per-epoch curves. ``uri``: an http(s) tracking server, else the
    address ``mlflow ui`` serves on (http://127.0.0.1:5000).
    """
    from urllib.parse import quote

    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&compareRunsMode=CHART&orderByKey={quote(f'metrics.`{metric}`')}&orderByAsc=false")


def client(uri: str):
    """An ``MlflowClient`` on ``uri``: once a SQLite store's schema is complete (store.py);
    for a tracking server, one that waits for the server through a restart (``Patient``)."""
    import mlflow

    store.ensure_schema(uri)
    c = mlflow.MlflowClient(tracking_uri=uri)
    if uri.startswith(("http://", "https://")):
        # MLflow's own retries back off exponentially (7 retries, factor 2: a server back
        # after 70 s is seen after 124 s); a few quick ones, then Patient's steady polling.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        return Patient(c, uri)
    return c


class Patient:
    """An ``MlflowClient`` whose calls wait for a tracking server that stopped answering.

    A call that fails because the server is unreachable (connection refused,
    timeouts, 502/503 past MLflow's own retries) is retried every
    ``POLL_SECONDS`` for up to ``$TRANSFERLAB_TRACKING_WAIT`` seconds (300),
    saying once that it waits and once that the server is back; past that it
    raises ``TrackingUnreachable``. The job's training waits meanwhile, so no
    epoch is backed up before it is logged.
    """

    POLL_SECONDS = 3.0

    def __init__(self, c, uri: str):
        self._c, self._uri = c, uri

    def __getattr__(self, name):
        attr = getattr(self._c, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            import time

            deadline = None
            while True:
                try:
                    out = attr(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 (re-raised unless the server is away)
                    if not is_unreachable(e):
                        raise
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + wait_seconds()
                        print(f"[transferlab] tracking server {self._uri} stopped answering "
                              f"({type(e).__name__}); waiting up to {wait_seconds():.0f} s ({ENV_WAIT})",
                              flush=True)
                    if now > deadline:
                        raise TrackingUnreachable(
                            f"MLflow tracking server {self._uri} did not answer for "
                            f"{wait_seconds():.0f} s ({ENV_WAIT})") from e
                    time.sleep(self.POLL_SECONDS)
                    continue
                if deadline is not None:
                    print(f"[transferlab] tracking server {self._uri} is back", flush=True)
                return out

        return call


def claim_lock(uri: str):
    """Serialises claiming a job's run among processes sharing a SQLite store.

    Yields True where the lock holds (a ``sqlite:///`` store: ``flock`` beside
    the file); False for other stores, where job.py settles races by re-reading.
    """
    import contextlib

    db = store.sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext(False)

    @contextlib.contextmanager
    def held():
        with store.file_lock(db.resolve().with_name(db.name + ".claim.lock")):
            yield True

    return held()


def ensure_experiment(cfg: DictConfig) -> str:
    """Creates the store's schema and the experiment once; returns its id.

    Called in the launching process before any job starts: several processes
    creating a fresh SQLite schema at once can corrupt it.
    """
    uri = tracking_uri(cfg)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    c = client(uri)
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        if EXPERIMENT_KIND not in exp.tags:  # created before transferlab set it
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, "custom_model_development")
        return exp.experiment_id
    try:
        # the MLflow UI opens a "custom model development" experiment on its runs and their
        # training charts (not on traces, which transferlab does not log)
        return c.create_experiment(cfg.tracking.experiment, artifact_location=artifact_root(cfg),
                                   tags={EXPERIMENT_KIND: "custom_model_development"})
    except Exception:  # created meanwhile by another process (mlflow issue 4123)
        exp = c.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config flattened to dotted keys, as MLflow params.

    ``freeze.bn=auto`` is recorded as the policy it resolves to (``frozen`` for a
    pretrained base, ``trainable`` for a random one): the record states what applied,
    and a pretrained job keeps the hash it had when ``frozen`` was the default.
    """
    out: dict[str, str] = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = str(v)[:6000]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    if out.get("freeze.bn") == "auto":
        out["freeze.bn"] = bn_policy("auto", cfg.backbone.weights is None)
    return out


def result_params(cfg: DictConfig) -> dict[str, str]:
    """The flattened config less ``NON_RESULT_KEYS``: the settings that determine a result."""
    return {k: v for k, v in flat_params(cfg).items()
            if not any(k == e or k.startswith(e + ".") for e in NON_RESULT_KEYS)}


def config_hash(cfg: DictConfig, extra: dict | None = None) -> str:
    """A stable hash of everything that determines a job's result.

    Args:
        cfg: the job config.
        extra: values resolved at run time that the config only names: the
            data's fingerprint (``data``), the run behind
            ``backbone.weights=run:latest:<experiment>`` (``weights_run``), GPU
            switches where they apply (``applied``).
    """
    keep = result_params(cfg)
    keep.update(extra or {})
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def backbone_label(cfg: DictConfig) -> str:
    """The backbone with its constructor options where they are not Keras' defaults
    (``mobilenet-a0.25``; ``models.options.label``): tag ``backbone_label``, run names."""
    from transferlab.models import options

    return options.label(cfg.backbone.name, cfg.backbone)


def run_name(cfg: DictConfig) -> str:
    """``<backbone label>-<freeze label>-lr<lr>-s<seed>[-f<fold>][-split<split seed>]``, the job
    run's name (``mobilenet-a0.25-all-...`` for a width variant; the split seed where it is
    not the default 0: jobs on other random splits of one folder are told apart)."""
    fold = cfg.dataset.get("fold")
    split = cfg.dataset.get("split_seed")
    return (f"{backbone_label(cfg)}-{freeze_label(cfg.freeze.strategy, cfg.freeze.n, cfg.freeze.layer)}"
            f"-lr{cfg.lr:g}-s{cfg.seed}" + (f"-f{fold}" if fold is not None else "")
            + (f"-split{split}" if split not in (None, 0) else ""))


def find_runs(c, experiment_id: str, chash: str, status: str | None = None):
    """Job runs of this config hash, newest first."""
    f = f"tags.config_hash = '{chash}' AND tags.`transferlab.role` = 'job'"
    if status:
        f += f" AND attributes.status = '{status}'"
    return c.search_runs([experiment_id], filter_string=f, order_by=["attributes.start_time DESC"])


def start_sweep(cfg: DictConfig, sweep_id: str, sweep_dir: str | None) -> str:
    """Creates the sweep's parent run and exports its id to the jobs.

    First closes the runs of the store whose owner is dead (a sweep killed
    with ``kill -9``: its parent and its job would otherwise stay RUNNING);
    the new parent is owned by this process, its lease renewed until the
    sweep closes it (lease.py).
    """
    uri = tracking_uri(cfg)
    c = client(uri)
    exp_id = ensure_experiment(cfg)
    lease.reap(c)
    tags = {"sweep_id": sweep_id, "transferlab.role": "sweep", "mlflow.runName": f"sweep-{sweep_id}",
            **lease.owner_tags()}
    if sweep_dir:
        tags["sweep_dir"] = str(sweep_dir)
    run = c.create_run(exp_id, tags=tags)
    lease.HEARTBEAT.add(uri, run.info.run_id)
    os.environ[ENV_PARENT] = run.info.run_id
    os.environ[ENV_SWEEP] = sweep_id
    return run.info.run_id
