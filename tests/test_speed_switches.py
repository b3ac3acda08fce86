"""GPU-only switches skip cleanly on CPU; parallel jobs get their share of the cores."""

import keras
import mlflow
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from conftest import TINY
from test_sweep_e2e import runs_of, sweep
from transferlab.runner import isolate, job
from transferlab.config import ConfigError
from transferlab.runner.validate import validate
from transferlab.models.build import build_model, speed_switches
from transferlab.engine.train import prebuild

GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.skipif(GPU, reason="a GPU is present: the switches apply instead of skipping")
def test_precision_and_jit_switches_are_skipped_on_cpu_with_the_reason(compose, tmp_path):
    out = job.run(compose([*TINY, "runtime.precision=mixed_float16", "runtime.jit_compile=true"]))
    r = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(out["run_id"])
    assert r.info.status == "FINISHED"
    assert r.data.tags["precision"].startswith("float32 (runtime.precision=mixed_float16 skipped: no GPU")
    assert r.data.tags["jit_compile"].startswith("off (runtime.jit_compile=true skipped: no GPU")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_switch_values(compose):
    sw = speed_switches(compose([*TINY]))
    assert (sw.policy, sw.jit) == ("float32", "auto")  # defaults: Keras' own choice
    sw = speed_switches(compose([*TINY, "runtime.jit_compile=false"]))
    assert sw.jit is False and sw.tags["jit_compile"] == "off"
    sw = speed_switches(compose([*TINY, "runtime.precision=mixed_bfloat16"]))
    assert sw.policy == ("mixed_bfloat16" if GPU else "float32")
    with pytest.raises(ConfigError, match="runtime.precision"):
        validate(compose([*TINY, "runtime.precision=float16"]))
    with pytest.raises(ConfigError, match="runtime.feature_cache"):
        validate(compose([*TINY, "runtime.feature_cache=yes"]))
    with pytest.raises(ConfigError, match="runtime.threads"):
        validate(compose([*TINY, "runtime.threads=0"]))


def test_train_step_is_traced_once(compose):
    """Metric, loss and optimizer variables exist before fit: no second trace of the step."""
    model, _, _ = build_model(compose([*TINY, "freeze=last4"]), 2)
    x = tf.random.uniform((16, 32, 32, 3), 0, 255)
    ds = tf.data.Dataset.from_tensor_slices((x, tf.zeros((16, 1)))).batch(8)
    traces = []
    step = model.train_step
    model.train_step = lambda d: traces.append(1) or step(d)
    prebuild(model, ds)
    model.fit(ds, epochs=1, verbose=0)
    assert len(traces) == 1


@pytest.mark.parametrize("threads,parallel,cores,expected", [
    (None, 1, 2, None),                                   # one job at a time: TF's default
    (None, 2, 2, (1, 1, "2 cores shared by 2 parallel jobs")),
    (None, 2, 16, (8, 2, "16 cores shared by 2 parallel jobs")),
    (None, 4, 2, (1, 1, "2 cores shared by 4 parallel jobs")),
    (3, 2, 2, (3, 2, "runtime.threads=3")),
])
def test_thread_share(threads, parallel, cores, expected):
    cfg = OmegaConf.create({"runtime": {"threads": threads}})
    assert isolate.thread_share(cfg, parallel=parallel, cores=cores) == expected


@pytest.mark.slow
def test_joblib_jobs_get_their_share_of_the_cores(tmp_path):
    p, c = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    _, children = runs_of(c)
    assert len(children) == 2
    cores = isolate._cores()
    for r in children:
        assert r.data.tags["threads"].startswith(f"intra-op {max(1, cores // 2)}, "), r.data.tags["threads"]
        assert f"{cores} cores shared by 2 parallel jobs" in r.data.tags["threads"]
