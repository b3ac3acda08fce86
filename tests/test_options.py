"""Keras' constructor options (backbone.alpha, backbone.depth_multiplier, backbone.minimalistic).

Checked before TensorFlow loads (keys the application does not take, combinations with no
ImageNet file, keys outside the schema), recorded as they applied (run name, tags, hash,
report label, bench), and built as Keras builds them: the graph, the parameter count and
the ImageNet file Keras' download asks for (``models/options.py`` transcribes Keras'
source; these tests hold it to the installed Keras). One option value per family in the
fast suite, the others ``slow``.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest

import weights_helpers as H
from conftest import ROOT, TINY
from transferlab.config import ConfigError, check_override_keys
from transferlab.models import options, weights
from transferlab.models.pretrained import PretrainedError
from transferlab.runner import tracking
from transferlab.runner.validate import validate

# One option value per family (fast suite), then the rest (slow): (registry name, options).
FAST = [("mobilenet", {"alpha": 0.25}), ("mobilenetv2", {"alpha": 0.35}),
        ("mobilenetv3small", {"minimalistic": True})]
SLOW = [("mobilenet", {"alpha": 0.5}), ("mobilenet", {"alpha": 0.75}),
        ("mobilenet", {"depth_multiplier": 2}), ("mobilenet", {"alpha": 0.3}),
        ("mobilenetv2", {"alpha": 0.5}), ("mobilenetv2", {"alpha": 1.3}), ("mobilenetv2", {"alpha": 1.4}),
        ("mobilenetv3small", {"alpha": 0.75}), ("mobilenetv3large", {"alpha": 0.75}),
        ("mobilenetv3large", {"minimalistic": True})]


# -- before TensorFlow -----------------------------------------------------------------------


@pytest.mark.parametrize("override,words", [
    (["backbone=vgg19", "backbone.alpha=0.5"],
     ["backbone.alpha=0.5", "vgg19", "takes no constructor options", "mobilenet, mobilenetv2"]),
    (["backbone=mobilenet", "backbone.minimalistic=true"],
     ["takes backbone.alpha, backbone.depth_multiplier", "mobilenetv3small"]),
    (["backbone=mobilenetv2", "backbone.depth_multiplier=2"], ["mobilenetv2", "takes backbone.alpha;"]),
    (["backbone=mobilenetv2", "backbone.alpha=0.25"],
     ["alpha=0.35; alpha=0.5; alpha=0.75; alpha=1.0; alpha=1.3; alpha=1.4", "96, 128, 160, 192, 224 px",
      "mobilenet_v2.py", "backbone.weights=null"]),
    (["backbone=mobilenet", "backbone.depth_multiplier=2"], ["depth_multiplier=1", "alpha=0.25"]),
    (["backbone=mobilenetv3small", "backbone.alpha=0.75", "backbone.minimalistic=true"],
     ["alpha=1.0, minimalistic=true", "alpha=0.75, minimalistic=false", "224 px"]),
    (["backbone=mobilenet", "backbone.alpha=-1"], ["alpha must be > 0"]),
    (["backbone=mobilenetv3small", "backbone.minimalistic=true", "freeze=last_n", "freeze.n=104"],
     ["103 layers"]),
])
def test_options_are_checked_against_the_application(compose, override, words):
    with pytest.raises(ConfigError) as e:
        validate(compose(override))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_options_without_imagenet_file_are_fine_from_random_init(compose):
    validate(compose(["backbone=mobilenetv2", "backbone.alpha=0.25", "backbone.weights=null"]))
    validate(compose(["backbone=mobilenet", "backbone.depth_multiplier=2", "backbone.weights=null"]))
    cfg = compose(["backbone=vgg19"])
    validate(cfg)  # no options: every option key null, nothing passed to Keras
    assert (cfg.backbone.alpha, cfg.backbone.depth_multiplier, cfg.backbone.minimalistic) == (None,) * 3


def test_keys_outside_the_schema_are_refused(compose):
    """`+backbone.anything=1` was accepted, logged as a param and never read."""
    with pytest.raises(ConfigError, match=r"Unknown config key 'backbone.anything'.*Keys of backbone: "
                                          r"backbone.alpha, backbone.depth_multiplier, backbone.minimalistic, "
                                          r"backbone.name, backbone.weights"):
        check_override_keys(["+backbone.anything=1"])
    with pytest.raises(ConfigError, match="Unknown config key 'trainer.x'"):
        check_override_keys(["++trainer.x=3"])
    with pytest.raises(ConfigError, match=r"Fix: backbone.alpha=0.25"):
        check_override_keys(["+backbone.alpha=0.25"])  # the command: a key that exists
    check_override_keys(["+hydra.job.env_set.X=1", "backbone.alpha=0.25"])  # Hydra's own and real keys
    with pytest.raises(ConfigError, match=r"'backbone.anything'.*Keys of backbone: backbone.alpha"):
        validate(compose(["+backbone.anything=1"]))  # composed past the command line (the API, by hand)


def test_option_errors_come_before_tensorflow(tmp_path):
    code = ("import sys, runpy; sys.argv = ['run.py', 'backbone=vgg19', 'backbone.alpha=0.25', "
            f"'root_dir={tmp_path}']\n"
            "try:\n    runpy.run_path('run.py', run_name='__main__')\n"
            "finally:\n    print('TF_LOADED', 'tensorflow' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "vgg19 (keras.applications.VGG19) takes no constructor options" in out, out
    assert "TF_LOADED False" in out and not (tmp_path / "mlruns").exists()


def test_options_enter_run_name_tags_and_hash(compose):
    base = [*TINY, "backbone=mobilenet"]
    a25, a50, default = (compose([*base, f"backbone.alpha={a}"]) for a in ("0.25", "0.5", "1.0"))
    assert tracking.run_name(a25).startswith("mobilenet-a0.25-all-")
    assert tracking.run_name(default).startswith("mobilenet-all-")  # Keras' default: the plain name
    assert tracking.backbone_label(compose([*base, "backbone.depth_multiplier=2"])) == "mobilenet-dm2"
    assert tracking.backbone_label(compose([*TINY, "backbone.minimalistic=true"])) == "mobilenetv3small-min"
    hashes = {tracking.config_hash(c) for c in (a25, a50, default)}
    assert len(hashes) == 3
    assert tracking.flat_params(a25)["backbone.alpha"] == "0.25"
    assert tracking.flat_params(compose(["backbone=vgg19"]))["backbone.alpha"] == "None"  # did not apply


def test_report_rows_are_the_variants():
    """A sweep over backbone.alpha: the report's backbone label carries the option, and the
    option key follows it instead of becoming an axis of its own."""
    from transferlab.report.collect import RunRecord
    from transferlab.report.table import build_table, fields_of

    recs = [RunRecord(f"r{i}", "0", f"run{i}", "FINISHED", None, i,
                      {"backbone.name": "mobilenet", "backbone.alpha": a, "seed": "0", "lr": "0.001",
                       "freeze.strategy": "all"},
                      {"backbone": "mobilenet", "backbone_label": label, "freeze": "all"},
                      {"test_acc": 0.5 + i / 10, "val_acc": 0.5})
            for i, (a, label) in enumerate([("0.25", "mobilenet-a0.25"), ("1.0", "mobilenet")])]
    assert fields_of(recs[0])["backbone"] == "mobilenet-a0.25"
    table = build_table(recs)
    assert table.axes == ["backbone"]  # backbone.alpha follows the label
    assert sorted(f["backbone"] for f in table.fields.values()) == ["mobilenet", "mobilenet-a0.25"]


# -- as Keras builds them --------------------------------------------------------------------


def _keras_graph(name, size, opts):
    """Keras' own model for these options: its ImageNet graph where it has ImageNet weights for
    them (nothing loaded), else its weights=None graph."""
    if options.has_imagenet(name, options.resolve(name, opts)):
        return H.keras_imagenet(name, size, None, **opts)
    return H.ctor(name)(include_top=False, weights=None, input_shape=(size, size, 3), **opts)


def _graph_and_file_route(name, opts, tmp_path):
    size = 32
    ref = _keras_graph(name, size, opts)
    got = weights.build(name, size, None, options=opts)
    assert H.graph(got) == H.graph(ref), f"{name} {opts}: not Keras' graph"
    assert got.count_params() == ref.count_params()
    assert len(got.layers) == options.num_layers(name, opts)
    path = tmp_path / f"{name}.weights.h5"
    H.perturb(ref).save_weights(path)
    got = weights.build(name, size, str(path), options=opts)
    d, _ = H.max_diff(ref, got, H.batch(name, size))
    assert d <= 1e-5, f"{name} {opts}: the file route computes other outputs ({d})"
    keras.backend.clear_session()


@pytest.mark.parametrize("name,opts", FAST, ids=[f"{n}-{o}" for n, o in FAST])
def test_graph_params_and_file_route_per_option(name, opts, tmp_path):
    _graph_and_file_route(name, opts, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name,opts", SLOW, ids=[f"{n}-{o}" for n, o in SLOW])
def test_graph_params_and_file_route_every_option(name, opts, tmp_path):
    """The option values beyond one per family (about 3 s each on 2 cores, 10 of them)."""
    _graph_and_file_route(name, opts, tmp_path)


@pytest.mark.parametrize("name", ["mobilenet", "mobilenetv2", "mobilenetv3small"])
def test_keras_refuses_exactly_what_the_table_refuses(name):
    """Keras' own check (before it builds anything) refuses every combination the table has no
    ImageNet file for; the ones it accepts are built in the file-name tests below."""
    keys = options.takes(name)
    for alpha in (0.25, 0.3, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 2.0):
        for extra in ({}, {"depth_multiplier": 2} if "depth_multiplier" in keys else
                      {"minimalistic": True} if "minimalistic" in keys else None):
            if extra is None:
                continue
            opts = options.resolve(name, {"alpha": alpha, **extra})
            if options.has_imagenet(name, opts):
                continue
            with pytest.raises(ValueError, match="imagenet"):
                H.ctor(name)(include_top=False, weights="imagenet", input_shape=(224, 224, 3), **opts)


def _asks_for(name, combos, sizes, include_top):
    for opts in combos:
        for size in sizes:
            asked = []
            H.keras_imagenet(name, size, None, include_top, asked=asked, **opts)
            want = options.imagenet_file(name, opts, size, include_top)
            assert asked == [want], f"{name} {opts} @{size} top={include_top}: Keras asked for {asked}"
        keras.backend.clear_session()


def _grid(name):
    fam = options.FAMILIES[H.ctor(name).__name__]
    return [dict(c) for c in fam.imagenet], list(fam.sizes)


@pytest.mark.parametrize("name", ["mobilenet", "mobilenetv2", "mobilenetv3small"])
def test_keras_asks_for_the_file_the_table_names(name):
    """The patched download records the file name Keras requests: every ImageNet combination
    without the top at the smallest size with a file of its own and at one without (Keras then
    loads the 224 px file), and Keras' default options at every size with the top."""
    combos, sizes = _grid(name)
    _asks_for(name, combos, [sizes[0], 64], include_top=False)
    _asks_for(name, combos[-1:] if name != "mobilenetv3small" else combos[1:2], sizes, include_top=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet", "mobilenetv2", "mobilenetv3small", "mobilenetv3large"])
def test_keras_asks_for_the_file_the_table_names_everywhere(name):
    """Every combination x every size x with and without the top (MobileNetV2: 60 builds,
    about 50 s on 2 cores)."""
    combos, sizes = _grid(name)
    for top in (False, True):
        _asks_for(name, combos, sizes, include_top=top)


def test_a_file_of_another_width_names_its_alpha(tmp_path):
    """The issue's case: alpha 0.25 weights built as MobileNet's default alpha 1.0."""
    path = H.write_weights("mobilenet", 32, tmp_path / "mine.h5", legacy=True, alpha=0.25)
    with pytest.raises(PretrainedError) as e:
        weights.build("mobilenet", 32, path)
    msg = str(e.value)
    for w in ("MobileNet(alpha=1.0, depth_multiplier=1, include_top=False)",
              "conv1 has 8 filters in the file, 32 in the graph built here (alpha 0.25)",
              "Fix: backbone.alpha=0.25", "--alpha 0.25", "(named conv1) for weight"):
        assert w in msg, msg
    assert ")for" not in msg and ".." not in msg
    # Keras' own with-top file layout (a .weights.h5 with the top loads into a headless base:
    # Keras skips the extra layers)
    top = H.write_weights("mobilenet", 32, tmp_path / "top.h5", include_top=True, legacy=True, alpha=0.25)
    with pytest.raises(PretrainedError, match=r"1000-class ImageNet top.*transferlab predict --backbone "
                                              r"mobilenet --alpha 0.25 --weights"):
        weights.build("mobilenet", 32, top, options={"alpha": 0.25})
    keras.backend.clear_session()


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_copy_routes_keep_the_options(tmp_path, store):
    """A .keras copy and a run:<id> of an alpha 0.25 base build its graph and outputs; into
    another alpha they are refused naming the source's (the run before anything downloads)."""
    name, size, opts = "mobilenet", 32, {"alpha": 0.25}
    ref = H.imagenet_source(name, size, tmp_path / "src.weights.h5", **opts)
    ref.save(tmp_path / "src.keras")
    run = f"run:{H.log_classifier(ref, name, store, label='mobilenet-a0.25')}"
    for spec in (str(tmp_path / "src.keras"), run):
        got = weights.build(name, size, spec, store, options=opts)
        assert H.graph(got) == H.graph(ref)
        d, _ = H.max_diff(ref, got, H.batch(name, size))
        assert d <= 1e-5, spec
    with pytest.raises(PretrainedError, match=r"alpha=0.25.*conv1 has 8 filters in the source, 32 in the "
                                              r"graph built here.*Fix: backbone.alpha=0.25"):
        weights.build(name, size, str(tmp_path / "src.keras"))
    with pytest.raises(PretrainedError, match=r"trained mobilenet-a0.25, this job builds mobilenet"):
        weights.build(name, size, run, store)
    keras.backend.clear_session()


def test_bench_builds_the_variant():
    """transferlab bench --backbones mobilenet --alpha 0.25 --image-size 128: Keras' model with
    its top (475,544 parameters, as the weights README states), not compared with Keras'
    alpha 1.0 figures."""
    from transferlab import bench

    row = bench.measure("mobilenet", batch=2, image_size=128, steps=1, repeats=1, warmup=0,
                        opts={"alpha": 0.25})
    assert (row.params, row.backbone, row.model) == (475_544, "mobilenet-a0.25", "MobileNet(alpha=0.25)")
    assert row.keras_params_m is None and row.ratio is None and row.params_match is None
    with pytest.raises(bench.BenchError, match="vgg19 .* takes no constructor options"):
        bench.build_application("vgg19", 32, {"alpha": 0.25})


def test_head_starts_the_same_whatever_the_route(compose, tmp_path):
    """The seed alone fixes a job's initial head: the same weights as a file and as a .keras
    copy (which loads a whole model first) give the same initial head weights, however many
    models were built before in the process (tests/test_real_weights.py: identical per-epoch
    losses through all four routes on the real file)."""
    from conftest import TINY as tiny
    from transferlab.models.build import build_model

    path = H.write_weights("mobilenet", 32, tmp_path / "a025.weights.h5", alpha=0.25)
    H.perturbed("mobilenet", 32, alpha=0.25).save(tmp_path / "a025.keras")  # other weights: the head only
    heads = []
    for w in (path, str(tmp_path / "a025.keras"), path):
        cfg = compose([*tiny, "backbone=mobilenet", "backbone.alpha=0.25", f"backbone.weights={w}"])
        model, _, _ = build_model(cfg, 3)
        heads.append([v.numpy() for v in model.get_layer("predictions").weights])
        for _ in range(len(heads)):  # layers built in between draw from Python's RNG
            keras.layers.Dense(3)(keras.Input((4,)))
    for h in heads[1:]:
        for a, b in zip(heads[0], h):
            np.testing.assert_array_equal(a, b)


def test_report_says_random_init_and_counts_epochs_from_one():
    """backbone.weights=null is shown as "random init" (not None) in the matrix, labels and
    verdicts, and --baseline backbone.weights=null names it; the best epoch is 1-based."""
    from transferlab.report.baselines import check_baselines
    from transferlab.report.collect import RunRecord
    from transferlab.report.table import build_table, config_label

    recs = [RunRecord(f"r{i}", "0", f"run{i}", "FINISHED", None, i,
                      {"backbone.name": "mobilenet", "backbone.weights": w, "seed": "0"},
                      {"backbone": "mobilenet", "freeze": "all"}, {"test_acc": 0.5, "val_acc": 0.5},
                      history={"val_acc": [(0, 0.4), (1, 0.6), (2, 0.5)]})
            for i, w in enumerate(["imagenet", "None"])]
    table = build_table(recs)
    assert table.axes == ["backbone.weights"]
    assert sorted(config_label(c, table.axes) for c in table.configs) == [
        "backbone.weights=imagenet", "backbone.weights=random init"]
    assert check_baselines(table, {"backbone.weights": "null"}) == {"backbone.weights": "null"}
    assert {r["best_val_acc_epoch"] for r in table.leaderboard()} == {2}


def test_readme_table_states_the_registry_and_options():
    """README's applications table: every registry entry with its Keras constructor, sizes,
    layer counts and the options it takes."""
    from transferlab.models.registry import BACKBONES

    text = (ROOT / "README.md").read_text()
    for name, s in BACKBONES.items():
        row = next((l for l in text.splitlines() if l.startswith(f"| `{name}` | `{s.constructor}` |")), None)
        assert row, name
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[2] == f"{s.default_size} / {s.min_size}" and cells[3].split()[0] == str(s.num_layers), row
        assert [k for k in options.KEYS if f"`backbone.{k}`" in cells[4]] == list(options.takes(name)), row


def test_failed_download_names_keras_file_for_the_options():
    """Offline, the message names the file Keras' download asked for (its name for alpha
    0.25 at 128 px), to copy into the Keras cache or pass as backbone.weights."""
    from transferlab.models.registry import WeightsUnavailable

    try:
        weights.build("mobilenet", 128, "imagenet", options={"alpha": 0.25})
    except WeightsUnavailable as e:
        assert "mobilenet-a0.25" in str(e) and "as mobilenet_2_5_128_tf_no_top.h5" in str(e), str(e)
    else:
        pytest.skip("the weights downloaded: this machine is online")
