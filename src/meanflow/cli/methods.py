"""`meanflow methods`: the registered methods with their hyper-parameters and defaults.

The method dataclasses are the only declaration of these options; a config's `method.kwargs` (or
`--set method.KEY=VALUE`) sets them, and `num_classes` is filled in from the data unless given.
"""

from __future__ import annotations

import dataclasses

from meanflow.methods.registry import METHODS


def register(subparsers) -> None:
    p = subparsers.add_parser("methods", help="list the training methods and their hyper-parameters",
                              description="List the registered methods: what each needs from the training "
                                          "loop, its default sampling steps, and every hyper-parameter "
                                          "(method.kwargs) with its default.")
    p.add_argument("name", nargs="?", help="show this method only")
    p.set_defaults(func=run)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "(required)"


def describe(name: str, cls: type) -> list[str]:
    """Lines of one method's block: name and summary, needs, default_steps, `field = default`."""
    summary = (cls.__doc__ or "").strip().splitlines()
    needs = sorted(getattr(cls, "needs", ()))
    lines = [f"{name}  {summary[0] if summary else ''}".rstrip(),
             f"  needs: {', '.join(needs) if needs else '-'}",
             f"  default_steps: {getattr(cls, 'default_steps', 1)}"]
    if dataclasses.is_dataclass(cls):
        fields = [f for f in dataclasses.fields(cls) if f.init]
        width = max((len(f.name) for f in fields), default=0)
        lines += [f"  {f.name:<{width}} = {_default(f)}" for f in fields]
    return lines


def run(args) -> int:
    from meanflow.errors import UserError

    if args.name is not None and args.name not in METHODS:
        raise UserError(f"unknown method {args.name!r}; choose from {', '.join(METHODS)}")
    names = [args.name] if args.name else list(METHODS)
    blocks = ["\n".join(describe(n, METHODS[n])) for n in names]
    print("\n\n".join(blocks))
    print("\n(set with --method NAME and --set method.KEY=VALUE; num_classes comes from the data)")
    return 0
