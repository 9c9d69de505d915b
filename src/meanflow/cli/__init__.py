"""The `meanflow` command line: `train`, `sample`, `presets`, `methods` (and `ref-stats`, `eval`,
`reflow-pairs`, `likelihood`, `encode`, `convert`, `export`, `push`).

Each subcommand lives in its own module with `register(subparsers)`; `main` turns a `UserError`
(and any argparse complaint) into one line `meanflow: error: <message>` on stderr and exit code 2,
with no traceback. Exit codes: 0 done, 2 bad input or a file-system failure (unwritable or full
output location, unreadable file), 3 training stopped by a non-finite loss or gradient
(`training.on_nonfinite`), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from meanflow.errors import UserError

SUBCOMMAND_MODULES = ("train", "sample", "presets", "methods", "evaluate", "reflow_pairs", "likelihood",
                      "encode", "convert", "export", "push")


class _ArgumentError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become one-line messages instead of usage dumps, and which reads
    `--lr -1e-3` as a (negative) value, not as an unknown option."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$|^-nan$")

    def error(self, message: str):  # noqa: D401 - argparse API
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        raise _ArgumentError(f"{sub}: {message}" if sub else message)


def build_parser() -> Parser:
    parser = Parser(prog="meanflow", description="One-step generative modelling with MeanFlow.",
                    epilog="exit status: 0 done; 2 bad input or a file-system failure (one line "
                           "'meanflow: error: ...'); 3 training stopped by a non-finite loss or gradient "
                           "(training.on_nonfinite); 130 interrupted")
    from meanflow import __version__

    parser.add_argument("--version", action="version", version=f"meanflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"meanflow.cli.{name}")
        except ModuleNotFoundError as e:  # a subcommand that is not installed yet
            if e.name == f"meanflow.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        result = args.func(args)
    except (UserError, _ArgumentError) as e:
        print(f"meanflow: error: {_one_line(e)}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:  # a file-system failure no command turned into a UserError of its own
        where = f"{e.filename}: " if e.filename else ""
        print(f"meanflow: error: {where}{_one_line(e.strerror or e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("meanflow: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # python -m meanflow.cli
    sys.exit(main())
