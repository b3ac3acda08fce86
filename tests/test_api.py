"""The Python API (transferlab.train / transferlab.sweep) and the installed package."""

import os
import subprocess
import sys
import textwrap

import mlflow
import pytest

from conftest import ROOT, TINY


def _cli_run(root, *overrides):
    p = subprocess.run([sys.executable, "run.py", *TINY, f"root_dir={root}",
                        f"hydra.run.dir={root}/outputs", *overrides],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    c = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("transferlab")
    (run,) = c.search_runs([exp.experiment_id])
    return c, run


@pytest.mark.slow
def test_train_and_sweep_write_what_the_cli_writes(tmp_path, monkeypatch):
    """Slow: three trainings (API, CLI, a sweep) and a report: ~50 s on 2 cores."""
    import transferlab

    overrides = [*TINY, "trainer.epochs=2", f"root_dir={tmp_path / 'api'}"]
    monkeypatch.chdir(tmp_path)  # Hydra's multirun/ folder goes here
    result = transferlab.train([*overrides, "freeze=all"])
    assert result.model is not None and not result.skipped
    assert result.model.input_shape == (None, 32, 32, 3)
    assert len(result.history["loss"]) == len(result.history["val_acc"]) == 2
    assert 0 <= result.metrics["test_acc"] <= 1
    # The command line, same config, another store: the same numbers.
    c, cli = _cli_run(tmp_path / "cli", "trainer.epochs=2", "freeze=all")
    cli_loss = [m.value for m in sorted(c.get_metric_history(cli.info.run_id, "loss"), key=lambda m: m.step)]
    assert result.history["loss"] == cli_loss
    assert result.metrics["test_acc"] == cli.data.metrics["test_acc"]
    assert cli.data.tags["config_hash"] == mlflow.MlflowClient(
        f"sqlite:///{tmp_path / 'api'}/mlruns/mlflow.db").get_run(result.run_id).data.tags["config_hash"]
    # A sweep in the API's store: freeze=all already FINISHED there (skipped), last4 runs.
    table = transferlab.sweep([*overrides, "freeze=all,last4"])
    assert list(table["freeze"]) == ["last4", "all"]
    assert list(table["skipped"]) == [False, True]
    assert set(table["status"]) == {"FINISHED"}
    row = table[table["freeze"] == "all"].iloc[0]
    assert row["run_id"] == result.run_id and row["test_acc"] == result.metrics["test_acc"]
    assert table.attrs["report"].endswith("report.html") and os.path.isfile(table.attrs["report"])
    # train() of a finished config returns the earlier run, without a model
    again = transferlab.train([*overrides, "freeze=all"])
    assert again.skipped and again.run_id == result.run_id and again.model is None
    assert again.history["loss"] == result.history["loss"]


def test_api_errors_name_the_fix():
    import transferlab
    from transferlab.config import ConfigError

    with pytest.raises(ConfigError, match="Did you mean trainer.epochs"):
        transferlab.train(["trainer.epoch=3"])


@pytest.mark.slow
def test_wheel_installed_outside_the_repository_sweeps(tmp_path):
    """pip wheel . -> a fresh venv -> an empty folder: `transferlab run -m` and the API work.

    The venv reuses this environment's dependencies (a .pth line: no download) but
    not its editable transferlab, so the package, its conf/ and experiments/ come
    from the wheel alone.
    """
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(wheels)], check=True, cwd=tmp_path, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    (site / "deps.pth").write_text(deps + "\n")
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRANSFERLAB_ROOT")}
    # this pip (reached through deps.pth) installs into the new venv: its console script too;
    # --ignore-installed: the editable transferlab of the deps folder is not this venv's
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
                    *map(str, wheels.glob("*.whl"))], check=True, timeout=300, env=env)
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([py, "-c", "import transferlab, sys; print(transferlab.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.returncode == 0 and str(site) in where.stdout, (where.stdout, where.stderr[-2000:])
    tiny = [a for a in TINY if not a.startswith("backbone=")]
    # experiment=quickstart comes from the wheel's conf/experiment/; its sweep narrowed to 2 jobs
    p = subprocess.run([venv / "bin" / "transferlab", "run", "-m", "experiment=quickstart", *tiny,
                        "hydra.sweeper.params.backbone=mobilenetv3small"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "sweep done: 2 finished, 0 failed" in p.stdout
    assert (work / "mlruns" / "mlflow.db").is_file()
    api = textwrap.dedent(f"""
        import transferlab
        r = transferlab.train({[*TINY, "freeze=none"]!r})
        print("API", r.run_id, round(r.metrics["test_acc"], 4), type(r.model).__name__)
    """)
    p = subprocess.run([py, "-c", api], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and "API " in p.stdout and "Functional" in p.stdout, (p.stdout + p.stderr)[-3000:]


def _pid() -> int:
    return os.getpid()


def test_a_worker_starts_when_main_is_not_a_file(monkeypatch):
    """``python - <<EOF``: ``__main__.__file__`` is ``<stdin>``, which a spawned child tried
    to re-run (FileNotFoundError: every job BrokenProcessPool); the worker now starts."""
    import types

    from transferlab.runner import isolate

    fake = types.ModuleType("__main__")
    fake.__file__ = "<stdin>"
    monkeypatch.setitem(sys.modules, "__main__", fake)
    with isolate._main_not_rerun():
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            child = pool.submit(_pid)
            assert fake.__dict__.get("__file__") is None  # hidden while the child starts
            assert child.result(timeout=120) != os.getpid()
    assert fake.__file__ == "<stdin>"  # and given back


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stdin", "-c"])
def test_sweep_where_main_is_not_a_file_raises_each_failed_jobs_error(tmp_path, how):
    """Slow: a sweep through the API from ``python -`` and ``python -c`` (a worker process,
    TensorFlow imported, two bases built): ~20 s each on 2 cores. Its two jobs fail before
    training (a freeze plan that trains nothing): ``sweep`` raises SweepFailed with each job's
    own error from the worker (it returned an empty DataFrame; the worker could not start)."""
    code = textwrap.dedent(f"""
        import transferlab
        try:
            transferlab.sweep({[*TINY, "backbone=mobilenetv2", "freeze=last_n", "freeze.n=1,2",
                                "freeze.bn=frozen", f"root_dir={tmp_path}",
                                f"hydra.sweep.dir={tmp_path}/multirun"]!r})
        except transferlab.SweepFailed as e:
            print("FAILED", len(e.errors), len(e.table))
            print(e)
        else:
            print("NO ERROR")
    """)
    args = [sys.executable, "-"] if how == "stdin" else [sys.executable, "-c", code]
    p = subprocess.run(args, input=code if how == "stdin" else None, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert "FAILED 2 0" in p.stdout, out[-3000:]
    assert "2 job(s) of the sweep failed (no job finished)" in p.stdout
    jobs = [line for line in p.stdout.splitlines() if line.startswith("  [")]
    assert len(jobs) == 2 and "freeze.n=1 " in jobs[0] and "freeze.n=2 " in jobs[1], jobs
    assert "]: FreezeError: MobileNetV2 last layer is out_relu" in jobs[0]
    assert "]: FreezeError: MobileNetV2 last 2 layers are Conv_1_bn and out_relu" in jobs[1]
    assert "BrokenProcessPool" not in out and "worker process died" not in out
