"""End to end: a k-fold sweep of a one-folder dataset through run.py -m, MLflow and the report."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from test_sweep_e2e import runs_of, sweep


@pytest.mark.slow  # ~30 s of CPU (TF import, 2 jobs, the report); 67 s wall on the shared machine
def test_kfold_sweep_of_a_flat_folder(tmp_path):
    root = tmp_path / "flat"  # one folder of classes: no train/ validation/ test/
    for k, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            px = np.random.default_rng([k, i]).normal(90 + 80 * k, 30, (32, 32, 3))
            Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(root / name / f"{i}.jpg")
    # dataset.folds=2 alone: the command line gains dataset.fold=0,1 (one run per fold)
    p, c = sweep(tmp_path, "dataset=folder", f"dataset.path={root}", "dataset.folds=2",
                 "runtime.latency_repeats=0")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    parents, children = runs_of(c)
    assert len(parents) == 1 and len(children) == 2
    assert sorted(r.data.params["dataset.fold"] for r in children) == ["0", "1"]
    assert {r.data.tags["fold"] for r in children} == {"0/2", "1/2"}
    assert len({r.data.tags["data_fingerprint"] for r in children}) == 2  # each fold its data
    splits = []
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["split_layout"] == "flat"
        text = open(c.download_artifacts(r.info.run_id, "split.csv", str(tmp_path)),
                    encoding="utf-8").read()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert {row["split"] for row in rows} == {"train", "validation", "test"}
        assert len(rows) == 24 and all(row["path"].startswith(("cats/", "dogs/")) for row in rows)
        assert {row["fold"] for row in rows if row["split"] == "validation"} == {r.data.params["dataset.fold"]}
        splits.append({row["path"]: row["split"] for row in rows})
        preds = c.download_artifacts(r.info.run_id, "test_predictions.csv", str(tmp_path / r.info.run_id))
        tested = sorted(row["path"] for row in csv.DictReader(open(preds, encoding="utf-8")))
        assert tested == sorted(p for p, s in splits[-1].items() if s == "test")  # <class>/<file>
        val = c.download_artifacts(r.info.run_id, "val_predictions.csv", str(tmp_path / r.info.run_id))
        oof = sorted(row["path"] for row in csv.DictReader(open(val, encoding="utf-8")))
        assert oof == sorted(p for p, s in splits[-1].items() if s == "validation")
    a, b = splits
    assert {p for p, s in a.items() if s == "test"} == {p for p, s in b.items() if s == "test"}
    assert {p for p, s in a.items() if s == "validation"} == {p for p, s in b.items() if s == "train"}
    # the report: one configuration, mean over its 2 folds
    summary = json.loads((tmp_path / "multirun" / "report" / "summary.json").read_text())
    assert summary["chosen"]["n_seeds"] == 2 and summary["chosen"]["n_folds"] == 2
    assert sorted(summary["chosen"]["run_ids"]) == sorted(r.info.run_id for r in children)
    assert "2 folds" in (tmp_path / "multirun" / "report" / "report.md").read_text()
    # the sweep's last lines: the estimate with its interval over the test images (issue 19)
    said = [line for line in p.stdout.splitlines() if line.startswith("[transferlab] ")]
    last = said[[i for i, line in enumerate(said) if line.startswith("[transferlab] report: ")][-1] + 1:]
    assert last[0].startswith("[transferlab] chosen on validation: the only configuration"), last
    assert "is the estimate, 95% interval [" in last[0] and "2 folds x seeds" in last[0], last
