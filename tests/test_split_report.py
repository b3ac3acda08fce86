"""The report over a k-fold sweep: runs that differ only in the fold are one configuration.

Pure Python over RunRecords (no MLflow, no TensorFlow).
"""

import numpy as np
import pytest

from transferlab.report.collect import Predictions, RunRecord
from transferlab.report.selection import choose
from transferlab.report.significance import compare
from transferlab.report.table import build_table


def _rec(i, freeze, fold, val, n_right, seed=1, n=40, folds="2"):
    true = np.arange(n) % 2
    ok = np.arange(n) < n_right
    preds = Predictions([f"{'ab'[t]}/img{j:03d}.png" for j, t in enumerate(true)], true,
                        np.where(ok, true, 1 - true), ok, 2)
    strategy = {"all": "all", "last4": "last_n"}[freeze]
    params = {"backbone.name": "mobilenetv3small", "freeze.strategy": strategy,
              "freeze.n": "4" if freeze == "last4" else "None", "lr": "0.0001", "seed": str(seed),
              "dataset.name": "folder", "dataset.folds": folds, "dataset.fold": str(fold),
              "dataset.split_seed": "0", "image_size": "32"}
    return RunRecord(f"r{i:03d}", "0", f"run{i}", "FINISHED", None, i, params,
                     {"freeze": freeze, "backbone": "mobilenetv3small"},
                     {"test_acc": float(ok.mean()), "test_loss": 0.5},
                     {"val_acc": [(0, val)]}, ["a", "b"], preds)


@pytest.fixture
def kfold_runs():
    # freeze=all and last4, 2 folds each; last4 right on 36 and 34 of 40, all on 24 and 26
    return [_rec(1, "all", 0, 0.60, 24), _rec(2, "all", 1, 0.64, 26),
            _rec(3, "last4", 0, 0.90, 36), _rec(4, "last4", 1, 0.86, 34)]


def test_folds_are_replicates_of_one_configuration(kfold_runs):
    t = build_table(kfold_runs)
    assert t.axes == ["freeze"] and "dataset.fold" in t.swept
    assert "dataset.fold" not in t.config_keys and "dataset.fold" not in t.facet_keys
    assert [len(c.runs) for c in t.configs] == [2, 2] and [c.n_folds for c in t.configs] == [2, 2]
    (m,) = t.matrices
    cell = m.cells[(m.row_values[0], "last4")]
    assert (cell.n, cell.folds) == (2, 2)
    assert cell.mean == pytest.approx((36 + 34) / 80)
    assert cell.std == pytest.approx(np.std([36 / 40, 34 / 40], ddof=1))
    assert cell.score == pytest.approx(0.88) and cell.best  # mean validation over the folds
    sel = choose(t)
    assert sel.label == "freeze=last4" and (sel.n_seeds, sel.n_folds) == (2, 2)
    assert "2 folds" in sel.interval_kind


def test_a_rerun_fold_supersedes_the_older_one(kfold_runs):
    t = build_table(kfold_runs + [_rec(5, "last4", 1, 0.70, 20)])
    last4 = next(c for c in t.configs if c.get("freeze") == "last4")
    assert [r.run_id for r in last4.runs] == ["r003", "r005"]
    assert [r.run_id for r in last4.superseded] == ["r004"]


def test_comparisons_pair_fold_with_fold_on_the_same_test_images(kfold_runs):
    (comp,) = compare(build_table(kfold_runs))[0]
    assert (comp.baseline_value, comp.candidate_value) == ("all", "last4")
    assert [p.seed for p in comp.pairs] == ["1/fold 0", "1/fold 1"]
    assert [p.base_run.params["dataset.fold"] for p in comp.pairs] == ["0", "1"]
    assert [p.cand_run.params["dataset.fold"] for p in comp.pairs] == ["0", "1"]
    assert comp.n_images == 40 and (comp.b, comp.c) == (0, 12 + 8)


def test_runs_without_folds_keep_the_seed_as_replicate_key(kfold_runs):
    plain = [_rec(i, fz, "None", v, r, seed=s, folds="None")
             for i, (fz, s, v, r) in enumerate([("all", 1, .6, 24), ("all", 2, .62, 25),
                                                ("last4", 1, .9, 36), ("last4", 2, .8, 30)])]
    t = build_table(plain)
    assert "dataset.fold" not in t.swept and [c.n_folds for c in t.configs] == [0, 0]
    assert sorted(t.configs[0].seeds) == ["1", "2"]


def _with_val(rec, fold, right):
    """Gives a fold run its fold's validation predictions: pool images 20*fold .. 20*fold+19,
    the first ``right`` of them right."""
    true = np.arange(20) % 2
    ok = np.arange(20) < right
    rec.val_predictions = Predictions([f"pool/{20 * fold + j:03d}.png" for j in range(20)], true,
                                      np.where(ok, true, 1 - true), ok, 2)
    return rec


def test_kfold_comparisons_pair_out_of_fold_predictions(kfold_runs):
    for rec, right in zip(kfold_runs, (10, 12, 18, 19)):  # all: 22 of 40, last4: 37 of 40
        _with_val(rec, int(rec.params["dataset.fold"]), right)
    (comp,) = compare(build_table(kfold_runs))[0]
    (pair,) = comp.pairs  # one seed: one pair over the whole pool, not one per fold
    assert pair.seed == "1 (out-of-fold)" and pair.n_images == comp.n_images == 40
    assert (comp.b, comp.c) == (0, 37 - 22)
    assert pair.base_run.metrics["test_acc"] == pytest.approx(22 / 40)
    assert sorted(r.run_id for r in pair.cand_run.members) == ["r003", "r004"]
    assert "out-of-fold" in comp.note and "2 fold models" in comp.note
    assert comp.verdict == "better than freeze=all"


def test_a_missing_fold_falls_back_to_pairing_folds_on_test(kfold_runs):
    for rec in kfold_runs[:3]:  # r004 logged no val_predictions.csv
        _with_val(rec, int(rec.params["dataset.fold"]), 15)
    (comp,) = compare(build_table(kfold_runs))[0]
    assert [p.seed for p in comp.pairs] == ["1/fold 0", "1/fold 1"]


def test_the_folds_share_one_test_split_and_one_set_of_reference_rows(kfold_runs):
    from transferlab.report.selection import reference_rows, test_sets

    for r in kfold_runs:  # each fold has its own data fingerprint (its train/validation differ)
        r.tags["data_fingerprint"] = f"fp-fold{r.params['dataset.fold']}"
        r.metrics["ref_majority_test_acc"] = 0.5
    t = build_table(kfold_runs)
    (ts,) = test_sets(t)
    assert ts.n == 40 and ts.n_runs == 4 and ts.fingerprints == {"fp-fold0", "fp-fold1"}
    assert [row["name"] for row in reference_rows(t, [ts])] == ["majority class, always 'a'"]


def test_split_seeds_are_replicates_not_a_choice():
    """Sweeping dataset.split_seed on one folder gives runs whose validation (and test)
    images differ: the report averages them like seeds, never chooses a split seed, and
    pairs only runs of the same split."""
    runs = []
    for i, (fz, split, v, r) in enumerate([("all", 0, .60, 24), ("all", 1, .70, 26),
                                          ("last4", 0, .90, 36), ("last4", 1, .80, 34)]):
        rec = _rec(i, fz, "None", v, r, folds="None")
        rec.params["dataset.split_seed"] = str(split)
        rec.tags["split_layout"] = "flat"
        runs.append(rec)
    t = build_table(runs)
    assert "dataset.split_seed" in t.swept and t.axes == ["freeze"]
    assert [len(c.runs) for c in t.configs] == [2, 2]
    sel = choose(t)
    assert sel.label == "freeze=last4" and sel.score == pytest.approx(0.85) and sel.n_seeds == 2
    (comp,) = compare(t)[0]
    assert [p.seed for p in comp.pairs] == ["1/split 0", "1/split 1"]
    assert [p.base_run.params["dataset.split_seed"] for p in comp.pairs] == ["0", "1"]
    assert [p.cand_run.params["dataset.split_seed"] for p in comp.pairs] == ["0", "1"]
    # A folder with its own train/validation/test: the split seed changes nothing, not a key.
    for rec in runs:
        rec.tags["split_layout"] = "split"
    assert sorted(build_table(runs[:2]).configs[0].seeds) == ["1"]


def test_a_report_covers_one_data_set_and_names_the_others(kfold_runs):
    """Runs of two folders share no validation or test images (and their <class>/<file>
    paths collide): the report keeps one data set, the newest run's unless --dataset says."""
    from transferlab.report.build import one_dataset
    from transferlab.report.collect import ReportError

    old, new = kfold_runs[:2], kfold_runs[2:]
    for rec in old:
        rec.params["dataset.path"], rec.tags["dataset_id"] = "/data/pets", "aaaa11112222"
    for rec in new:
        rec.params["dataset.path"], rec.tags["dataset_id"] = "/data/shapes", "bbbb33334444"
    kept, note = one_dataset(old + new)
    assert kept == new
    assert note.startswith("The selection holds runs on 2 data sets (pets (aaaa11): 2 run(s); "
                           "shapes (bbbb33): 2 run(s)). This report covers shapes (bbbb33), the one "
                           "with the newest run")
    assert "--dataset NAME_OR_ID" in note
    assert one_dataset(old + new, "pets")[0] == old and one_dataset(old + new, "aaaa")[0] == old
    with pytest.raises(ReportError, match=r"--dataset 'cats' matches 0 .*pets \(aaaa11\)"):
        one_dataset(old + new, "cats")
    assert one_dataset(new) == (new, None)
    # A configuration is chosen among that data set's runs only.
    assert choose(build_table(kept)).chosen.runs == new


def test_run_names_tell_split_seeds_apart(compose):
    from conftest import TINY
    from transferlab.runner.tracking import run_name

    base = run_name(compose(TINY))
    assert base == "mobilenetv3small-all-lr0.0001-s42"  # the default split seed 0: unchanged
    assert run_name(compose([*TINY, "dataset.split_seed=3"])) == base + "-split3"
    assert run_name(compose([*TINY, "dataset.folds=2", "dataset.fold=1", "dataset.split_seed=3"])) == (
        base + "-f1-split3")
