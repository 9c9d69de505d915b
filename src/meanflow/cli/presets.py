"""`meanflow presets`: list the named presets, or print one resolved."""

from __future__ import annotations

from meanflow.training.config_io import config_to_yaml
from meanflow.training.presets import DEFAULT_PRESET, PRESETS, resolve_config


def register(subparsers) -> None:
    p = subparsers.add_parser("presets", help="list the named presets (or show one resolved)",
                              description="List the presets, or print the full config of one.")
    p.add_argument("name", nargs="?", help="print this preset's resolved config as YAML")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.name:
        print(config_to_yaml(resolve_config(args.name)), end="")
        return 0
    width = max(len(n) for n in PRESETS)
    for name, preset in PRESETS.items():
        mark = "*" if name == DEFAULT_PRESET else " "
        print(f"{name:<{width}} {mark} {preset.description}")
    print("(* default; show one with: meanflow presets NAME)")
    return 0
