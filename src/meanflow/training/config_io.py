"""dict / YAML <-> `Config`, and the layered overrides a config is resolved from.

`config_from_dict` reads a nested dict strictly (unknown keys and wrong types are one-line
`UserError`s) and accepts the older forms of the method section: the flat dict that run folders
and checkpoints written before `{name, kwargs}` hold, and flat keys as shorthand for `kwargs` keys.
`merge` and `apply_overrides` layer dicts (preset <- YAML file <- `--set`) with one rule for the
`{name, kwargs}` sections (method, network): a layer that names another method or network and gives
no kwargs of its own drops the kwargs below, so the new one starts from its own defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from meanflow.errors import UserError
from meanflow.training.config import Config, MethodConfig, NetworkConfig

# Sections shaped {name, kwargs}: a change of name drops the kwargs of the layer below.
NAMED_SECTIONS = ("method", "network")
# The flat method section of configs written before {name, kwargs} (all of these keys, name included),
# and the keys its `method_kwargs` passed to each method: a legacy section keeps exactly those.
LEGACY_METHOD_KEYS = frozenset({
    "name", "ratio", "time_dist", "t_mean", "t_std", "r_mean", "r_std", "time_pairing", "norm_p",
    "norm_eps", "omega", "kappa", "t_start", "t_end", "class_dropout", "solver"})
LEGACY_METHOD_KWARGS = {
    "flow_matching": frozenset({"time_dist", "t_mean", "t_std", "solver"}),
    "meanflow": LEGACY_METHOD_KEYS - {"name", "solver"},
}


# ------------------------------------------------------------------------------------------------
# dict <-> dataclass, strictly typed


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert lists to tuples where needed."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(e)
        raise errors[0] if errors else UserError(f"{key}: got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - every annotation used above is handled
        raise TypeError(f"unsupported annotation {tp} for {key}")
    raise UserError(f"{key} must be {_type_name(tp)}, got {value!r}")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise UserError(f"unknown config key {unknown[0]!r}{where} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def merge_section(section: str, below: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `below` for a `{name, kwargs}` section ('method' or 'network').

    A `kwargs` mapping in `layer` replaces the one below whole; a layer naming a different method or
    network without `kwargs` starts from empty kwargs (the new one's own defaults). In the method
    section, keys other than name/kwargs are single `kwargs` keys (shorthand: `ratio: 0.5` ==
    `kwargs: {ratio: 0.5}` merged key by key); a legacy flat section (no `kwargs`, only the old
    keys) of 'meanflow' / 'flow_matching' keeps exactly the keys the old config passed to that method.
    """
    if not isinstance(below, dict) or not isinstance(layer, dict):
        return copy.deepcopy(layer)
    layer = copy.deepcopy(layer)
    flat: dict[str, Any] = {}
    if section == "method":
        flat = {k: layer.pop(k) for k in [k for k in layer if k not in ("name", "kwargs")]}
        name = layer.get("name", below.get("name"))
        if "kwargs" not in layer and set(flat) <= LEGACY_METHOD_KEYS and name in LEGACY_METHOD_KWARGS:
            flat = {k: v for k, v in flat.items() if k in LEGACY_METHOD_KWARGS[name]}
    changed = "name" in layer and layer["name"] != below.get("name")
    if "kwargs" in layer:
        kwargs = layer["kwargs"]
    else:
        kwargs = {} if changed else copy.deepcopy(below.get("kwargs", {}))
    if isinstance(kwargs, dict):
        kwargs = {**kwargs, **flat}
    return {**copy.deepcopy(below), **layer, "kwargs": kwargs}


def _default_section(section: str) -> dict[str, Any]:
    return dataclasses.asdict({"method": MethodConfig, "network": NetworkConfig}[section]())


def normalize(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its method and network sections in `{name, kwargs}` form (legacy and shorthand
    keys converted, see `merge_section`; a section without kwargs over the defaults)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for section in NAMED_SECTIONS:
        if isinstance(out.get(section), dict):
            out[section] = merge_section(section, _default_section(section), out[section])
    return out


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a `Config` from a nested dict; missing keys take their defaults. A legacy
    flat method section (run folders and checkpoints of older versions) is converted."""
    return _from_dict(Config, normalize(data), "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain-Python dict (tuples as lists) that `config_from_dict` turns back into `cfg`."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


class _Dumper(yaml.SafeDumper):
    """Mappings in block style (one key a line, e.g. every method hyper-parameter), lists inline."""


_Dumper.add_representer(dict, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data,
                                                                   flow_style=not data))
_Dumper.add_representer(list, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data,
                                                                    flow_style=True))


def config_to_yaml(cfg: Config) -> str:
    """The config as YAML that `load_yaml` + `config_from_dict` read back to `cfg`."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False)


def config_diff(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (keys starting with `ignore` skipped)."""
    out: list[str] = []

    def walk(x: Any, y: Any, key: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{key}.{k}" if key else k)
        elif x != y and not any(key == p or key.startswith(p + ".") for p in ignore):
            out.append(key)

    walk(config_to_dict(a), config_to_dict(b), "")
    return out


# ------------------------------------------------------------------------------------------------
# building a config from layers


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of a config layer `over` onto `base`. `kwargs` mappings are replaced whole: the
    keyword arguments of one network make no sense merged into another's; the method and network
    sections follow `merge_section`."""
    out = dict(base)
    for k, v in over.items():
        if k in NAMED_SECTIONS and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_section(k, out[k], v)
        else:
            out[k] = _deep_merge(out.get(k), v)
    return out


def _deep_merge(base: Any, over: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    out = dict(base)
    for k, v in over.items():
        out[k] = copy.deepcopy(v) if k == "kwargs" else _deep_merge(out.get(k), v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.lr=1e-4' -> (['training', 'lr'], 0.0001). The value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"--set expects KEY=VALUE (e.g. training.lr=1e-4), got {text!r}")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise UserError(f"--set: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {key}: cannot parse value {raw!r}") from None
    # YAML 1.1 reads '1e-4' as a string; numbers written that way are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value) if raw.strip().lower() not in ("nan", "inf", "-inf") else value
        except ValueError:
            pass
    return path, value


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `data[path[0]][path[1]]... = value` in place; free-form mappings below a section (such as
    `network.kwargs`) are created as needed, unknown sections are a `UserError`."""
    node = data
    for i, part in enumerate(path[:-1]):
        nxt = node.get(part)
        if nxt is None and i >= 1:  # free-form mappings such as network.kwargs
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"unknown config key {'.'.join(path)!r}")
        node = nxt
    node[path[-1]] = value


def override_path(path: list[str]) -> list[str]:
    """`method.ratio` -> `method.kwargs.ratio`: a key under `method` other than name/kwargs is a
    hyper-parameter of the method."""
    if len(path) >= 2 and path[0] == "method" and path[1] not in ("name", "kwargs"):
        return ["method", "kwargs", *path[1:]]
    return path


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`data` with the `--set KEY=VALUE` overrides applied in order, taken together as one layer:
    when they name another method (or network) and the kwargs below are dropped (see `merge`)."""
    parsed = [parse_override(text) for text in overrides]
    parsed = [(override_path(path), value) for path, value in parsed]
    out = normalize(copy.deepcopy(data))
    trial = copy.deepcopy(out)
    for path, value in parsed:
        set_path(trial, path, value)
    for section in NAMED_SECTIONS:
        before, after = out.get(section), trial.get(section)
        if isinstance(before, dict) and isinstance(after, dict) and after.get("name") != before.get("name"):
            before["kwargs"] = {}
    for path, value in parsed:
        set_path(out, path, copy.deepcopy(value))
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a dict, as a one-line `UserError` on any problem."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot parse config file {p}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping at the top level")
    return data
