"""Opening a SQLite MLflow store safely: one creator of its schema, every opener waits.

MLflow creates the tables of a fresh SQLite store in whichever process opens
it first, without a lock (``SqlAlchemyStore.__init__``: create_all, then every
Alembic migration). Two processes opening a fresh store at once both migrate
it: ``duplicate column name: step``, Alembic's "Online migration expected to
match one row", and once a database left unusable. So every transferlab
opener goes through ``ensure_schema`` first:

- under an exclusive ``flock`` on ``<db>.lock`` (beside the file), the schema
  is created in a temporary file (a copy of an empty store built once per
  MLflow version, see ``_template``), complete, then linked into place under
  the real name (``os.link``: atomic, and it fails rather than replace a file
  that appeared meanwhile). Other openers, a ``mlflow ui`` included, see
  either no file or a complete one;
- a store that someone outside transferlab is creating (``mlflow ui`` started
  on a missing file) is waited for until its schema reaches MLflow's head
  revision, instead of being migrated a second time.

Only ``sqlite:///`` URIs need this; a tracking server or another database is
left to MLflow.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

_READY: set[str] = set()  # stores this process has seen complete


class StoreError(RuntimeError):
    """A SQLite store whose schema cannot be completed; the message names the file."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if missing), released on exit."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _state(db: Path, head: str) -> tuple[str, str | None]:
    """(``missing`` | ``empty`` | ``partial`` | ``ready``, the Alembic revision) of ``db``."""
    if not db.exists():
        return "missing", None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            rev = None
            if "alembic_version" in tables:
                row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                rev = row[0] if row else None
        finally:
            con.close()
    except sqlite3.Error:  # locked by its creator, or not yet a database
        return "partial", None
    if not tables:
        return "empty", None
    return ("ready" if rev == head else "partial"), rev


def _initialize(path: Path) -> None:
    """MLflow's own schema creation (tables, then every migration) in a new file."""
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

    engine = create_sqlalchemy_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def _template(head: str) -> Path | None:
    """An empty store at ``head``, built once per MLflow version and reused for every new store.

    MLflow builds a fresh schema by running all its migrations: 3-6 s on
    2 CPU cores, for every new root (and every test). The result is the same
    file each time, so it is built once under ``$TRANSFERLAB_CACHE`` (default
    ``~/.cache/transferlab``) and copied. None where that folder is not writable.
    """
    import mlflow

    folder = Path(os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab")
    path = folder / f"mlflow-{mlflow.__version__}-schema-{head}.db"
    try:
        if _state(path, head)[0] == "ready":
            return path
        with file_lock(path.with_name(path.name + ".lock")):
            if _state(path, head)[0] != "ready":
                tmp = path.with_name(f".{path.name}.{os.getpid()}")
                tmp.unlink(missing_ok=True)
                _initialize(tmp)
                os.replace(tmp, path)
        return path
    except OSError:
        return None


def _create(db: Path, head: str) -> bool:
    """Builds the schema in a temporary file and links it in as ``db``; False if ``db`` appeared."""
    import shutil

    tmp = db.with_name(f".{db.name}.init-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    template = _template(head)
    if template is not None:
        shutil.copyfile(template, tmp)
    else:
        _initialize(tmp)
    try:
        os.link(tmp, db)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def ensure_schema(uri: str, timeout: float = 120.0, stale: float = 15.0) -> None:
    """Makes sure the SQLite store of ``uri`` exists with a complete schema.

    Args:
        uri: the tracking URI (anything but ``sqlite:///`` returns at once).
        timeout: how long to wait for a schema someone else is creating.
        stale: an empty database file that stays empty this long was left by
            an opener that died; it is then initialised here, under the lock.

    Raises:
        StoreError: the schema did not complete within ``timeout``.
    """
    db = sqlite_path(uri)
    if db is None or str(db) in _READY:
        return
    db = db.resolve()
    head = _head()
    if _state(db, head)[0] == "ready":
        _READY.add(str(db))
        return
    with file_lock(db.with_name(db.name + ".lock")):
        for leftover in db.parent.glob(f".{db.name}.init-*"):  # a creator killed mid-way
            leftover.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            state, rev = _state(db, head)
            if state == "ready":
                break
            if state == "missing":
                if _create(db, head):
                    break
                continue  # an opener outside transferlab created the file meanwhile: wait for it
            if (state, rev) != last:
                last, since = (state, rev), time.monotonic()
            elif time.monotonic() - since > stale:
                if state == "empty":  # abandoned: nobody is creating it
                    _initialize(db)
                    continue
                if rev is not None:
                    break  # a complete store at an older revision: MLflow says how to upgrade it
            if time.monotonic() > deadline:
                raise StoreError(
                    f"The MLflow store {db} has a half-created schema (revision {rev}, expected "
                    f"{head}) and nobody completed it within {timeout:.0f} s. If no other process "
                    "uses it, move it away and run again.")
            time.sleep(0.2)
    _READY.add(str(db))
