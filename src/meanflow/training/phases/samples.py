"""The sample-grid phase: `logging.sample_count` samples of the first EMA, drawn as a picture.

Every ``logging.sample_every`` steps and once at the end (then also as ``samples.png``). The samples
are sharded over the ranks (rank k draws samples ``[k per, (k + 1) per)``, ``per = ceil(n / world)``,
each a function of (seed, index) only) and gathered; images become a grid, 2-D points a scatter plot
over the data. Draws happen under a forked RNG, so the training stream is untouched.

Touches: `run.sample_net` (loads the first EMA, or the raw weights without EMAs), the run folder's
`samples/`. Reads `run.ema`, `run.net`, `run.guard` (read back first).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from meanflow.training import distributed, fsdp

if TYPE_CHECKING:
    from meanflow.training.run_state import RunState


def sample_grid(run: RunState, final: bool = False) -> None:
    """Write `samples/step-<step>.png` (and with `final`, `samples.png`) of the run at `run.step`."""
    run.guard.check(run.last_ckpt)
    tc, lc, parts = run.cfg.training, run.cfg.logging, run.parts
    if tc.ema_keys:
        run.ema.copy_to(run.sample_net, tc.ema_keys[0])
    else:
        run.sample_net.load_state_dict(fsdp.model_state(run.net))
    n = lc.sample_count
    per = math.ceil(n / run.info.world_size)
    from meanflow.sampling import generate

    run.sample_net.to(run.device)
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        x = generate(parts.method, run.sample_net, run.info.rank * per, (run.info.rank + 1) * per,
                     steps=lc.sample_steps or parts.method.grid_steps, seed=tc.seed,
                     batch_size=max(per, 1), device=run.device, shape=parts.shape, num_classes=parts.classes,
                     progress=None if lc.progress and run.info.is_main else False)
    if run.sharded:
        run.sample_net.cpu()
    x = distributed.all_gather_cat(x.to(run.device)).cpu()[:n]
    if run.info.is_main:
        _draw(run, x, final)


def _draw(run: RunState, x: torch.Tensor, final: bool) -> None:
    """Save samples `x` ``[n, *S]``: an image grid (classes as columns when they fill whole rows of
    at least 8), or 2-D points over up to 20,000 data points; latents are not drawn."""
    from meanflow.utils.images import save_grid, save_points

    parts, n = run.parts, run.cfg.logging.sample_count
    folder, name = run.run_dir / "samples", f"step-{run.step:07d}.png"
    if run.is_image and not run.is_latent:
        ncol = parts.classes if parts.classes and n % parts.classes == 0 and parts.classes >= 8 else None
        save_grid(x, folder / name, ncol=ncol)
        if final:
            save_grid(x, run.run_dir / "samples.png", ncol=ncol)
    elif len(parts.shape) == 1 and parts.shape[0] == 2:
        ref = parts.data.x[: min(len(parts.data), 20000)]
        save_points(x, folder / name, reference=ref)
        if final:
            save_points(x, run.run_dir / "samples.png", reference=ref)
    else:
        return
    run.logger.image("samples", folder / name, run.step)
