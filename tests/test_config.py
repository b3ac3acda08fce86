"""Config composition of every group and preset, and validation before TF."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from transferlab.models.registry import BACKBONES
from transferlab.config import ConfigError
from transferlab.runner.validate import validate

GROUPS = ["backbone", "freeze", "dataset", "optimizer", "scheduler", "augment", "head", "trainer",
          "runtime", "tracking"]
PARAMETERISED = {"last_n": ["freeze.n=3"], "last_blocks": ["freeze.n=1"],
                 "from_layer": ["freeze.layer=block_16_expand"], "folder": ["dataset.path=."]}


def choices(group):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_choice_of_every_group_composes_and_validates(compose, group, tmp_path):
    (tmp_path / "data" / "cats_dogs").mkdir(parents=True)
    for choice in choices(group):
        cfg = compose([f"{group}={choice}", *PARAMETERISED.get(choice, [])])
        assert OmegaConf.select(cfg, group) is not None
        validate(cfg)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_experiment_preset_composes(compose, preset, tmp_path):
    (tmp_path / "data" / "cats_dogs").mkdir(parents=True)
    cfg = compose([f"experiment={preset}"])
    assert cfg.name == preset
    validate(cfg)


def test_lecture_preset_is_the_lecture_recipe(compose, tmp_path):
    cfg = compose(["experiment=lecture_vgg19"])
    assert cfg.backbone.name == "vgg19" and cfg.backbone.weights == "imagenet"
    assert cfg.image_size == 224 and cfg.lr == 1e-5 and cfg.optimizer.name == "rmsprop"
    assert cfg.head.pooling == "flatten" and cfg.head.dropout == 0
    t = cfg.trainer
    assert (t.epochs, t.batch_size, t.steps_per_epoch, t.validation_steps) == (100, 100, 20, 10)
    a = cfg.augment
    assert (a.rotation, a.width_shift, a.height_shift, a.shear, a.zoom, a.horizontal_flip) == (
        40, 0.2, 0.2, 0.2, 0.2, True)
    assert cfg.dataset.path == f"{tmp_path}/data/cats_dogs"


def test_last4_is_last_n_with_n_4(compose):
    cfg = compose(["freeze=last4"])
    assert (cfg.freeze.strategy, cfg.freeze.n) == ("last_n", 4)


def test_every_registered_backbone_has_a_yaml():
    assert set(choices("backbone")) == set(BACKBONES)


def test_misspelt_key_is_rejected_by_the_schema(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        compose(["trainer.epoch=3"])
    assert "epoch" in str(e.value.__cause__ or e.value)


@pytest.mark.parametrize("override,words", [
    (["backbone.name=vgg91"], ["vgg91", "vgg19", "Allowed"]),
    (["lr=0"], ["lr", "> 0"]),
    (["lr=-1e-3"], ["lr", "> 0"]),
    (["trainer.epochs=0"], ["trainer.epochs", ">= 1"]),
    (["backbone=inceptionv3", "image_size=64"], ["image_size=64", "75"]),
    (["backbone=vgg19", "freeze=last_n", "freeze.n=23"], ["freeze.n=23", "22 layers"]),
    (["freeze.strategy=half"], ["half", "last_n"]),
    (["optimizer.name=adagrad"], ["adagrad", "rmsprop"]),
    (["backbone=inceptionv3", "freeze=last_blocks", "freeze.n=1"], ["last_blocks", "last_n"]),
    (["dataset=folder", "dataset.path=/no/such/dir"], ["/no/such/dir", "train/"]),
    (["backbone.weights=/no/such.h5"], ["/no/such.h5", "backbone.weights=null"]),
    (["dataset.duplicates=ignore"], ["ignore", "warn", "drop", "error"]),
    (["trainer.class_weight=auto"], ["auto", "balanced", "null"]),
])
def test_bad_values_fail_with_a_message_naming_them(compose, override, words):
    with pytest.raises(ConfigError) as e:
        validate(compose(override))
    for w in words:
        assert w in str(e.value)


def test_bad_sweep_value_fails_fast_without_tensorflow(tmp_path):
    """run.py -m with one bad job: exit 1 in seconds, TF never imported, no run written."""
    code = (
        "import sys, runpy; sys.argv = ['run.py', '-m', 'lr=1e-3,-1', 'backbone.weights=null', "
        f"'root_dir={tmp_path}']\n"
        "try:\n    runpy.run_path('run.py', run_name='__main__')\n"
        "finally:\n    print('TF_LOADED', 'tensorflow' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "lr must be > 0, got lr=-1" in out
    assert "TF_LOADED False" in out
    assert not (tmp_path / "mlruns").exists()


# Keys that name which option a file is (optimizer name, freeze strategy, ...), not a value.
IDENTITY = {"name", "strategy", "pooling"}


@pytest.mark.parametrize("group", GROUPS)
def test_no_yaml_repeats_a_schema_default(group):
    """Defaults live once, in the schema: a group file holds only what its option changes.

    Before, the dataclasses said trainer.epochs=5 and dataset.images_per_class=30 while
    the YAML files said 10 and 40: two sources that disagreed.
    """
    from transferlab.config.schema import Config

    defaults = OmegaConf.structured(Config)[group]
    for path in (ROOT / "conf" / group).glob("*.yaml"):
        flat = OmegaConf.to_container(OmegaConf.load(path))
        for key, value in flat.items():
            if key in IDENTITY or isinstance(value, dict):
                continue
            assert value != defaults[key], f"{path.name}: {group}.{key}={value!r} repeats the schema default"


def test_composed_defaults_are_the_schemas(compose, tmp_path):
    """With no override, every value not set by a default option is the dataclass default."""
    from transferlab.config.schema import Config

    import dataclasses

    cfg = compose([])
    for group in ("trainer", "runtime", "tracking", "scheduler"):  # default options: comments only
        assert OmegaConf.to_container(cfg[group]) == dataclasses.asdict(getattr(Config(), group)), group
    assert cfg.trainer.epochs == 10 and cfg.dataset.images_per_class == 40 and cfg.lr == 1e-4
    assert cfg.root_dir == str(tmp_path) and cfg.data_dir == f"{tmp_path}/data"
