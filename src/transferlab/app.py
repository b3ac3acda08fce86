"""The Hydra application behind ``python run.py`` and ``transferlab run``: nothing but wiring.

Hydra composes the config from the package's ``conf/`` (``pkg://transferlab.conf``:
the repository's top-level ``conf/`` and ``experiments/``, shipped inside the
wheel too); each job is ``runner.isolate.dispatch``, testable without Hydra.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from transferlab.config import ConfigError, check_override_keys, kfold, register
from transferlab.data import DataError
from transferlab.models.freeze import FreezeError
from transferlab.models.pretrained import PretrainedError
from transferlab.models.registry import WeightsUnavailable
from transferlab.runner.tracking import TrackingUnreachable

CONFIG_PATH = "pkg://transferlab.conf"

# Errors whose message says what to change: printed as one line, no traceback.
USER_ERRORS = (ConfigError, DataError, FreezeError, PretrainedError, WeightsUnavailable,
               TrackingUnreachable)

register()


def job(cfg: DictConfig) -> dict | float | None:
    """One Hydra job: runs it (in a worker process where a sweep shares this one)."""
    from transferlab.runner.isolate import dispatch

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    # Only the basic launcher runs every job in this one process; the others
    # (joblib, ray, submitit) already give jobs processes of their own.
    in_process = multirun and hc.launcher._target_.endswith(".BasicLauncher")
    try:
        result = dispatch(cfg, list(hc.overrides.task), in_process)
    except Exception as e:
        if not multirun:
            if isinstance(e, USER_ERRORS):
                print(f"[transferlab] error: {e}", file=sys.stderr)
                sys.exit(2)
            raise
        if isinstance(e, TrackingUnreachable):
            # Every other job would wait for the server too: stop the sweep, one message.
            print(f"[transferlab] sweep stopped: {e}", file=sys.stderr)
            sys.exit(3)
        # In a sweep a failed job must not stop the others: its MLflow run is
        # already FAILED with the error; the sweep callback reports it and
        # makes the exit status non-zero.
        print(f"[transferlab] job failed: {type(e).__name__}: {e}")
        from transferlab.runner.sweep import JOB_ERRORS

        JOB_ERRORS.append((" ".join(hc.overrides.task), f"{type(e).__name__}: {e}"))
        return None
    if "OptunaSweeper" in str(hc.sweeper.get("_target_", "")):
        return float(result["val_acc"])  # the objective Optuna maximises
    result.pop("model", None)  # Hydra keeps job returns; a sweep must not keep every model
    return result


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig):
    return job(cfg)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """``python run.py [-m] key=value ...``: every Hydra flag works as Hydra documents it.

    Args:
        argv: the command line after the program name (default ``sys.argv[1:]``).
        prog: the program name Hydra shows (default ``sys.argv[0]``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_override_keys(argv)
        argv, _ = kfold.expand(argv)  # dataset.folds=K alone: every fold, as a sweep
    except ConfigError as e:
        print(f"[transferlab] error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [prog or sys.argv[0], *argv]
    _hydra_main()
