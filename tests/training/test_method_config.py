"""The method section `{name, kwargs}`: validated by building the method, completed, layered, and read
from the flat form older run folders and checkpoints hold."""

import dataclasses
from dataclasses import dataclass

import pytest

from meanflow.errors import UserError
from meanflow.methods import FlowMatching, MeanFlow
from meanflow.methods import registry as method_registry
from meanflow.training.build import build_method_from, build_net, network_kwargs
from meanflow.training.config import Config, MethodConfig
from meanflow.training.config_io import config_diff, config_from_dict, config_to_dict, config_to_yaml
from meanflow.training.presets import resolve_config

# The method section of a flow-matching run as `config.json` / checkpoints of older versions held it:
# every field of the old flat MethodConfig, most of them unused by flow matching.
LEGACY_FLOW_MATCHING = {
    "name": "flow_matching", "ratio": 0.25, "time_dist": "logit_normal", "t_mean": -0.4, "t_std": 1.0,
    "r_mean": -0.4, "r_std": 1.0, "time_pairing": "sort", "norm_p": 1.0, "norm_eps": 0.01, "omega": 1.0,
    "kappa": 0.0, "t_start": 0.0, "t_end": 1.0, "class_dropout": 0.0, "solver": "heun"}
LEGACY_MEANFLOW = {**LEGACY_FLOW_MATCHING, "name": "meanflow", "ratio": 0.75, "norm_p": 0.5,
                   "solver": "euler"}
# A whole config of the default digits job as older versions wrote it (config.json).
LEGACY_DIGITS = {
    "data": {"name": "digits", "data_dir": None, "download": False, "split": "all", "options": {},
             "use_labels": False, "num_points": 100000, "augment_p": 0.0},
    "network": {"name": "mlp", "kwargs": {"hidden": 512, "depth": 4}},
    "method": {"name": "meanflow", "ratio": 0.25, "time_dist": "logit_normal", "t_mean": -0.4, "t_std": 1.0,
               "r_mean": -0.4, "r_std": 1.0, "time_pairing": "sort", "norm_p": 1.0, "norm_eps": 0.01,
               "omega": 1.0, "kappa": 0.0, "t_start": 0.0, "t_end": 1.0, "class_dropout": 0.0,
               "solver": "euler"},
    "training": {"batch_size": 128, "grad_accum": 1, "steps": 2500, "epochs": None, "optimizer": "adam",
                 "lr": 0.001, "betas": [0.9, 0.999], "weight_decay": 0.0, "warmup_steps": 200,
                 "warmup_epochs": None, "grad_clip": 1.0, "ema_decays": [0.999], "ema_warmup": True,
                 "seed": 0, "device": "auto", "precision": "auto", "num_threads": 1,
                 "checkpoint_every": 1000, "keep_last": 2, "replica_check_every": 100,
                 "on_nonfinite": "stop", "max_nonfinite_skips": 10},
    "logging": {"out_dir": "runs", "log_every": 50, "sample_every": 1000, "sample_count": 100,
                "sample_steps": 1, "tensorboard": True, "progress": True},
    "preset": "digits",
}


def test_default_kwargs_are_the_digits_job_and_complete_after_validation():
    assert MethodConfig().kwargs["ratio"] == 0.25 and "compile" not in MethodConfig().kwargs
    kw = Config().method.kwargs
    assert set(kw) == {f.name for f in dataclasses.fields(MeanFlow)} - {"num_classes"}
    assert kw["compile"] is False and kw["t_mean"] == -0.4


@pytest.mark.parametrize("overrides", [[], ["method.name=flow_matching"], ["method.compile=true"],
                                       ["data.use_labels=true", "method.class_dropout=0.1"]])
def test_complete_kwargs_round_trip(overrides):
    cfg = resolve_config("digits", overrides=overrides)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_diff(config_from_dict(config_to_dict(cfg)), cfg) == []


def test_compile_is_accepted_and_reaches_the_method():
    cfg = resolve_config("digits", overrides=["method.compile=true"])
    assert cfg.method.kwargs["compile"] is True
    method = build_method_from(cfg, 10)  # the digits job is class-conditional
    assert isinstance(method, MeanFlow) and method.compile is True


@pytest.mark.parametrize("override", ["method.kwargs.nope=1", "method.nope=1"])
def test_unknown_method_key_is_one_line_naming_it(override):
    with pytest.raises(UserError) as e:
        resolve_config("digits", overrides=[override])
    msg = " ".join(str(e.value).split())
    assert msg.startswith("method.kwargs:") and "nope" in msg


def test_bad_value_and_unknown_name():
    with pytest.raises(UserError, match=r"^method\.kwargs: .*ratio must be in \[0, 1\]"):
        resolve_config("digits", overrides=["method.kwargs.ratio=2"])
    with pytest.raises(UserError, match=r"^method\.name: unknown method 'nope'"):
        resolve_config("digits", overrides=["method.name=nope"])
    with pytest.raises(UserError, match="method.kwargs must be"):
        resolve_config("digits", overrides=["method.kwargs=3"])


def test_shorthand_equals_kwargs_key():
    a = resolve_config("cifar10", overrides=["method.ratio=0.5"])
    b = resolve_config("cifar10", overrides=["method.kwargs.ratio=0.5"])
    assert a == b and a.method.kwargs["ratio"] == 0.5 and a.method.kwargs["t_mean"] == -2.0


def test_another_method_starts_from_its_own_defaults():
    cfg = resolve_config("digits", overrides=["method.name=flow_matching"])
    assert cfg.method.kwargs == {f.name: f.default for f in dataclasses.fields(FlowMatching)}
    # kwargs given in the same layer (the --set overrides together) are kept
    cfg = resolve_config("digits", overrides=["method.kwargs.solver=heun", "method.name=flow_matching"])
    assert cfg.method.kwargs["solver"] == "heun" and "ratio" not in cfg.method.kwargs
    # naming the same method keeps the kwargs below
    assert resolve_config("cifar10", overrides=["method.name=meanflow"]) == resolve_config("cifar10")


def test_yaml_layer_naming_another_method(tmp_path):
    f = tmp_path / "fm.yaml"
    f.write_text("preset: mnist\nmethod:\n  name: flow_matching\n")
    cfg = resolve_config(None, f)
    assert cfg.method.name == "flow_matching" and cfg.method.kwargs["t_mean"] == 0.0
    # flat keys in a user's YAML file are kwargs keys, set one by one
    f.write_text("preset: cifar10\nmethod:\n  norm_p: 0.5\n")
    cfg = resolve_config(None, f)
    assert cfg.method.kwargs["norm_p"] == 0.5 and cfg.method.kwargs["t_mean"] == -2.0


def test_network_name_change_gets_its_own_defaults():
    cfg = resolve_config("digits", overrides=["network.name=unet"])
    assert cfg.network.name == "unet" and cfg.network.kwargs == {}
    cfg = resolve_config("digits", overrides=["network.name=unet", "network.kwargs.model_channels=8"])
    assert cfg.network.kwargs == {"model_channels": 8}
    same = resolve_config("digits", overrides=["network.name=mlp"])
    assert same.network.kwargs == {"hidden": 512, "depth": 4}


def test_guidance_without_labels_names_use_labels():
    # the digits job trains guidance in (w = 2): without labels the message names both ways out
    with pytest.raises(UserError, match=r"guidance .*class labels: set data.use_labels=true, or "
                                        r"method.kwargs.omega=1 and method.kwargs.class_dropout=0"):
        resolve_config("digits", overrides=["data.use_labels=false"])
    with pytest.raises(UserError, match=r"guidance .*class labels: set data.use_labels=true"):
        resolve_config("digits", overrides=[*UNCOND, "method.kappa=0.5"])
    resolve_config("digits", overrides=[*UNCOND])
    resolve_config("digits", overrides=["method.kappa=0.5"])


IMF_LABELS = ["method.name=imf", "data.use_labels=true"]
UNCOND = ["data.use_labels=false", "method.kwargs.omega=1.0", "method.kwargs.class_dropout=0.0"]
# The digits job before issue 24 (the dataclass defaults): unconditional, LN(-0.4, 1), lr 1e-3, 2,500 steps.
OLD_DIGITS = [*UNCOND, "method.kwargs.time_dist=logit_normal", "training.steps=2500", "training.lr=0.001"]
TINY_UNET = ("network={name: unet, kwargs: {model_channels: 8, channel_mult: [1, 2], num_blocks: 1, "
             "attn_resolutions: [], dropout: 0.0}}")


@pytest.mark.parametrize("network", ["network={name: mlp, kwargs: {hidden: 8, depth: 1}}", TINY_UNET])
def test_imf_with_labels_gets_guidance_cond_automatically(network):
    """The method declares its `net_inputs`; the builder turns `guidance` into `guidance_cond=True`."""
    cfg = resolve_config("digits", overrides=[network, *IMF_LABELS])
    assert "guidance_cond" not in cfg.network.kwargs
    method = build_method_from(cfg, 10)
    assert method.net_inputs == ("guidance",)
    assert network_kwargs(cfg, (1, 8, 8), 10, method)["guidance_cond"] is True
    net = build_net(cfg, (1, 8, 8), 10)  # the method built from cfg when not given
    assert net.guidance_cond is True
    # an explicit true is accepted; unconditional imf and other methods leave the network as it was
    cfg = resolve_config("digits", overrides=[network, *IMF_LABELS, "network.kwargs.guidance_cond=true"])
    assert build_net(cfg, (1, 8, 8), 10).guidance_cond is True
    for overrides in (["method.name=imf", "data.use_labels=false"], ["data.use_labels=true"], UNCOND):
        cfg = resolve_config("digits", overrides=[network, *overrides])
        classes = 10 if cfg.data.use_labels else 0
        assert build_method_from(cfg, classes).net_inputs == ()
        assert "guidance_cond" not in network_kwargs(cfg, (1, 8, 8), classes)
        assert build_net(cfg, (1, 8, 8), classes).guidance_cond is False


@pytest.mark.parametrize("overrides, message", [
    (["network={name: dit-s/2, kwargs: {}}", *IMF_LABELS], "'guidance', which network 'dit-s/2' cannot take"),
    (["network.kwargs.guidance_cond=false", *IMF_LABELS], "network.kwargs.guidance_cond=False"),
    (["network.kwargs.guidance_cond=true", "method.name=imf", "data.use_labels=false"],
     "no input 'guidance'"),
    (["network.kwargs.guidance_cond=true", "data.use_labels=true"], "no input 'guidance'"),
])
def test_guidance_input_mismatch_is_one_line(overrides, message):
    cfg = resolve_config("digits", overrides=overrides)
    classes = 10 if cfg.data.use_labels else 0
    with pytest.raises(UserError) as err:
        build_net(cfg, (1, 8, 8), classes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_num_classes_is_data_derived_unless_set():
    cfg = resolve_config("imagenet-b2")
    assert "num_classes" not in cfg.method.kwargs
    assert build_method_from(cfg, 1000).num_classes == 1000
    cfg = resolve_config("mnist", overrides=["method.num_classes=12"])
    assert cfg.method.kwargs["num_classes"] == 12 and build_method_from(cfg, 10).num_classes == 12
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("legacy, name, kwargs", [
    (LEGACY_FLOW_MATCHING, "flow_matching",
     {"time_dist": "logit_normal", "t_mean": -0.4, "t_std": 1.0, "solver": "heun"}),
    (LEGACY_MEANFLOW, "meanflow",
     {k: v for k, v in LEGACY_MEANFLOW.items() if k not in ("name", "solver")}
     | {"compile": False, "jvp_precision": "float32", "tangent": "v01", "interval_weight": "none",
        "interval_power": 1.0}),
])
def test_legacy_method_section_is_converted(legacy, name, kwargs):
    cfg = config_from_dict({"method": legacy})
    assert cfg.method.name == name and cfg.method.kwargs == kwargs
    new = resolve_config("digits", overrides=[f"method={{name: {name}, kwargs: {kwargs}}}", *OLD_DIGITS[:1],
                                              *OLD_DIGITS[-2:]])
    assert config_diff(cfg, new) == []


def test_legacy_digits_config_is_the_default_job():
    # Only logging.sample_steps differs: old configs spelled out 1, today's default None means "the
    # method's own", which is 1 for MeanFlow.
    legacy = config_from_dict(LEGACY_DIGITS)
    assert legacy.logging.sample_steps == 1
    legacy = dataclasses.replace(legacy, logging=dataclasses.replace(legacy.logging, sample_steps=None))
    assert legacy == resolve_config("digits", overrides=OLD_DIGITS)
    assert legacy == Config()


def test_dry_run_yaml_lists_every_hyper_parameter():
    text = config_to_yaml(resolve_config("toy-2d"))
    for f in dataclasses.fields(MeanFlow):
        assert (f"    {f.name}: " in text) == (f.name != "num_classes"), f.name


@dataclass
class _Tupled(FlowMatching):
    """A registered method with a non-scalar field."""

    sigmas: tuple[float, ...] = (0.5, 1.0)


def test_any_registered_dataclass_method(monkeypatch):
    monkeypatch.setitem(method_registry.METHODS, "tupled", _Tupled)
    cfg = resolve_config("digits", overrides=["method.name=tupled", "method.sigmas=[0.1, 0.2, 0.3]"])
    assert cfg.method.kwargs["sigmas"] == [0.1, 0.2, 0.3] and cfg.method.kwargs["solver"] == "euler"
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert "sigmas: [0.1, 0.2, 0.3]" in config_to_yaml(cfg)
    assert build_method_from(cfg, 0).sigmas == (0.1, 0.2, 0.3)
