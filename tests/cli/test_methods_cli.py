"""`meanflow methods`, `meanflow train --method`, and method errors as one line."""

import dataclasses
import re

import yaml

from meanflow.cli import main
from meanflow.methods import METHODS


def test_methods_lists_every_registered_method_with_its_fields(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name, cls in METHODS.items():
        start = next(i for i, line in enumerate(lines) if line.startswith(name + "  "))
        assert cls.__doc__.strip().splitlines()[0] in lines[start]
        block = lines[start:lines.index("", start) if "" in lines[start:] else len(lines)]
        assert f"  default_steps: {getattr(cls, 'default_steps', 1)}" in block
        assert any(line.startswith("  needs: ") for line in block)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert any(line.split("=")[0].strip() == f.name and line.endswith(repr(default))
                       for line in block), (name, f.name)
    assert main(["methods", "flow_matching"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flow_matching  ") and "meanflow  " not in out
    assert re.search(r"^  solver += 'euler'$", out, re.M)


def test_methods_unknown_name_is_one_line(capsys):
    assert main(["methods", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'nope'" in err[0]


def _dry_run(capsys, *argv):
    assert main(["train", "--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    return yaml.safe_load(out.split("\n", 1)[1])


def test_method_flag_starts_from_the_methods_own_defaults(capsys):
    cfg = _dry_run(capsys, "--method", "flow_matching")
    assert cfg["method"] == {"name": "flow_matching", "kwargs": {
        "time_dist": "logit_normal", "t_mean": 0.0, "t_std": 1.0, "solver": "euler"}}
    # with --set in the same command the kwargs given there are kept, whatever their order
    cfg = _dry_run(capsys, "--set", "method.solver=heun", "--method", "flow_matching")
    assert cfg["method"]["kwargs"]["solver"] == "heun"
    # the same method keeps the preset's kwargs (--download: a dry run checks the data, which is not here)
    cfg = _dry_run(capsys, "--preset", "cifar10", "--method", "meanflow", "--download")
    assert cfg["method"]["kwargs"]["ratio"] == 0.75


def test_dry_run_prints_every_hyper_parameter(capsys):
    cfg = _dry_run(capsys, "--set", "method.compile=true")
    fields = {f.name for f in dataclasses.fields(METHODS["meanflow"])} - {"num_classes"}
    assert set(cfg["method"]["kwargs"]) == fields and cfg["method"]["kwargs"]["compile"] is True


def test_unknown_method_key_is_one_line(capsys):
    assert main(["train", "--dry-run", "--set", "method.kwargs.nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meanflow: error: method.kwargs:") and "nope" in err[0]
