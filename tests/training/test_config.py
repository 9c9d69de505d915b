"""Config: validation, layering (preset <- YAML <- --set), round trips, and presets vs SPEC §1."""

import pytest

from meanflow.errors import UserError
from meanflow.training.config import Config
from meanflow.training.config_io import (
    config_diff,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    parse_override,
)
from meanflow.training.presets import PRESETS, resolve_config


def test_defaults_are_the_digits_job():
    """The default job is the dataclass defaults plus the digits preset's recipe (issue 24's legibility
    search): class-conditional, trained-in guidance w = 2, t, r ~ U(0, 1), lr 5e-4, 2,000 steps."""
    cfg = resolve_config()
    assert cfg.preset == "digits" and cfg.data.name == "digits" and cfg.method.name == "meanflow"
    assert cfg == resolve_config("digits")
    recipe = {"data.use_labels": True, "method.kwargs.time_dist": "uniform", "method.kwargs.omega": 2.0,
              "method.kwargs.class_dropout": 0.1, "training.steps": 2000, "training.lr": 5e-4}
    assert sorted(config_diff(Config(), cfg)) == sorted(recipe)
    for key, value in recipe.items():
        section, *rest = key.split(".")
        got = getattr(cfg, section)
        for part in rest:
            got = got[part] if isinstance(got, dict) else getattr(got, part)
        assert got == value, key


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves_and_round_trips(name):
    cfg = resolve_config(name)
    assert cfg.preset == name
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    ("method.norm_p=-1", "norm_p"),
    ("method.ratio=1.5", "ratio"),
    ("method.ratio=-0.1", "ratio"),
    ("method.class_dropout=2", "class_dropout"),
    ("training.lr=0", "lr"),
    ("training.batch_size=0", "batch_size"),
    ("training.ema_decays=[1.5]", "ema_decays"),
    ("training.optimizer=sgd", "optimizer"),
    ("training.lr=fast", "training.lr must be float"),
    ("training.steps=2.5", "training.steps must be int"),
    ("training.nonsense=1", "unknown config key 'nonsense'"),
    ("bogus.key=1", "unknown config key"),
    ("method.time_pairing=max", "time_pairing"),
    ("data.split=validation", "data.split"),
])
def test_invalid_values_raise_user_error(override, message):
    with pytest.raises(UserError, match=message):
        resolve_config("digits", overrides=[override])


def test_t_start_after_t_end_is_rejected():
    with pytest.raises(UserError, match="t_start"):
        resolve_config("imagenet-b2", overrides=["method.t_start=0.9", "method.t_end=0.5"])


def test_patch_size_must_divide_image_size():
    with pytest.raises(UserError, match="not divisible by the patch size 8"):
        resolve_config("mnist", overrides=["network={name: dit-s/8, kwargs: {}}"])
    # 28 = 7 x 4 is fine; padding MNIST to 32 makes patch 8 fine too
    resolve_config("mnist", overrides=["network={name: dit-s/4, kwargs: {}}"])
    resolve_config("mnist", overrides=["network={name: dit-s/8, kwargs: {}}", "data.options={pad_to: 32}"])


def test_batch_must_divide_by_grad_accum():
    with pytest.raises(UserError, match="grad_accum"):
        resolve_config("digits", overrides=["training.batch_size=10", "training.grad_accum=3"])


def test_guidance_needs_labels():
    with pytest.raises(UserError, match="use_labels"):
        resolve_config("digits", overrides=["method.omega=2.0", "data.use_labels=false"])


def test_exactly_one_of_steps_and_epochs():
    with pytest.raises(UserError, match="exactly one"):
        resolve_config("digits", overrides=["training.epochs=3"])
    cfg = resolve_config("digits", overrides=["training.epochs=3", "training.steps=null"])
    assert cfg.training.total_steps(1797) == -(-3 * 1797 // cfg.training.batch_size)


def test_overrides_yaml_and_flag_layering(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: toy-2d\ntraining:\n  lr: 0.005\n  seed: 3\nnetwork:\n  kwargs: {hidden: 32}\n")
    cfg = resolve_config(None, f, ["training.seed=7", "method.ratio=0.5", "training.betas=[0.8, 0.9]"])
    assert cfg.preset == "toy-2d" and cfg.data.name == "checkerboard"
    assert cfg.training.lr == 0.005 and cfg.training.seed == 7 and cfg.method.kwargs["ratio"] == 0.5
    assert cfg.training.betas == (0.8, 0.9)
    assert cfg.network.kwargs == {"hidden": 32}  # kwargs replaced whole, not merged
    # an explicit --preset wins over the file's preset key
    assert resolve_config("mnist", f).data.name == "mnist"


def test_saved_yaml_reproduces_the_config(tmp_path):
    cfg = resolve_config("cifar10-v1", overrides=["training.lr=1e-4"])
    f = tmp_path / "config.yaml"
    f.write_text(config_to_yaml(cfg))
    assert resolve_config(None, f) == cfg
    assert config_diff(cfg, resolve_config("cifar10-v1")) == ["training.lr"]


def test_parse_override_reads_yaml_values():
    assert parse_override("training.lr=1e-4") == (["training", "lr"], 1e-4)
    assert parse_override("training.grad_clip=null") == (["training", "grad_clip"], None)
    assert parse_override("data.use_labels=true") == (["data", "use_labels"], True)
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_override("training.lr")


@pytest.mark.parametrize("text, message", [("[1, 2", "cannot parse"), ("- a\n- b\n", "mapping")])
def test_bad_yaml_file(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        resolve_config(None, f)
    with pytest.raises(UserError, match="not found"):
        resolve_config(None, tmp_path / "missing.yaml")
