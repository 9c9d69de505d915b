"""Options and checks the commands share: `--device` (checked as `train` checks `training.device`),
`--threads` (torch's CPU threads, pinned as `train` pins `training.num_threads`), `--no-progress`,
and finite positive tolerances."""

from __future__ import annotations

import math

from meanflow.errors import UserError


def check_device(name: str, flag: str = "--device") -> str:
    """`name` if it is 'cpu', or 'cuda' / 'cuda:N' with CUDA available; else a one-line UserError
    (mps, meta, xpu, ... are not devices this project runs on)."""
    import torch

    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {name}: CUDA is not available")
        return name
    raise UserError(f"{flag} must be cpu, cuda or cuda:N, got {name!r}")


def add_threads_arg(p) -> None:
    """`--threads N`: torch's CPU threads for this command (as `training.num_threads` for `train`)."""
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="CPU threads of torch (default 1, as training.num_threads: on a shared machine more "
                        "threads than free cores slow everything down; 0: torch's default, all cores)")


def pin_threads(args) -> None:
    """Set torch's CPU thread count from `args.threads` (0 leaves torch's default)."""
    n = getattr(args, "threads", None)
    if n is None:
        return
    if n < 0:
        raise UserError(f"--threads must be >= 0 (0: torch's default), got {n}")
    if n:
        import torch

        torch.set_num_threads(n)


def add_progress_arg(p) -> None:
    """`--no-progress` (bars are drawn on stderr, only for work that lasts more than a second)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_tolerance(value: float, flag: str) -> float:
    """`value` if it is a finite number > 0 (an ODE tolerance); else a UserError naming `flag`."""
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{flag} must be a finite number > 0, got {value}")
    return value
