"""Many classes and names in any script: figures in bounded time and memory, readable labels."""

import json
import subprocess
import sys
import warnings

import numpy as np

from conftest import ROOT

# One job's figures (runner/plots.py) and a report's (report/plots.py) for 120 classes,
# in a fresh process so its peak memory is the figures' own. Before: 61 s and 6.3 GB
# for one 13,140 x 13,095 px confusion matrix.
SCRIPT = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
from transferlab.report import confusion, plots as report_plots
from transferlab.report.collect import Predictions, RunRecord
from transferlab.report.table import build_table
from transferlab.runner import plots

def peak_mb():
    # VmHWM: this process's own peak since exec. ru_maxrss would carry the peak of the
    # pytest process it was forked from (Linux keeps it across execve).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


out, k = Path(sys.argv[1]), 120
rng = np.random.default_rng(0)
names = [f"species_{i:03d}" for i in range(k)]
true = np.repeat(np.arange(k), 3)
pred = np.where(rng.random(true.size) < 0.6, true, rng.integers(0, k, true.size))
t0 = time.perf_counter()
plots.confusion(true, pred, names, out / "confusion_matrix.png")
hist = {"accuracy": [0.1, 0.3], "val_accuracy": [0.1, 0.2], "loss": [4.0, 3.0],
        "val_loss": [4.1, 3.5]}
plots.curves(hist, out / "curves.png", title="120 classes")
job_s = time.perf_counter() - t0
recs = []
for i, fz in enumerate(("all", "none")):
    p = pred if fz == "all" else true
    recs.append(RunRecord(f"r{i}", "0", fz, "FINISHED", None, i,
                          {"freeze.strategy": fz, "seed": "1", "backbone.name": "mobilenetv3small"},
                          {"freeze": fz, "backbone": "mobilenetv3small"},
                          {"test_acc": float((p == true).mean()), "train_seconds": 1.0,
                           "params_trainable": 1.0},
                          {"val_acc": [(0, 0.1), (1, 0.2)], "acc": [(0, 0.1), (1, 0.3)]}, names,
                          Predictions([f"{j:04d}.png" for j in range(true.size)], true, p,
                                      p == true, k)))
t0 = time.perf_counter()
table = build_table(recs)
figs = report_plots.all_figures(table)
tables = confusion.config_tables(table)
report_s = time.perf_counter() - t0
print(json.dumps({"job_s": job_s, "report_s": report_s,
                  "rss_mb": peak_mb(),
                  "figures": [f.id for f in figs], "tables": [len(t["rows"]) for t in tables]}))
"""


def test_120_class_figures_are_fast_small_and_bounded(tmp_path):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"),
                                                      "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["job_s"] + got["report_s"] < 10, got
    assert got["rss_mb"] < 1024, got
    from PIL import Image
    w, h = Image.open(tmp_path / "confusion_matrix.png").size
    assert w <= 1200 and h <= 1200, (w, h)                 # not 13,140 x 13,095 px
    assert not any(f.startswith("confusion") for f in got["figures"])  # tables instead
    assert got["tables"] == [10, 0]                        # the model that errs; the perfect one


def test_names_in_any_script_are_drawn_or_listed_by_index(tmp_path):
    from matplotlib import rc_context

    from transferlab.report import fonts
    from transferlab.runner import plots

    names = ["chat noir", "猫 ねこ", "Hund, groß | #1", "line\nbreak"]
    labels, by_index = fonts.labels(names)
    assert labels[0] == "chat noir" and labels[2] == "Hund, groß | #1"
    assert labels[3] == "line break"                       # one line
    cjk_font = len(fonts.families()) > 1
    assert (labels[1] == "猫 ねこ") == cjk_font and (by_index == [1]) == (not cjk_font)
    true = np.array([0, 1, 2, 3, 1])
    pred = np.array([0, 1, 2, 3, 0])
    with warnings.catch_warnings(record=True) as caught, rc_context(fonts.rc()):
        warnings.simplefilter("always")
        shown = plots.confusion(true, pred, names, tmp_path / "cm.png")
    assert shown == by_index
    assert not [w for w in caught if "missing from" in str(w.message)], \
        [str(w.message) for w in caught]                   # no glyph drawn as a box
    json.dumps(labels)
