"""Shared fixtures: Hydra compose API over conf/, tiny offline settings."""

import os
import time
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
# Subprocesses (run.py, workers) import this checkout's src/ too, not whatever
# checkout an editable install of the environment points at.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from transferlab.config import register  # noqa: E402

register()

# Settings that keep a job to seconds on 2 CPU cores, with no download.
TINY = [
    "backbone=mobilenetv3small",
    "backbone.weights=null",
    "image_size=32",
    "trainer.epochs=1",
    "trainer.batch_size=8",
    "runtime.verbose=0",
    "dataset.images_per_class=10",
    "dataset.source_size=32",
]


@pytest.fixture
def compose(tmp_path):
    """compose(overrides) -> DictConfig, with root_dir in tmp (store and data there)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(overrides=(), root=tmp_path):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=[f"root_dir={root}", *overrides])

    return _compose


# --- The suite's budget (issue 22) -------------------------------------------------------
# A test whose call takes over SLOW_AFTER_S must be marked `slow` and say why in
# its docstring; the suite's wall time is printed against SUITE_BUDGET_S (README: Tests).
# `--strict-budget` (make test-fast) turns a violation into a failed run; CI's `make test`
# only reports it, since a loaded machine can push a test over the line.
SLOW_AFTER_S = float(os.environ.get("TRANSFERLAB_SLOW_AFTER_S", 30))
SUITE_BUDGET_S = 15 * 60
_SUITE_START = time.time()
_spent: dict[str, float] = {}
_info: dict[str, tuple[bool, bool]] = {}


# Under pytest-xdist (`make test` runs `-n 3 --dist loadgroup`): a module is one group, run
# by one worker, so its module fixtures (a trained store, a server, test_errors' parallel
# subprocess matrix) are built once and its tests share them. The modules below have no
# costly shared fixture and hold many independent builds or sweeps: their tests spread.
SPREAD = {"test_weights_routes", "test_backbones", "test_freeze", "test_api", "test_trust",
          "test_sweep_e2e", "test_bench", "test_speed_switches", "test_featcache",
          "test_speed_cuts", "test_train", "test_resume", "test_pretrained", "test_options",
          "test_real_weights"}


def pytest_itemcollected(item):
    # At collection, so the mark is there before xdist's collection_modifyitems reads it.
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else item.nodeid
    if module not in SPREAD and not item.get_closest_marker("xdist_group"):
        item.add_marker(pytest.mark.xdist_group(module))


def pytest_addoption(parser):
    parser.addoption("--strict-budget", action="store_true",
                     help=f"fail the run when an unmarked test takes over {SLOW_AFTER_S:g} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    fn = getattr(item, "function", None)
    rep.user_properties.append(("budget", (item.get_closest_marker("slow") is not None,
                                           bool(fn is not None and (fn.__doc__ or "").strip()))))


_total = [0.0]


def pytest_runtest_logreport(report):
    # Runs in the controller for xdist's workers' reports too: one tally for the session.
    # The 30 s rule counts a test's call only: a shared fixture's setup (a trained store,
    # test_errors' subprocess matrix) serves the whole module, not the test that runs first.
    _total[0] += report.duration
    if report.when == "call":
        _spent[report.nodeid] = report.duration
    for key, value in report.user_properties:
        if key == "budget":
            _info[report.nodeid] = tuple(value)


def _violations() -> list[tuple[str, float, str]]:
    out = []
    for nodeid, seconds in sorted(_spent.items(), key=lambda kv: -kv[1]):
        slow, doc = _info.get(nodeid, (False, False))
        if seconds > SLOW_AFTER_S and not (slow and doc):
            out.append((nodeid, seconds, "not marked slow" if not slow else "slow without a docstring"))
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("--strict-budget", False) and _violations() and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _spent:
        return
    tr = terminalreporter
    wall = time.time() - _SUITE_START
    tr.section("suite budget")
    tr.write_line(f"suite wall time {wall:.0f} s (budget {SUITE_BUDGET_S} s: "
                  f"{'within' if wall <= SUITE_BUDGET_S else 'OVER'}); "
                  f"tests' own time {_total[0]:.0f} s, setup and teardown included")
    for nodeid, seconds, why in _violations():
        tr.write_line(f"over {SLOW_AFTER_S:g} s, {why}: {nodeid} ({seconds:.1f} s)")
