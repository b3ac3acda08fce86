"""Jobs in a worker process, so a long sweep's memory stays bounded.

Measured here: a process that runs job after job grows by ~60 MB per
MobileNetV3Small job (~150 MB for bigger models) even with
``keras.backend.clear_session()``, so a 50-job sweep in one process would
keep growing. With ``trainer.isolate=auto`` (the default) every job of a
multirun runs in a spawned worker process that is replaced after
``trainer.jobs_per_process`` jobs: memory is bounded, and TensorFlow is
imported once per worker rather than once per job. The launching process
never imports TensorFlow at all.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from omegaconf import DictConfig, OmegaConf

from transferlab import tracking

_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def _child(container: dict, overrides: list[str] | None, env: dict[str, str]) -> dict:
    os.environ.update(env)
    from transferlab.job import run

    return run(OmegaConf.create(container), overrides)


def shutdown() -> None:
    """Stops the worker (end of sweep); the next isolated job starts a new one."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None


def dispatch(cfg: DictConfig, overrides: list[str] | None, multirun: bool) -> dict:
    """Runs one job here or in the worker process, as ``trainer.isolate`` says.

    Args:
        cfg: the job config.
        overrides: the job's Hydra overrides (kept as an MLflow tag).
        multirun: whether Hydra runs a sweep (``-m``).

    Returns:
        ``transferlab.job.run``'s result.
    """
    mode = cfg.trainer.isolate
    if mode == "off" or (mode == "auto" and not multirun):
        from transferlab.job import run

        return run(cfg, overrides)
    global _pool, _pool_size
    if _pool is None or _pool_size != cfg.trainer.jobs_per_process:
        shutdown()
        _pool_size = cfg.trainer.jobs_per_process
        _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                    max_tasks_per_child=_pool_size)
    env = {k: os.environ[k] for k in (tracking.ENV_PARENT, tracking.ENV_SWEEP) if k in os.environ}
    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        return _pool.submit(_child, container, overrides, env).result()
    except BrokenProcessPool as e:
        # The worker died (killed, out of memory): its run cannot close itself.
        shutdown()
        _close_orphans(cfg, f"worker process died: {e}")
        raise RuntimeError(f"the job's worker process died ({e}); see the log above") from e


def _close_orphans(cfg: DictConfig, error: str) -> None:
    c = tracking.client(tracking.tracking_uri(cfg))
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return
    for r in tracking.find_runs(c, exp.experiment_id, tracking.config_hash(cfg), "RUNNING"):
        c.set_tag(r.info.run_id, "error", error)
        c.set_terminated(r.info.run_id, "FAILED")


atexit.register(shutdown)
