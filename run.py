"""transferlab entry point: python run.py [-m] key=value ...

Thin wiring only: Hydra composes the config (conf/ + experiments/), the job
itself is transferlab.job.run(cfg), testable without Hydra.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from transferlab.config import register

register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    from transferlab.isolate import dispatch

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        return dispatch(cfg, list(hc.overrides.task), multirun)
    except Exception as e:
        if not multirun:
            raise
        # In a sweep a failed job must not stop the others: its MLflow run is
        # already FAILED with the error; the sweep callback reports it and
        # makes the exit status non-zero.
        print(f"[transferlab] job failed: {type(e).__name__}: {e}")
        return None


if __name__ == "__main__":
    main()
