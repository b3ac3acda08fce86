"""transferlab bench: the Keras applications table measured here, against Keras' published one."""

import csv
import re

import pytest

from conftest import ROOT
from transferlab import bench
from transferlab.cli import main
from transferlab.models import published, registry

LECTURE = ROOT.parent / "shared" / "lecture-vgg19-finetuning.txt"


def test_published_table_is_the_lectures():
    """The package's figures for the lecture's 17 rows are the lecture's (keras.io's) table."""
    if not LECTURE.is_file():
        pytest.skip(f"{LECTURE} not here (the lecture ships in shared/, beside the checkout)")
    rows = {}
    for line in LECTURE.read_text().splitlines():
        cells = line.split("\t")
        if len(cells) == 8 and re.fullmatch(r"\d+(\.\d+)?", cells[1]):
            rows[cells[0].lower()] = cells
    assert list(rows) == list(published.LECTURE)
    for name, (model, size, top1, top5, params, depth, cpu, gpu) in rows.items():
        p = published.get(name)
        assert (p.model, p.size_mb, f"{p.top1:.1f}%", f"{p.top5:.1f}%", f"{p.params_m:.1f}M", p.depth,
                p.cpu_ms, p.gpu_ms) == (model, float(size), top1, top5, params, int(depth),
                                        float(cpu), float(gpu)), name
    assert set(published.TABLE) <= set(registry.BACKBONES)


def test_bench_two_small_backbones(tmp_path, capsys):
    """At 32 px (GAP tops: parameters do not depend on the size) the counts are Keras' exactly."""
    rc = main(["bench", "--backbones", "mobilenet,mobilenetv2", "--image-size", "32", "--batch", "4",
               "--batches", "2", "--repeats", "2", "--out", str(tmp_path)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    with open(tmp_path / "bench.csv", newline="") as f:
        rows = {r["backbone"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["mobilenet", "mobilenetv2"]
    exact = {"mobilenet": (4253864, 55), "mobilenetv2": (3538984, 105)}  # Keras: 4.3M / 55, 3.5M / 105
    for name, r in rows.items():
        p = published.get(name)
        assert (int(r["params"]), int(r["depth"])) == exact[name]
        assert published.params_label(int(r["params"])) == f"{p.params_m:.1f}M" and int(r["depth"]) == p.depth
        assert r["params_match"] == r["depth_match"] == "True"
        assert float(r["ms_per_step"]) > 0 and float(r["images_per_s"]) > 0
        assert abs(float(r["size_mb"]) - p.size_mb) < 1  # the weights file, MiB
        assert r["ratio"] == ""  # batch 4 at 32 px: no like-for-like ratio to Keras' batch 32 at 224
    md = (tmp_path / "bench.md").read_text()
    assert "| MobileNetV2 | 32 | 14 | 3.5M | 105 |" in md and md in cap.out
    assert "2/2 mobilenetv2" in cap.err and "done in" in cap.err  # the progress line


def test_bench_errors(capsys):
    assert main(["bench", "--backbones", "vgg19,resnet5", "--out", "x"]) == 1
    assert "unknown 'resnet5'" in capsys.readouterr().err
    assert main(["bench", "--backbones", "xception", "--image-size", "32", "--out", "x"]) == 1
    assert "--image-size 32 is below xception's minimum of 71 px" in capsys.readouterr().err
    assert bench.parse_backbones("all") == list(registry.BACKBONES)
    assert bench.parse_backbones("lecture")[:3] == ["xception", "vgg16", "vgg19"]


@pytest.mark.slow
def test_parameters_and_depth_of_every_lecture_backbone():
    """Every row of the lecture's table, built with its top at its own size: Keras' counts exactly."""
    import gc

    import keras

    for name in published.LECTURE:
        model = bench.build_application(name)
        p = published.get(name)
        got = (published.params_label(model.count_params()), bench.depth(model))
        assert got == (f"{p.params_m:.1f}M", p.depth), name
        del model
        keras.backend.clear_session()
        gc.collect()
