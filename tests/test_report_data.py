"""The report's "Data" section, rendered from a fixture store (no TensorFlow)."""

import json

import pytest
from mlflow import MlflowClient
from mlflow.entities import RunTag

import report_fixtures as fx
from transferlab.report import write_report

STATS = {
    "fingerprint": "fp-vgg", "classes": ["cat", "dog"],
    "counts": {"train": {"cat": 60, "dog": 20}, "validation": {"cat": 10, "dog": 5},
               "test": {"cat": 20, "dog": 20}},
    "images": {"train": 80, "validation": 15, "test": 40}, "imbalance_ratio": 3.0,
    "image_size": {"min_width": 40, "max_width": 500, "min_height": 30, "max_height": 375},
    "duplicates": {"policy": "warn", "threshold_bits": 6, "dropped": [], "pairs": {
        "train/test": {"exact": 3, "near": 1, "different_label": 1},
        "train/train": {"exact": 2, "near": 0, "different_label": 0}}},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The fixture sweep, its vgg19 runs on data 'fp-vgg' (statistics artifact on one of
    them, leaking, warn), its mobilenetv2 runs on 'fp-mob' (tags only, drop)."""
    s = fx.build_store(tmp_path_factory.mktemp("mlstore"))
    c = MlflowClient(s.uri)
    for (bb, _, _), rid in s.runs.items():
        tags = ({"data_fingerprint": "fp-vgg", "dataset_images": "train 80 · validation 15 · test 40",
                 "imbalance_ratio": "3.00", "image_size_range": "40-500 x 30-375",
                 "duplicates_policy": "warn",
                 "duplicates": "train/test: 3 exact + 1 near (1 with a different label); within train: 2 exact + 0 near"}
                if bb == "vgg19" else
                {"data_fingerprint": "fp-mob", "dataset_images": "train 70 · validation 12 · test 38",
                 "imbalance_ratio": "1.00", "image_size_range": "64x64", "duplicates_policy": "drop",
                 "duplicates_dropped": "5", "duplicates": "train/test: 5 exact + 0 near"})
        c.log_batch(rid, tags=[RunTag(k, v) for k, v in tags.items()])
    c.log_text(s.runs[("vgg19", "all", 1)], json.dumps(STATS), "dataset_stats.json")
    return s


def test_data_section_per_fingerprint(store, tmp_path):
    paths = write_report(store.uri, tmp_path, sweep_id=fx.SWEEP_ID)
    md = paths["md"].read_text(encoding="utf-8")
    section = md[md.index("## Data"):md.index("## Failed and unfinished runs")]
    vgg = section[section.index("### Data fp-vgg"):section.index("### Data fp-mob")]
    assert "(4 run(s))" in vgg  # the finished vgg19 runs carry the tag; failed ones do not
    assert "| class | train | validation | test |" in vgg
    assert "| cat | 60 | 10 | 20 |" in vgg and "| total | 80 | 15 | 40 |" in vgg
    assert "Train imbalance (largest / smallest class): 3.00" in vgg
    assert "image sizes (width x height, px): 40-500 x 30-375" in vgg
    assert "> **Warning:** 4 duplicate pair(s) across splits (a validation or test image repeats an image of an earlier split) (1 under another label)" in vgg
    mob = section[section.index("### Data fp-mob"):]
    assert "Images: train 70 · validation 12 · test 38." in mob and "| class |" not in mob
    assert "5 dropped from validation/test" in mob and "Warning" not in mob
    html = paths["html"].read_text(encoding="utf-8")
    assert '<h2 id="data">Data</h2>' in html and html.count('class="warn leakage"') == 1
    assert "<tr><td>dog</td><td class=\"num\">20</td><td class=\"num\">5</td><td class=\"num\">20</td></tr>" in html


def test_runs_without_statistics_give_no_data_section(store, tmp_path):
    paths = write_report(store.uri, tmp_path, sweep_id=fx.EVIL_SWEEP_ID)
    assert "## Data" not in paths["md"].read_text(encoding="utf-8")
    assert 'id="data"' not in paths["html"].read_text(encoding="utf-8")
