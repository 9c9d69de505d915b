"""Shared parts of the step-cost benchmarks: the two networks, one training step of flow matching /
MeanFlow (tangent mode or ``torch.func.jvp``), interleaved timing, saved-tensor and peak memory.

Used by ``benchmarks/step_cost.py`` (the MeanFlow table), ``benchmarks/step_cost_sweep.py`` (``--sweep``)
and ``benchmarks/step_cost_methods.py`` (``--methods``: every method).
"""

from __future__ import annotations

import gc
import statistics
import time

import torch
from torch import nn

from meanflow.methods import FlowMatching, MeanFlow
from meanflow.networks import build_network

NETS = {
    # DiT-S-like width, shallower, patch 2 on 32x32x4: 256 tokens (the paper's latent size).
    "dit": dict(
        name="dit", shape=(4, 32, 32),
        kwargs=dict(input_size=32, in_channels=4, patch_size=2, hidden_size=256, depth=4, num_heads=4,
                    num_classes=0),
    ),
    # DDPM++-like U-Net, narrow: 32 channels, 2 levels below 32x32, attention at 16x16.
    "unet": dict(
        name="unet", shape=(3, 32, 32),
        kwargs=dict(img_resolution=32, in_channels=3, model_channels=32, channel_mult=(1, 2, 2),
                    num_blocks=1, attn_resolutions=(16,), dropout=0.0, num_classes=0),
    ),
}


MODES = ("fm", "mf", "mf-naive")


class HideTangents(nn.Module):
    """Hides a network's tangent mode so MeanFlow falls back to torch.func.jvp."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, z, t, h, y=None):
        return self.inner(z, t, h, y)


def build(net_key: str, device: str) -> nn.Module:
    torch.manual_seed(0)
    spec = NETS[net_key]
    net = build_network(spec["name"], **spec["kwargs"]).to(device)
    with torch.no_grad():  # move off the zero-init (adaLN, output) so the work is realistic
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def make_step(mode: str, net: nn.Module, x: torch.Tensor, compiled: bool = False,
              ratio: float | None = None):
    """One training step closure ``() -> None`` for a mode, with its own Adam optimizer.

    ``ratio``: the MeanFlow modes' fraction of the batch with ``r != t`` (None: ``MeanFlow()``'s default).
    """
    method = FlowMatching() if mode == "fm" else make_meanflow(ratio)
    target = HideTangents(net) if mode == "mf-naive" else net
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    for p in net.parameters():  # allocate grads and Adam state up front (part of the baseline)
        p.grad = torch.zeros_like(p)
    opt.step()
    loss_fn = method.loss
    if compiled:
        loss_fn = torch.compile(method.loss)

    def step():
        out = loss_fn(target, x)
        opt.zero_grad(set_to_none=False)
        out.loss.backward()
        opt.step()

    return step, method, target


JVP_PRECISION = "float32"
"""``MeanFlow(jvp_precision=...)`` of every MeanFlow step (``--jvp-autocast`` sets "autocast")."""


def make_meanflow(ratio: float | None = None) -> MeanFlow:
    """``MeanFlow(ratio=ratio)``, or ``MeanFlow()``'s default ratio for None, with `JVP_PRECISION`."""
    if ratio is None:
        return MeanFlow(jvp_precision=JVP_PRECISION)
    return MeanFlow(ratio=ratio, jvp_precision=JVP_PRECISION)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def saved_tensor_bytes(method, target, net, x) -> int:
    """Bytes of unique non-parameter storages saved for backward by one loss evaluation."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            base = t
            while torch._C._functorch.is_functorch_wrapped_tensor(base):  # torch.func.jvp wrappers
                base = torch._C._functorch.get_unwrapped(base)
            try:
                s = base.untyped_storage()
                key, nbytes = s.data_ptr(), s.nbytes()
            except RuntimeError:  # a storage-less wrapper (forward-AD dual): count the view itself
                key, nbytes = id(base), base.numel() * base.element_size()
            if key not in params:
                seen[key] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = method.loss(target, x)
    del out
    return sum(seen.values())


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def peak_bytes(step, iters: int, device: str) -> int:
    """Peak memory of ``iters`` calls of ``step`` above the level after one warm-up call (lazy
    initialisations, kernels and caches happen before the baseline)."""
    step()
    gc.collect()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(iters):
            step()
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    # Reset the kernel's high-water mark (VmHWM) to the current RSS, then read it back after the steps
    # (Linux >= 4.0). Freed tensors go back to the OS thanks to MALLOC_MMAP_THRESHOLD_.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    for _ in range(iters):
        step()
    return (_status_kib("VmHWM") - base) * 1024


def interleaved_medians(fns: dict, iters: int, device: str) -> dict[str, float]:
    """Median seconds of each callable in `fns`, run in turn (a, b, c, a, b, c, ...) `iters` times so
    that load from other processes hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
