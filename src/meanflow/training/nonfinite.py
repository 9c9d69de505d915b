"""Keep non-finite losses and gradients out of the weights, the EMAs and the checkpoints.

After the backward pass of step s the loop calls `guard.observe(step, loss, grad_norm)`; the guard
turns it into a 0-dim float flag `skip` on the device (1.0: leave the state as it is) that

* the optimizer reads as `found_inf` (fused Adam/AdamW skip the update *inside the kernel* and
  undo their step count, as under AMP's grad scaler), and
* the EMA reads as a mask (`shadow <- shadow + (1 - d) * (1 - skip) * (param - shadow)`),

so a bad step changes nothing without the host ever waiting for the device. The host reads the
flags back only at `guard.check()`: every step on the CPU (free there) and at the loop's existing
sync points on a GPU (log steps, checkpoints, sample grids, the end). A bad step is still found and
named exactly, because the guard records the first bad step number on the device.

Policies (`training.on_nonfinite`):

* `stop` (default): from the first bad step on every update is skipped (`halted`), and `check()`
  raises `NonFiniteError` naming that step. The last checkpoint written is the last good state.
* `skip`: a bad step is skipped (the data and the step counter move on, weights, optimizer state and
  EMAs do not); `check()` raises once more than `max_skips` consecutive steps were skipped.
"""

from __future__ import annotations

import torch

from meanflow.errors import UserError

NONFINITE_EXIT_CODE = 3
"""Exit status of `meanflow train` stopped by non-finite values (user errors exit 2)."""


class NonFiniteError(UserError):
    """Training stopped because a loss or gradient was NaN or infinite (CLI exit status 3)."""

    exit_code = NONFINITE_EXIT_CODE


class NonFiniteGuard:
    """Per-step finiteness flags kept on `device`; see the module docstring.

    Args:
        policy: 'stop' or 'skip'.
        max_skips: with 'skip', the most consecutive skipped steps tolerated.
        device: where the flags live (the device of the loss).
        distributed: all-reduce each step's flag (MAX) so every rank skips the same steps.
    """

    def __init__(self, policy: str, max_skips: int, device: torch.device, distributed: bool = False) -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"policy must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self.max_skips = max_skips
        self.distributed = distributed
        zero = torch.zeros((), device=device)
        self.skip = zero.clone()
        """1.0 when the current step must not change the state, else 0.0 (read by optimizer and EMA)."""
        self.halted = zero.clone()  # stop: 1.0 from the first bad step on
        self.run = zero.clone()  # skip: length of the current run of consecutive bad steps
        self.worst_run = zero.clone()  # skip: longest run since the last check
        self.skipped = zero.clone()  # bad steps since the last `take_skipped()`
        self.first_bad = torch.full((), -1.0, device=device)  # step number of the first bad step
        self.worst_end = zero.clone()  # skip: last step of the longest run

    @torch.no_grad()
    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """Flag the update numbered `step` (1-based: the step count after it, as in checkpoint names)
        from its summed loss and its global gradient norm (non-finite when any element is); returns
        `skip`."""
        bad = (~torch.isfinite(loss.detach().float()) | ~torch.isfinite(grad_norm.detach().float())).float()
        if self.distributed:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        fresh = bad * (self.first_bad < 0).float()
        self.first_bad.add_(fresh * (step + 1.0))  # -1 + (step + 1) = step, once
        self.skipped.add_(bad)
        if self.policy == "stop":
            self.halted.copy_(torch.maximum(self.halted, bad))
            self.skip.copy_(self.halted)
        else:
            self.run.copy_((self.run + 1.0) * bad)
            longer = (self.run > self.worst_run).float()
            self.worst_end.copy_(longer * step + (1.0 - longer) * self.worst_end)
            self.worst_run.copy_(torch.maximum(self.worst_run, self.run))
            self.skip.copy_(bad)
        return self.skip

    def take_skipped(self) -> int:
        """Bad steps since the previous call (a host sync)."""
        n = int(self.skipped.item())
        self.skipped.zero_()
        return n

    def check(self, last_good: str = "") -> None:
        """Raise `NonFiniteError` when the policy says stop (a host sync). `last_good` describes the
        last good checkpoint for the message."""
        first = int(self.first_bad.item())
        if first < 0:
            return
        where = f"; last good checkpoint: {last_good}" if last_good else "; no checkpoint was written yet"
        if self.policy == "stop":
            raise NonFiniteError(
                f"non-finite loss or gradients at step {first}: training stopped, nothing from that step "
                f"on was applied{where} (lower training.lr, or set training.on_nonfinite=skip)")
        worst, end = int(self.worst_run.item()), int(self.worst_end.item())
        self.worst_run.copy_(self.run)
        if worst > self.max_skips:
            raise NonFiniteError(
                f"{worst} consecutive steps with non-finite loss or gradients "
                f"(steps {end - worst + 1}-{end}; training.max_nonfinite_skips={self.max_skips}): "
                f"training stopped{where}")
