"""Jobs in a worker process, so a long sweep's memory stays bounded.

Measured here: a process that runs job after job grows by ~60 MB per
MobileNetV3Small job (~150 MB for bigger models) even with
``keras.backend.clear_session()``, so a 50-job sweep in one process would
keep growing. With ``runtime.isolate=auto`` (the default) every job of a
basic-launcher multirun runs in a spawned worker process that is replaced after
``runtime.jobs_per_process`` jobs: memory is bounded, and TensorFlow is
imported once per worker rather than once per job. The launching process
never imports TensorFlow at all. A worker starts importing as soon as it is
created (``prestart`` at the sweep's start; at once after a replacement), so
the ~5 s of imports overlap with the launcher's scan and MLflow setup, or with
the old worker's exit, instead of delaying the next job.

Parallel jobs share the cores: under Hydra's joblib launcher each job's
TensorFlow gets ``cores // n_jobs`` intra-op threads (``runtime.threads``
overrides), set before TensorFlow starts in the job's process, so two jobs
on two cores do not each start two-thread kernels that fight for the same
cores. The MLflow tag ``threads`` says what a job got and why.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from omegaconf import DictConfig, OmegaConf

from transferlab.runner import tracking

_pool: ProcessPoolExecutor | None = None
_pool_size = 0  # runtime.jobs_per_process of the current worker
_pool_jobs = 0  # jobs handed to it so far


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def parallel_jobs() -> int:
    """How many jobs the Hydra launcher runs at once on this machine (1 if unknown).

    joblib's ``n_jobs``: a positive count, or -1 = all cores, -2 = all but one, ...
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return 1
        launcher = HydraConfig.get().launcher
    except Exception:  # no Hydra run (tests, library use)
        return 1
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return max(1, _cores() + 1 + n) if n < 0 else n


def thread_share(cfg: DictConfig, parallel: int | None = None, cores: int | None = None):
    """(intra-op threads, inter-op threads, why) for one job, or None for TF's default.

    Args:
        cfg: the job config (``runtime.threads`` wins when set).
        parallel: jobs running at once (default: ``parallel_jobs()``).
        cores: usable cores (default: this process's CPU affinity).
    """
    cores = cores or _cores()
    if cfg.runtime.get("threads"):
        n = int(cfg.runtime.threads)
        return n, 1 if n <= 2 else 2, f"runtime.threads={n}"
    parallel = parallel_jobs() if parallel is None else parallel
    if parallel <= 1:
        return None
    intra = max(1, cores // parallel)
    return intra, 1 if intra <= 2 else 2, f"{cores} cores shared by {parallel} parallel jobs"


def apply_threads(share) -> None:
    """Gives this process's TensorFlow its thread share (before TF starts; env for children)."""
    if share is None:
        return
    intra, inter, why = share
    os.environ.update(TF_NUM_INTRAOP_THREADS=str(intra), TF_NUM_INTEROP_THREADS=str(inter),
                      OMP_NUM_THREADS=str(intra), TRANSFERLAB_THREADS_WHY=why)
    if "tensorflow" not in sys.modules:
        return  # TF reads the variables when it starts
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already ran ops in this process: its pools are fixed
        if tf.config.threading.get_intra_op_parallelism_threads() != intra:
            os.environ["TRANSFERLAB_THREADS_WHY"] = f"{why}; not applied: TensorFlow had already started"


def _child(container: dict, overrides: list[str] | None, env: dict[str, str]) -> dict:
    os.environ.update(env)
    from transferlab.runner.job import run

    out = run(OmegaConf.create(container), overrides)
    out.pop("model", None)  # a Keras model does not cross processes; the run has it
    return out


def _warm() -> None:
    """A new worker's first task: the imports every job needs (TensorFlow with Keras,
    MLflow, the runner). Imports only: TensorFlow starts its thread pools at the
    first op, after ``_child`` has set the job's thread share."""
    import keras  # noqa: F401
    import mlflow  # noqa: F401

    import transferlab.runner.artifacts  # noqa: F401
    import transferlab.runner.job  # noqa: F401


@contextlib.contextmanager
def _main_not_rerun():
    """Lets a spawned worker start when ``__main__`` is not a file it can run.

    ``spawn`` re-runs the parent's main script in the child from
    ``__main__.__file__`` (multiprocessing/spawn.py, ``get_preparation_data``);
    under ``python - <<EOF`` that is ``<stdin>``, which the child cannot open,
    so every job died with ``BrokenProcessPool``. The worker needs nothing from
    ``__main__`` (the job functions live in transferlab), so while it is
    started a ``__file__`` that names no file is hidden, as ``python -c`` has none.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    hide = (path is not None and getattr(main, "__spec__", None) is None
            and not os.path.isfile(path))
    if hide:
        del main.__file__
    try:
        yield
    finally:
        if hide:
            main.__file__ = path


def _new_pool(jobs_per_process: int) -> None:
    global _pool, _pool_size, _pool_jobs
    if multiprocessing.get_start_method(allow_none=True) not in (None, *multiprocessing.get_all_start_methods()):
        # Inside a joblib (loky) worker the default start method is "loky", which a
        # plain spawned child cannot resolve ("cannot find context for 'loky'").
        multiprocessing.set_start_method("spawn", force=True)
    _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    _pool_size, _pool_jobs = jobs_per_process, 0
    with _main_not_rerun():  # the worker process starts inside this submit
        _pool.submit(_warm)  # spawns it now; our own count (not max_tasks_per_child) replaces it


def prestart(cfg: DictConfig) -> None:
    """Starts the sweep's worker process now, so its imports run while the caller
    works on (the sweep's scan and MLflow setup); a no-op unless the sweep's jobs
    will run in it (``dispatch`` with ``shared_process=True``, ``runtime.isolate``
    not ``off``) or a worker is already up."""
    if _pool is None and cfg.runtime.isolate != "off":
        _new_pool(cfg.runtime.jobs_per_process)


def shutdown(wait: bool = True) -> None:
    """Stops the worker (end of sweep); the next isolated job starts a new one.

    Args:
        wait: wait for the worker to exit (TensorFlow's teardown, ~2 s); False lets
            the caller go on meanwhile (the interpreter still waits at its exit).
    """
    global _pool
    if _pool is not None:
        if not _pool_jobs:  # only importing (the sweep stopped before its first job)
            for proc in (getattr(_pool, "_processes", None) or {}).values():
                proc.terminate()
        _pool.shutdown(wait=wait, cancel_futures=True)
        _pool = None


def dispatch(cfg: DictConfig, overrides: list[str] | None, shared_process: bool) -> dict:
    """Runs one job here or in the worker process, as ``runtime.isolate`` says.

    Args:
        cfg: the job config.
        overrides: the job's Hydra overrides (kept as an MLflow tag).
        shared_process: whether many jobs share the calling process (a sweep
            under Hydra's basic launcher); other launchers give each job a
            process of their own, so ``auto`` runs those jobs in place.

    Returns:
        ``transferlab.job.run``'s result.
    """
    mode = cfg.runtime.isolate
    share = thread_share(cfg)
    if cfg.runtime.get("memory_budget_mb") is None:  # parallel jobs share the RAM, as the cores
        from transferlab.data import store

        cfg = copy.deepcopy(cfg)
        cfg.runtime.memory_budget_mb = store.default_budget_mb(parallel_jobs())
    if mode == "off" or (mode == "auto" and not shared_process):
        apply_threads(share)
        from transferlab.runner.job import run

        return run(cfg, overrides)
    global _pool_jobs
    if _pool is None or _pool_size != cfg.runtime.jobs_per_process or _pool_jobs >= _pool_size:
        shutdown(wait=False)  # the old worker exits while the new one imports
        _new_pool(cfg.runtime.jobs_per_process)
    _pool_jobs += 1
    env = {k: os.environ[k] for k in (tracking.ENV_PARENT, tracking.ENV_SWEEP) if k in os.environ}
    if share is not None:  # read by TensorFlow when it starts in the worker
        intra, inter, why = share
        env.update(TF_NUM_INTRAOP_THREADS=str(intra), TF_NUM_INTEROP_THREADS=str(inter),
                   OMP_NUM_THREADS=str(intra), TRANSFERLAB_THREADS_WHY=why)
    container = OmegaConf.to_container(cfg, resolve=True)
    future = _pool.submit(_child, container, overrides, env)
    workers = set(getattr(_pool, "_processes", None) or {})  # pids: the job tags its run with its pid
    try:
        return future.result()
    except BrokenProcessPool as e:
        # The worker died (killed, out of memory): its run cannot close itself.
        workers |= set(getattr(_pool, "_processes", None) or {})
        shutdown()
        _close_orphans(cfg, workers, f"worker process died: {e}")
        raise RuntimeError(f"the job's worker process died ({e}); see the log above") from e


def _close_orphans(cfg: DictConfig, pids: set[int], error: str) -> None:
    """Marks FAILED the RUNNING job runs that a dead worker (one of ``pids``) owned."""
    c = tracking.client(tracking.tracking_uri(cfg))
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None or not pids:
        return
    for r in c.search_runs([exp.experiment_id], filter_string=(
            "attributes.status = 'RUNNING' AND tags.`transferlab.role` = 'job'")):
        if r.data.tags.get("pid") in {str(p) for p in pids}:
            c.set_tag(r.info.run_id, "error", error)
            c.set_terminated(r.info.run_id, "FAILED")


atexit.register(shutdown)
