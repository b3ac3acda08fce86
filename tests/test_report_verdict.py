"""An honest verdict: selection on validation, Holm across comparisons, every swept key,
seeds, imbalanced test splits and flagged runs (report side, no TensorFlow)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

import report_fixtures as fx
from transferlab.cli import main
from transferlab.report import ReportError, stats, write_report
from transferlab.report.build import build_context
from transferlab.report.collect import Predictions, RunRecord
from transferlab.report.flags import NEVER_BEAT, flags
from transferlab.report.significance import NOT_DISTINGUISHABLE_SEEDS, compare
from transferlab.report.table import build_table


def _csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _params(freeze="all", lr="0.0001", seed=1, **extra):
    strategy, n = {"all": ("all", "None"), "none": ("none", "None"),
                   "last4": ("last_n", "4")}[freeze]
    return {"backbone.name": "mobilenetv3small", "freeze.strategy": strategy, "freeze.n": n,
            "lr": lr, "seed": str(seed), "dataset.name": "folder", "dataset.num_classes": "2",
            "dataset.images_per_class": "40", "image_size": "32", **extra}


def _preds(correct_first: int, n: int = 40, k: int = 2):
    """Test predictions: the first ``correct_first`` images right, the rest wrong."""
    true = np.arange(n) % k
    pred = np.where(np.arange(n) < correct_first, true, (true + 1) % k)
    return true, pred


# -- selection on validation -------------------------------------------------------------

@pytest.fixture(scope="module")
def val_vs_test(tmp_path_factory):
    """Validation prefers last4, test prefers none."""
    root = tmp_path_factory.mktemp("valtest")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("valtest", artifact_location=(root / "a").as_uri())
    for freeze, val, n_right in (("all", 0.70, 28), ("last4", 0.90, 30), ("none", 0.80, 34)):
        true, pred = _preds(n_right)
        fx.log_run(c, exp, root, name=f"mnv3-{freeze}", params=_params(freeze),
                   tags={"freeze": freeze, "sweep_id": "vt"},
                   history={"val_acc": [0.5, val], "loss": [0.7, 0.5], "val_loss": [0.7, 1 - val],
                            "acc": [0.5, 0.8]},
                   metrics={"test_acc": n_right / 40, "test_loss": 0.5, "test_images": 40},
                   true=true, pred=pred)
    return uri


def test_validation_not_test_picks_the_winner(val_vs_test, tmp_path):
    paths = write_report(val_vs_test, tmp_path, sweep_id="vt")
    rows = _csv(paths["csv"])
    assert [r["freeze"] for r in rows] == ["last4", "none", "all"]   # by val_acc
    assert rows[0]["rank"] == "1" and rows[0]["selected_by"] == "val_acc"
    ctx, _, _ = build_context(MlflowClient(val_vs_test), sweep_id="vt")
    chosen = ctx["chosen"]
    assert chosen.label == "freeze=last4"
    assert chosen.estimates["test_acc"][0] == pytest.approx(30 / 40)   # its TEST score
    (m,) = ctx["matrices"]
    assert [cv for cv in m.col_values if m.cells[("mobilenetv3small", cv)].best] == ["last4"]
    html = Path(paths["html"]).read_text()
    assert "Chosen on validation" in html and "test split played no part in choosing" in html
    # synthetic-only keys are not "settings common to all runs" of a folder dataset
    assert "dataset.num_classes" not in dict(ctx["constant"])
    assert "dataset.images_per_class" not in html


def test_metric_must_be_a_validation_metric(val_vs_test, tmp_path, capsys):
    with pytest.raises(ReportError, match="validation metric"):
        write_report(val_vs_test, tmp_path, sweep_id="vt", metric="test_acc")
    assert main(["report", "--tracking-uri", val_vs_test, "--sweep", "vt", "--metric",
                 "test_acc", "--out", str(tmp_path)]) == 1
    assert "val_balanced_acc" in capsys.readouterr().err
    # val_loss ranks ascending
    rows = _csv(write_report(val_vs_test, tmp_path / "l", sweep_id="vt", metric="val_loss")["csv"])
    assert [r["freeze"] for r in rows] == ["last4", "none", "all"]   # lowest val_loss first
    assert rows[0]["selected_by"] == "val_loss"


# -- Holm, every swept key, seeds ---------------------------------------------------------

def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08, 0.5 -> running max
    assert stats.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([]) == []


def _rec(i, lr, seed, val, correct, freeze="all", n=40):
    true = np.arange(n) % 2
    ok = np.asarray(correct, dtype=bool)
    pred = np.where(ok, true, 1 - true)
    preds = Predictions([f"img{j:03d}.png" for j in range(n)], true, pred, ok, 2)
    return RunRecord(f"r{i:03d}", "0", f"run{i}", "FINISHED", None, i,
                     _params(freeze, lr, seed), {"freeze": freeze, "backbone": "mobilenetv3small"},
                     {"test_acc": float(ok.mean()), "test_loss": 0.5},
                     {"val_acc": [(0, 0.5), (1, val)], "loss": [(0, 0.7), (1, 0.6)]},
                     ["cat", "dog"], preds)


def test_lr_only_sweep_gets_comparisons_and_holm():
    n = 40
    recs = [_rec(1, "0.001", 1, 0.60, np.arange(n) < 22),
            _rec(2, "0.0001", 1, 0.90, np.arange(n) < 36),
            _rec(3, "1e-05", 1, 0.70, np.arange(n) < 30)]
    t = build_table(recs)
    assert t.axes == ["lr"] and t.cols_key == "lr"        # not one-cell backbone x freeze tables
    (m,) = t.matrices
    assert len(m.row_values) == 1 and len(m.col_values) == 3
    assert [cv for cv in m.col_values if m.cells[(m.row_values[0], cv)].best] == ["0.0001"]
    comps, notes = compare(t)
    assert not any("freeze=all" in n.reason for n in notes)
    assert {(c.key, c.candidate_value, c.baseline_value, c.baseline_why) for c in comps} == {
        ("lr", "0.001", "0.0001", "best by val_acc"), ("lr", "1e-05", "0.0001", "best by val_acc")}
    for c in comps:  # the baseline is right where the candidate is: only c = 0
        assert (c.b, c.c) == ({"0.001": 14, "1e-05": 6}[c.candidate_value], 0)
    raw = [stats.mcnemar_exact(14, 0), stats.mcnemar_exact(6, 0)]
    by = {c.candidate_value: c for c in comps}
    assert by["0.001"].p_value == pytest.approx(raw[0])
    assert [by["0.001"].p_adjusted, by["1e-05"].p_adjusted] == pytest.approx(stats.holm(raw))
    assert by["0.001"].verdict == "worse than lr=0.0001"
    # one seed: the verdict says so and how to add seeds
    assert "one training run" in by["0.001"].note and "seed=1,2,3" in by["0.001"].note
    # --baseline picks another value; a key that is not swept is refused
    comps, _ = compare(t, {"lr": "1e-5"})
    assert {c.baseline_value for c in comps} == {"1e-05"}
    with pytest.raises(ReportError, match="not a swept key"):
        compare(t, {"freeze": "all"})


def test_three_seeds_must_agree_across_seeds():
    n = 200
    idx = np.arange(n)
    base_ok = idx < 100
    recs, i = [], 0
    # seeds 1, 2: the candidate fixes 60 images; seed 3: it breaks 40
    for seed, cand_ok in ((1, base_ok | (idx >= 140)), (2, base_ok | (idx >= 140)),
                          (3, base_ok & (idx >= 40))):
        recs += [_rec(i := i + 1, "0.001", seed, 0.7, base_ok, "all", n),
                 _rec(i := i + 1, "0.001", seed, 0.8, cand_ok, "last4", n)]
    comps, _ = compare(build_table(recs))
    (c,) = [c for c in comps if c.key == "freeze"]
    # b, c: images each side gets right more often over the 3 seeds (one count per image;
    # summing over seeds counted each image 3 times: 40, 120)
    assert (c.b, c.c) == (40, 60) and c.p_adjusted < 0.001 and c.low > 0  # images say better
    assert c.diff == pytest.approx((60 * 2 - 40) / 3 / n)
    assert c.seeds.low < 0 < c.seeds.high
    assert c.verdict.startswith(NOT_DISTINGUISHABLE_SEEDS)
    # the same with seed 3 agreeing: a verdict
    recs[-1] = _rec(99, "0.001", 3, 0.8, base_ok | (idx >= 150), "last4", n)
    (c,) = [c for c in compare(build_table(recs))[0] if c.key == "freeze"]
    assert c.verdict == "better than freeze=all" and c.note == ""


def test_identical_seeds_never_strengthen_a_verdict_end_to_end(tmp_path):
    """Through a real store and `transferlab report`'s context: one seed with b=12, c=3
    (p = 0.035), then the same two runs logged again as seeds 2 and 3. Issue 19: the
    summed counts 36, 9 gave p = 0.0001 and turned "not distinguishable" into a verdict."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("same", artifact_location=(tmp_path / "a").as_uri())
    n = 60
    true = np.arange(n) % 2
    idx = np.arange(n)
    right = {"all": idx < 40, "last4": (idx < 28) | ((idx >= 40) & (idx < 43))}  # b 12, c 3
    answers = {}
    for seeds in ((1,), (2, 3)):
        for seed in seeds:
            for freeze, ok in right.items():
                fx.log_run(c, exp, tmp_path, name=f"{freeze}-s{seed}",
                           params=_params(freeze, seed=seed),
                           tags={"freeze": freeze, "sweep_id": "same"},
                           history={"val_acc": [0.5, 0.7], "loss": [0.7, 0.6]},
                           metrics={"test_acc": float(ok.mean()), "test_loss": 0.5,
                                    "test_images": n},
                           true=true, pred=np.where(ok, true, 1 - true))
        ctx, _, _ = build_context(c, sweep_id="same")
        (comp,) = [x for x in ctx["comparisons"] if x.key == "freeze"]
        answers[len(comp.baseline.runs)] = comp
    one, three = answers[1], answers[3]
    assert (one.b, one.c) == (12, 3) and one.p_value == pytest.approx(0.03515625)
    assert (three.p_value, three.low, three.high, three.b, three.c) == (
        one.p_value, one.low, one.high, one.b, one.c)
    assert one.verdict == three.verdict == "worse than freeze=all"  # one comparison: no Holm
    assert "one training run per side" in one.note and "one training run" not in three.note


# -- imbalanced test split, flags ---------------------------------------------------------

@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """20:1 ok/defect (validation 20/1, test 40/2): an all-'ok' model and a real one."""
    root = tmp_path_factory.mktemp("imb")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("imb", artifact_location=(root / "a").as_uri())
    classes = ["defect", "ok"]
    true = np.array([0, 0] + [1] * 40)
    majority_val = 20 / 21
    runs = {
        # always 'ok': the majority rate everywhere, balanced accuracy 0.5
        "all": dict(val=[majority_val] * 2, vbal=[0.5, 0.5], pred=np.ones(42, int)),
        # finds both defects at the cost of 3 ok images
        "last4": dict(val=[0.80, 19 / 21], vbal=[0.6, 0.975],
                      pred=np.array([0, 0] + [0] * 3 + [1] * 37)),
    }
    for freeze, r in runs.items():
        pred = r["pred"]
        fx.log_run(c, exp, root, name=f"mnv3-{freeze}", params=_params(freeze),
                   tags={"freeze": freeze, "sweep_id": "imb", "data_fingerprint": "fp1"},
                   history={"val_acc": r["val"], "val_balanced_acc": r["vbal"],
                            "loss": [0.5, 0.4], "val_loss": [0.5, 0.45]},
                   metrics={"test_acc": float((pred == true).mean()), "test_loss": 0.3,
                            "test_balanced_acc": float(np.mean([(pred[true == k] == k).mean()
                                                                for k in (0, 1)])),
                            "ref_majority_val_acc": majority_val,
                            "ref_majority_test_acc": 40 / 42, "test_images": 42},
                   true=true, pred=pred, classes=classes)
    return uri


def test_imbalanced_split_ranks_by_balanced_accuracy(imbalanced, tmp_path):
    paths = write_report(imbalanced, tmp_path, sweep_id="imb", metric="val_balanced_acc")
    rows = _csv(paths["csv"])
    assert rows[0]["freeze"] == "last4" and rows[0]["selected_by"] == "val_balanced_acc"
    assert float(rows[0]["test_balanced_acc"]) > float(rows[1]["test_balanced_acc"])
    ctx, _, _ = build_context(MlflowClient(imbalanced), sweep_id="imb", metric="val_balanced_acc")
    (m,) = ctx["matrices"]
    assert not m.cells[("mobilenetv3small", "all")].best          # ★ not on the all-'ok' model
    assert m.cells[("mobilenetv3small", "last4")].best
    (ref,) = [r for r in ctx["references"] if r["name"].startswith("majority class")]
    assert "'ok'" in ref["name"] and ref["test_acc"] == pytest.approx(40 / 42)
    assert ref["test_balanced_acc"] == pytest.approx(0.5)
    html = Path(paths["html"]).read_text()
    assert "majority class, always" in html and "test balanced acc" in html
    # ranked by accuracy, the report warns and names the metric to use instead
    ctx, _, _ = build_context(MlflowClient(imbalanced), sweep_id="imb")
    (warning,) = ctx["warnings"]
    assert "imbalanced" in warning and "ratio 20.0:1" in warning
    assert "--metric val_balanced_acc" in warning


def test_a_run_at_the_majority_rate_is_flagged_not_judged(imbalanced):
    ctx, table, board = build_context(MlflowClient(imbalanced), sweep_id="imb")
    flagged = {r["freeze"]: r["flags"] for r in board}
    assert NEVER_BEAT in flagged["all"] and flagged["last4"] is None
    (comp,) = [c for c in ctx["comparisons"] if c.key == "freeze"]
    assert comp.verdict.startswith("no verdict") and NEVER_BEAT in comp.verdict


def test_the_sweeps_last_lines_carry_the_estimate_verdicts_and_every_flag(imbalanced, tmp_path):
    """Issue 19: a sweep ended with the chosen configuration and "its test accuracy ... is
    the estimate", neither the verdicts nor the flags, so a chosen configuration that never
    beat the majority rate was printed as the estimate."""
    import json

    from transferlab.report.render import final_lines

    paths = write_report(imbalanced, tmp_path, sweep_id="imb")  # ranked by val_acc: 'all'
    lines = final_lines(json.loads(Path(paths["json"]).read_text()))
    assert lines[0].startswith("chosen on validation: freeze=all (val_acc 0.952, 1 seed(s)); its "
                               "test accuracy 0.952 is the estimate, 95% interval [")
    assert lines[0].endswith("(Wilson interval, 42 test images, one training run)")
    assert lines[1].startswith("warning: the chosen configuration is flagged, so its estimate is "
                               f"not a trained model's: mnv3-all: {NEVER_BEAT}")
    assert lines[2] == ("verdicts: none of the 1 comparison(s) is a real difference (report: "
                        "'Is the difference real?')")
    assert lines[3].startswith("warning: The test split is imbalanced")
    assert lines[4].startswith(f"flagged run mnv3-all: {NEVER_BEAT}")
    assert len(lines) == 5


def test_flags_rules():
    assert flags([0.7, 0.5], [0.7, 0.6], [0.9, 0.95], 0.952) == [
        f"{NEVER_BEAT} (best val_acc 0.950 <= 0.952)"]
    assert flags([0.7, 0.5], [0.7, 0.6], [0.9, 0.96], 0.952) == []
    # below the majority rate in accuracy, yet finding the rare class: not flagged
    assert flags([0.7, 0.5], [0.7, 0.6], [0.8, 0.9], 0.952, None, [0.6, 0.97], 0.5) == []
    assert flags([0.7, 0.5], [0.7, 0.6], [0.952], 0.952, None, [0.5], 0.5)[0].startswith(NEVER_BEAT)
    assert flags([0.7, float("nan")], [], [], None)[0].startswith("diverged (non-finite")
    assert flags([0.5, 0.9], [], [], None)[0].startswith("diverged (training loss grew")
    assert flags([0.5, 0.52], [], [], None) == []                      # noise, not growth
    # 3 classes, validation at exactly the majority rate 1/3: float32 logs 0.3333333432674408
    import numpy as np
    third = float(np.float32(1 / 3))
    assert flags([0.7, 0.5], [0.7, 0.6], [third], 1 / 3, None, [third], 1 / 3)[0].startswith(NEVER_BEAT)


def test_sweep_parent_run_gets_the_answer(val_vs_test, tmp_path):
    from transferlab.runner.sweep import summarize_parent

    c = MlflowClient(val_vs_test)
    exp = c.get_experiment_by_name("valtest").experiment_id
    parent = c.create_run(exp, tags={"transferlab.role": "sweep", "sweep_id": "vt"}).info.run_id
    paths = write_report(val_vs_test, tmp_path, sweep_id="vt")
    line = summarize_parent(c, parent, paths["json"], str(paths["html"]))
    assert line.startswith("chosen on validation: freeze=last4 (val_acc 0.900, 1 seed(s))")
    run = c.get_run(parent).data
    assert run.metrics["best_val_acc"] == pytest.approx(0.9)
    assert run.metrics["chosen_test_acc"] == pytest.approx(30 / 40)
    assert run.tags["chosen_config"] == "freeze=last4"
    assert run.tags["report"] == str(paths["html"])
    assert "freeze: last4 vs all" in run.tags["mlflow.note.content"]
    # a real verdict gets a last line of its own, with its difference, interval and Holm p
    import json

    from transferlab.report.render import final_lines

    s = json.loads(Path(paths["json"]).read_text())
    assert [c["real"] for c in s["comparisons"]] == [False, False]  # 30, 34 vs 28 of 40
    s["comparisons"][1].update(verdict="better than freeze=all", real=True, p_holm=0.004)
    assert final_lines(s)[1] == (
        "verdict: freeze=none better than freeze=all (all runs): Δ test acc "
        f"{s['comparisons'][1]['diff']:+.3f} [{s['comparisons'][1]['low']:+.3f}, "
        f"{s['comparisons'][1]['high']:+.3f}], Holm p 0.004")


def test_report_metric_config_is_checked_before_any_job(compose):
    from transferlab.config import ConfigError
    from transferlab.runner.validate import validate

    validate(compose(["report.metric=val_balanced_acc"]))
    with pytest.raises(ConfigError, match="report.metric=test_acc"):
        validate(compose(["report.metric=test_acc"]))
    # a typo would train every job and then choose nothing
    with pytest.raises(ConfigError, match=r"report.metric=val_accuracy: jobs log no such metric \(did you mean val_acc"):
        validate(compose(["report.metric=val_accuracy"]))
