"""transferlab entry point: python run.py [-m] key=value ...

Thin wiring only: Hydra composes the config (conf/ + experiments/), the job
itself is transferlab.job.run(cfg), testable without Hydra.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from transferlab.backbones import WeightsUnavailable
from transferlab.config import ConfigError, register
from transferlab.validate import check_override_keys
from transferlab.data import DataError
from transferlab.freeze import FreezeError
from transferlab.pretrained import PretrainedError
from transferlab.tracking import TrackingUnreachable

register()

# Errors whose message says what to change: printed as one line, no traceback.
USER_ERRORS = (ConfigError, DataError, FreezeError, PretrainedError, WeightsUnavailable,
               TrackingUnreachable)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    from transferlab.isolate import dispatch

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
        # In a sweep a failed job must not stop the others: its MLflow run is
        # already FAILED with the error; the sweep callback reports it and
        # makes the exit status non-zero.
        print(f"[transferlab] job failed: {type(e).__name__}: {e}")
        return None
    if "OptunaSweeper" in str(hc.sweeper.get("_target_", "")):
        return float(result["val_acc"])  # the objective Optuna maximises
    return result


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:])
    except ConfigError as e:
        print(f"[transferlab] error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
