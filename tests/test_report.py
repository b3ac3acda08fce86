"""The comparison report over a tiny MLflow store written per the record contract."""

import csv
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow import MlflowClient

import report_fixtures as fx
from transferlab.cli import main
from transferlab.report import ReportError, log_report_artifacts, write_report
from transferlab.report import stats
from transferlab.report.build import build_context
from transferlab.report.collect import RunRecord
from transferlab.report.significance import NOT_DISTINGUISHABLE
from transferlab.report.table import build_table


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fx.build_store(tmp_path_factory.mktemp("mlstore"))


@pytest.fixture(scope="module")
def sweep_report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-report")
    return write_report(store.uri, out, sweep_id=fx.SWEEP_ID, ui_url="http://ui.example:5000/")


class _Tables(HTMLParser):
    """Text of every table cell, by table id: {id: [[cell, ...], ...]}."""

    def __init__(self):
        super().__init__()
        self.tables, self._id, self._row, self._cell = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._id = a.get("id")
            self.tables[self._id] = []
        elif tag == "tr" and self._id is not None:
            self._row = []
            self.tables[self._id].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._id = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _tables(path):
    p = _Tables()
    p.feed(Path(path).read_text(encoding="utf-8"))
    return p.tables


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _job_ids(store):
    return set(store.runs.values()) | {store.failed_run_id, store.running_run_id}


def test_writes_three_files(sweep_report):
    assert set(sweep_report) == {"html", "md", "csv", "json"}   # + summary.json, the answer
    for p in sweep_report.values():
        assert Path(p).is_file() and Path(p).stat().st_size > 0
    html = Path(sweep_report["html"]).read_text()
    # self-contained: figures inlined, nothing fetched from elsewhere
    assert html.count('src="data:image/png;base64,') >= 4
    for bad in ("<script", "<link", "http://", "https://", "@import", "url("):
        assert bad not in html.replace('href="http://ui.example:5000/#', "")


def test_headline_matrix_is_the_fixture_means(sweep_report, store):
    rows = _tables(sweep_report["html"])["headline-matrix-0"]
    header, body = rows[0], {r[0]: r[1:] for r in rows[1:]}
    assert header[1:] == ["all", "last4", "none"]           # frozen -> trainable
    assert set(body) == {"mobilenetv2", "vgg19"}
    for (bb, fz), mean in store.expected_means.items():
        cell = body[bb][header.index(fz) - 1]
        shown_mean, rest = cell.split(" ± ")
        assert abs(float(shown_mean) - mean) <= 0.0005 + 1e-9, cell
        assert "(n=2)" in rest
    # best per row marked, difference to freeze=all shown
    assert "★" in body["vgg19"][1] and "★" not in body["vgg19"][0]
    delta = store.expected_means[("vgg19", "last4")] - store.expected_means[("vgg19", "all")]
    assert abs(float(body["vgg19"][1].split("Δ ")[1]) - delta) <= 0.0005 + 1e-9
    # the FAILED/RUNNING configuration is a column, not silently dropped
    assert "2 failed/unfinished" in body["vgg19"][2]


def test_matrix_cells_exact(store):
    ctx, _, _ = build_context(MlflowClient(tracking_uri=store.uri), experiment=fx.EXPERIMENT)
    (m,) = ctx["matrices"]
    for (bb, fz), seeds in fx.CORRECT.items():
        cell = m.cells[(bb, fz)]
        accs = [n / fx.N_TEST for n in seeds.values()]
        assert cell.n == 2
        assert cell.mean == pytest.approx(sum(accs) / 2)
        assert cell.std == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert m.cells[("vgg19", "none")].mean is None
    assert m.cells[("vgg19", "none")].n_incomplete == 2


def test_failed_and_running_runs_are_listed(sweep_report, store):
    inc = _tables(sweep_report["html"])["incomplete-table"]
    text = " ".join(" ".join(r) for r in inc)
    assert "FAILED" in text and "RUNNING" in text
    assert store.failed_run_id in text and store.running_run_id in text
    assert "ResourceExhaustedError" in text
    rows = _csv_rows(sweep_report["csv"])
    assert {r["run_id"] for r in rows} == _job_ids(store)  # parent sweep run excluded
    status = {r["run_id"]: r["status"] for r in rows}
    assert status[store.failed_run_id] == "FAILED"
    assert status[store.running_run_id] == "RUNNING"
    md = Path(sweep_report["md"]).read_text()
    assert "Failed and unfinished runs" in md and store.failed_run_id in md


def test_leaderboard_columns_and_links(sweep_report, store):
    rows = _csv_rows(sweep_report["csv"])
    assert list(rows[0])[:4] == ["backbone", "freeze", "image_size", "seed"]
    for col in ("best_val_acc", "best_val_acc_epoch", "final_val_acc", "test_acc", "test_loss",
                "params_trainable", "params_total", "train_seconds", "train_images_per_s",
                "status", "run_id", "mlflow_url"):
        assert col in rows[0]
    # ranked on validation (the fixture's final val_acc equals its test_acc)
    scores = [float(r["selection_score"]) for r in rows if r["rank"]]
    assert scores == sorted(scores, reverse=True) and rows[0]["selected_by"] == "val_acc"
    assert [int(r["rank"]) for r in rows if r["rank"]] == list(range(1, len(scores) + 1))
    best = rows[0]
    assert best["run_id"] == store.runs[("vgg19", "last4", 1)]
    assert float(best["test_acc"]) == 37 / 40
    assert best["best_val_acc_epoch"] == "4"  # its 4th epoch (step 3), counted as Keras prints it
    url = f"http://ui.example:5000/#/experiments/{store.experiment_id}/runs/{best['run_id']}"
    assert best["mlflow_url"] == url
    assert f'href="{url}"' in Path(sweep_report["html"]).read_text()


def test_significance_matches_hand_computation(store):
    client = MlflowClient(tracking_uri=store.uri)
    ctx, _, _ = build_context(client, sweep_id=fx.SWEEP_ID)
    # every swept key is compared: freeze (against freeze=all) and backbone (against the
    # best by validation), one group per value of the other key
    assert {(c.key, c.group, c.candidate_value, c.baseline_value) for c in ctx["comparisons"]
            if c.key == "backbone"} == {("backbone", "freeze=all", "mobilenetv2", "vgg19"),
                                        ("backbone", "freeze=last4", "mobilenetv2", "vgg19")}
    comps = {(c.group, c.strategy): c for c in ctx["comparisons"] if c.key == "freeze"}
    assert set(comps) == {("mobilenetv2", "last4"), ("vgg19", "last4")}
    comp = comps[("vgg19", "last4")]
    assert [p.seed for p in comp.pairs] == ["1", "2"]
    for pair in comp.pairs:
        seed = int(pair.seed)
        base = fx.correctness("vgg19", "all", seed, fx.CORRECT[("vgg19", "all")][seed])
        cand = fx.correctness("vgg19", "last4", seed, fx.CORRECT[("vgg19", "last4")][seed])
        b = sum(x and not y for x, y in zip(base, cand))
        c = sum(y and not x for x, y in zip(base, cand))
        assert (pair.n_images, pair.b, pair.c) == (fx.N_TEST, b, c)
        assert pair.p_value == pytest.approx(stats.mcnemar_exact(b, c))
        assert pair.diff == pytest.approx((c - b) / fx.N_TEST)
        assert pair.low <= pair.diff <= pair.high
    diffs = [(fx.CORRECT[("vgg19", "last4")][s] - fx.CORRECT[("vgg19", "all")][s]) / fx.N_TEST
             for s in (1, 2)]
    assert comp.seeds.mean == pytest.approx(sum(diffs) / 2)
    assert comp.seeds.low < 0 < comp.seeds.high       # 2 seeds: a wide t-interval
    assert comp.seeds_verdict == "not distinguishable across seeds"
    html_rows = _tables(_write(store, ctx_dir := store.root / "sig"))["significance-table"]
    assert any(NOT_DISTINGUISHABLE in r for r in html_rows)
    assert ctx_dir.is_dir()


def _write(store, out):
    return write_report(store.uri, out, sweep_id=fx.SWEEP_ID)["html"]


def test_escapes_run_names_and_param_values(store, tmp_path):
    paths = write_report(store.uri, tmp_path, experiment=fx.EVIL_EXPERIMENT)
    html = Path(paths["html"]).read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "alert(3)" in html and "&lt;script&gt;alert(3)" in html
    md = Path(paths["md"]).read_text()
    assert "<script" not in md and "<img" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    rows = _csv_rows(paths["csv"])      # the CSV keeps the data as it is
    assert fx.EVIL_NAME in {r["run_name"] for r in rows}


def test_same_runs_same_bytes(store, tmp_path):
    a = write_report(store.uri, tmp_path / "a", sweep_id=fx.SWEEP_ID)
    b = write_report(store.uri, tmp_path / "b", experiment=fx.EXPERIMENT)
    assert Path(a["csv"]).read_bytes() == Path(b["csv"]).read_bytes()
    c = write_report(store.uri, tmp_path / "c", sweep_id=fx.SWEEP_ID)
    for k in ("csv", "md", "html"):
        assert Path(a[k]).read_bytes() == Path(c[k]).read_bytes(), k


def _cli_ids(store, tmp_path, *selection):
    out = tmp_path / "cli"
    assert main(["report", "--tracking-uri", store.uri, *selection, "--out", str(out)]) == 0
    return {r["run_id"] for r in _csv_rows(out / "leaderboard.csv")}


def test_cli_selects_by_experiment(store, tmp_path, capsys):
    assert _cli_ids(store, tmp_path, "--experiment", fx.EXPERIMENT) == _job_ids(store)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith("report.html") and Path(last.split()[-1]).is_file()


def test_cli_selects_by_sweep(store, tmp_path):
    assert _cli_ids(store, tmp_path, "--sweep", fx.EVIL_SWEEP_ID) == set(store.evil_run_ids)


def test_rerun_sweep_brings_its_skipped_runs(store, tmp_path):
    vgg = {v for k, v in store.runs.items() if k[0] == "vgg19"}
    assert _cli_ids(store, tmp_path, "--sweep", fx.RERUN_SWEEP_ID) == vgg


def test_cli_selects_by_filter(store, tmp_path):
    ids = _cli_ids(store, tmp_path, "--filter", "tags.backbone = 'vgg19'")
    assert ids == {v for k, v in store.runs.items() if k[0] == "vgg19"} | {
        store.failed_run_id, store.running_run_id}
    ids = _cli_ids(store, tmp_path, "--experiment", fx.EXPERIMENT,
                   "--filter", "params.seed = '2' and attributes.status = 'FINISHED'")
    assert ids == {v for k, v in store.runs.items() if k[2] == 2}


def test_cli_selects_by_run_ids(store, tmp_path):
    two = [store.runs[("vgg19", "all", 1)], store.runs[("vgg19", "last4", 1)]]
    assert _cli_ids(store, tmp_path, "--runs", *two) == set(two)
    # a sweep's parent run id stands for its jobs
    assert _cli_ids(store, tmp_path, "--runs", store.parent_run_id) == _job_ids(store)


def test_cli_axes(store, tmp_path):
    out = tmp_path / "axes"
    assert main(["report", "--tracking-uri", store.uri, "--sweep", fx.SWEEP_ID, "--out",
                 str(out), "--rows", "freeze", "--cols", "backbone"]) == 0
    rows = _tables(out / "report.html")["headline-matrix-0"]
    assert rows[0][1:] == ["mobilenetv2", "vgg19"]
    assert [r[0] for r in rows[1:]] == ["all", "last4", "none"]


def test_cli_errors_are_clear(store, tmp_path, capsys):
    base = ["report", "--tracking-uri", store.uri, "--out", str(tmp_path / "e")]
    assert main(base + ["--experiment", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no experiment named 'nope'" in err and fx.EXPERIMENT in err
    assert main(base + ["--sweep", "missing-sweep"]) == 1
    assert "no runs match" in capsys.readouterr().err
    assert main(base + ["--sweep", fx.SWEEP_ID, "--rows", "colour"]) == 1
    assert "unknown key 'colour'" in capsys.readouterr().err
    assert main(base + ["--filter", "params.lr ~~ 'x'"]) == 1
    with pytest.raises(SystemExit):
        main(base)                                       # no selection
    with pytest.raises(ReportError):
        write_report(store.uri, tmp_path, run_ids=["0" * 32])


def test_log_report_artifacts(store, sweep_report):
    client = MlflowClient(tracking_uri=store.uri)
    log_report_artifacts(client, store.parent_run_id, sweep_report)
    names = {f.path for f in client.list_artifacts(store.parent_run_id, "report")}
    assert names == {"report/report.html", "report/report.md", "report/leaderboard.csv",
                     "report/summary.json"}


def _rec(i, backbone, freeze, lr, seed, acc, status="FINISHED", **extra):
    params = {"backbone.name": backbone, "freeze.strategy": freeze, "lr": lr, "seed": str(seed),
              "image_size": {"vgg19": "64", "resnet50": "96"}[backbone], "head.pooling": "gap",
              "root_dir": f"/home/u/sweep{i % 3}", "runtime.verbose": str(i % 2), **extra}
    metrics = {"test_acc": acc} if acc is not None else {}
    return RunRecord(f"r{i:03d}", "0", f"run{i}", status, None, i, params,
                     {"backbone": backbone, "freeze": freeze}, metrics)


def test_swept_lr_gives_one_matrix_per_value():
    recs, i = [], 0
    for lr in ("1e-05", "0.0001"):
        for bb in ("vgg19", "resnet50"):
            for fz in ("all", "none"):
                for seed in (1, 2):
                    i += 1
                    recs.append(_rec(i, bb, fz, lr, seed, 0.5 + i / 100))
    t = build_table(recs)
    assert t.facet_keys == ["lr"]                       # image_size follows the backbone
    assert t.constant == {"head.pooling": "gap"}
    assert "root_dir" not in t.swept and "runtime.verbose" not in t.swept  # no effect on results
    assert [m.facet for m in t.matrices] == [{"lr": "1e-05"}, {"lr": "0.0001"}]
    assert all(c.n == 2 for m in t.matrices for c in m.cells.values())
    assert len(t.configs) == 8 and all(len(c.runs) == 2 for c in t.configs)
    t2 = build_table(recs, rows="lr", cols="freeze")
    assert t2.facet_keys == ["backbone"]


def test_report_does_not_import_tensorflow(store, tmp_path):
    code = ("import sys; from transferlab.cli import main; "
            f"rc = main(['report', '--tracking-uri', {store.uri!r}, '--sweep', {fx.SWEEP_ID!r}, "
            f"'--out', {str(tmp_path)!r}]); "
            "assert rc == 0; assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "assert 'keras' not in sys.modules, 'keras imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_default_store_follows_transferlab_root_as_run_py_does(tmp_path, monkeypatch):
    from transferlab.report.build import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "elsewhere"
    (root / "mlruns").mkdir(parents=True)
    (root / "mlruns" / "mlflow.db").write_bytes(b"")
    monkeypatch.setenv("TRANSFERLAB_ROOT", str(root))
    assert resolve_tracking_uri(None) == f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    monkeypatch.delenv("TRANSFERLAB_ROOT")
    with pytest.raises(ReportError, match=f"no MLflow store at {tmp_path / 'mlruns' / 'mlflow.db'}"):
        resolve_tracking_uri(None)


def test_missing_sqlite_store_is_an_error_not_a_new_database(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRANSFERLAB_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReportError, match="no MLflow store at"):
        write_report(None, tmp_path / "out", experiment="x")
    assert main(["report", "--experiment", "x", "--out", str(tmp_path / "o")]) == 1
    assert not list(tmp_path.rglob("*.db"))


def test_retried_seed_keeps_latest_run_and_resolves_failures():
    recs = [_rec(1, "vgg19", "all", "1e-05", 1, 0.80),
            _rec(2, "vgg19", "all", "1e-05", 1, None, status="FAILED"),
            _rec(3, "vgg19", "all", "1e-05", 1, 0.90),     # later re-run of seed 1
            _rec(4, "vgg19", "all", "1e-05", 2, None, status="RUNNING"),
            _rec(5, "vgg19", "none", "1e-05", 1, 0.70)]
    t = build_table(recs)
    (cfg_all,) = [c for c in t.configs if c.get("freeze") == "all"]
    assert [r.run_id for r in cfg_all.runs] == ["r003"]
    assert [r.run_id for r in cfg_all.superseded] == ["r001"]
    assert [r.run_id for r in cfg_all.unresolved] == ["r004"]  # seed 1's failure was retried
    cell = t.matrices[0].cells[("vgg19", "all")]
    assert (cell.mean, cell.n, cell.n_incomplete) == (0.90, 1, 1)
    assert t.matrices[0].cells[("vgg19", "none")].delta == pytest.approx(-0.2)


def test_runs_on_two_data_sets_are_two_configurations_not_replicates():
    """The same config and seed on two folders: both kept, apart (a new user's report once
    listed one as 'superseded' by the other and averaged across folders)."""
    recs = [_rec(1, "vgg19", "all", "1e-05", 1, 0.80, **{"dataset.path": "/d/cats"}),
            _rec(2, "vgg19", "all", "1e-05", 1, 0.60, **{"dataset.path": "/d/dogs"}),
            _rec(3, "vgg19", "none", "1e-05", 1, 0.90, **{"dataset.path": "/d/cats"})]
    for r, data_id in zip(recs, ["aaaaaa11", "bbbbbb22", "aaaaaa11"]):
        r.tags["dataset_id"] = data_id
    t = build_table(recs)
    assert "data" in t.swept
    assert sorted(c.get("data") for c in t.configs) == ["cats (aaaaaa)", "cats (aaaaaa)", "dogs (bbbbbb)"]
    assert all(not c.superseded and len(c.runs) == 1 for c in t.configs)
    # one data set: a constant, shown among the common settings
    same = build_table([recs[0], recs[2]])
    assert same.constant["data"] == "cats (aaaaaa)" and "data" not in same.swept


def test_dataset_id_is_the_same_for_every_fold_and_differs_between_folders(tmp_path):
    from PIL import Image

    from transferlab import data

    for cls, level in (("a", 30), ("b", 200)):
        (tmp_path / "one" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (level + i, 0, 0)).save(tmp_path / "one" / cls / f"{i}.png")
    folds = [data.scan(tmp_path / "one", split=data.SplitSpec(folds=2, fold=k)) for k in (0, 1)]
    assert folds[0].fingerprint() != folds[1].fingerprint()
    assert folds[0].dataset_id() == folds[1].dataset_id()
    Image.new("RGB", (8, 8), (99, 99, 99)).save(tmp_path / "one" / "a" / "6.png")
    assert data.scan(tmp_path / "one", split=data.SplitSpec(folds=2, fold=0)).dataset_id() != folds[0].dataset_id()
