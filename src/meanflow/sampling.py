"""Generation from a method and a network: seeded samples, quantised to uint8. No training code here;
loading a trained run is `meanflow.training.load.load_generator`.

Noise is drawn in fixed blocks of `NOISE_BLOCK` samples, block b from a generator seeded with
(seed, b), so sample i is the same image whatever the batch size, world size or device.
Class labels of a conditional model are `i % num_classes` (balanced) unless one class is asked for.

    method, net, cfg = meanflow.training.load.load_generator("runs/00000-digits-meanflow")
    images = generate_uint8(method, net, 1000, steps=1, seed=0)     # uint8 [1000, H, W, C]
"""

from __future__ import annotations

import contextlib
import inspect
import math

import numpy as np
import torch
from torch import nn

from meanflow.errors import UserError
from meanflow.utils.images import to_uint8

NOISE_BLOCK = 1024


def _block_seed(seed: int, block: int, stream: int = 0) -> int:
    key = [seed, block, 0x5A3] if stream == 0 else [seed, block, 0x5A3, stream]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1)


def noise_for(start: int, stop: int, shape: tuple[int, ...], seed: int, stream: int = 0) -> torch.Tensor:
    """Gaussian noise of samples [start, stop): float32 [stop - start, *shape] on the CPU.

    Stream 0 is the starting noise of `generate`; stream k >= 1 is the k-th fresh draw of a stochastic
    sampler (`SampleNoise`)."""
    out = []
    for b in range(start // NOISE_BLOCK, math.ceil(stop / NOISE_BLOCK)):
        g = torch.Generator().manual_seed(_block_seed(seed, b, stream))
        block = torch.randn((NOISE_BLOCK, *shape), generator=g)
        lo, hi = max(start - b * NOISE_BLOCK, 0), min(stop - b * NOISE_BLOCK, NOISE_BLOCK)
        out.append(block[lo:hi])
    return torch.cat(out) if out else torch.empty((0, *shape))


class SampleNoise:
    """Fresh noise for a stochastic sampler working on samples [start, stop) (a `NoiseSource` of
    `meanflow.methods.base`): the k-th call of `randn_like` returns stream k of `noise_for`, so the
    noise sample i sees at its k-th draw depends only on (seed, i, k), not on the batch it is in.
    """

    def __init__(self, start: int, stop: int, seed: int) -> None:
        self.start, self.stop, self.seed = start, stop, seed
        self.draws = 0

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Next draw, shaped, typed and placed like `x` ``[stop - start, *S]``."""
        if x.shape[0] != self.stop - self.start:
            raise ValueError(f"SampleNoise covers {self.stop - self.start} samples, asked for {x.shape[0]}")
        self.draws += 1
        e = noise_for(self.start, self.stop, tuple(x.shape[1:]), self.seed, stream=self.draws)
        return e.to(x.device, x.dtype)


def labels_for(start: int, stop: int, num_classes: int, class_label=None,
               seed: int = 0) -> torch.Tensor | None:
    """Class ids of samples [start, stop) (None if unconditional).

    `class_label`: None -> i % num_classes (balanced); an int -> that class; a list of ids -> ids[i % len];
    'random' -> uniform random classes, sample i's from (seed, i) alone (blocks of `NOISE_BLOCK`, a stream
    of their own), like the noise.
    """
    if num_classes == 0:
        if class_label is not None:
            raise UserError("this model is unconditional: --class / --classes cannot be used")
        return None
    if class_label is None:
        return torch.arange(start, stop, dtype=torch.long) % num_classes
    if isinstance(class_label, str):
        if class_label != "random":
            raise UserError(f"classes must be ids or 'random', got {class_label!r}")
        out = []
        for b in range(start // NOISE_BLOCK, math.ceil(stop / NOISE_BLOCK)):
            g = torch.Generator().manual_seed(_block_seed(seed, b, stream=0xC1A55))
            block = torch.randint(num_classes, (NOISE_BLOCK,), generator=g)
            out.append(block[max(start - b * NOISE_BLOCK, 0):min(stop - b * NOISE_BLOCK, NOISE_BLOCK)])
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
    ids = [int(class_label)] if isinstance(class_label, int) else [int(c) for c in class_label]
    bad = [c for c in ids if not 0 <= c < num_classes]
    if not ids or bad:
        raise UserError(f"class {bad[0] if bad else '(none)'} is outside [0, {num_classes - 1}]")
    return torch.tensor(ids, dtype=torch.long)[torch.arange(start, stop) % len(ids)]


def model_info(net: nn.Module) -> tuple[tuple[int, ...], int]:
    """(sample shape, num_classes) recorded on a network by `load_generator` or the training loop."""
    shape = getattr(net, "meanflow_shape", None)
    if shape is None:
        raise UserError("network has no recorded sample shape (load it with load_generator)")
    return tuple(shape), int(getattr(net, "meanflow_num_classes", 0))


def generation_kwargs(net: nn.Module, n: int, device: str | torch.device = "cpu") -> dict | None:
    """Extra network inputs for generating `n` samples: zero augmentation labels `[n, augment_dim]`
    for a network conditioned on them, else None."""
    dim = int(getattr(getattr(net, "module", net), "augment_dim", 0) or 0)
    return {"augment_labels": torch.zeros(n, dim, device=device)} if dim > 0 else None


def check_sample_options(method, options: dict | None) -> dict:
    """`options` (method-specific keywords of `method.sample`, e.g. iMF's `omega=4.0`,
    `interval=(0.3, 0.8)`) as a dict; a UserError naming the first one `method.sample` does not take."""
    options = dict(options or {})
    params = inspect.signature(method.sample).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    reserved = ("net", "noise", "y", "steps", "schedule", "net_kwargs", "generator")
    for key in options:
        if key in reserved or key not in params:
            raise UserError(f"method {type(method).__name__} takes no sampling option {key!r}")
    return options


@torch.no_grad()
def generate(method, net: nn.Module, start: int, stop: int, *, steps: int = 1, seed: int = 0,
             batch_size: int = 256, class_label=None, device: str | torch.device = "cpu",
             shape: tuple[int, ...] | None = None, num_classes: int | None = None,
             sample_options: dict | None = None, progress=None) -> torch.Tensor:
    """Samples [start, stop) as float32 [stop - start, *shape] on the CPU (images in [-1, 1]).

    Calls `method.sample(net, noise, y, steps=steps, generator=SampleNoise(...), **sample_options)`
    in batches of `batch_size`; sample i depends only on (seed, i), for stochastic samplers too. A
    network trained with augmentation labels (`augment_dim > 0`) gets zero labels: no augmentation,
    as in EDM. `sample_options` are method-specific keywords of `method.sample` (e.g. iMF's guidance
    `omega=4.0, interval=(0.3, 0.8)`); one the method does not take is a UserError. `class_label`: see
    `labels_for` (a class, a list of classes, 'random', or None for balanced classes). `steps` is at
    most `meanflow.limits.MAX_STEPS`. `progress`: a bar over the network evaluations (True / False,
    or None: only on a terminal, rank 0; or a `NetProgress` of the caller that spans several calls; see
    `meanflow.utils.progress`).
    """
    from meanflow.limits import check_steps
    from meanflow.utils.progress import NetProgress

    options = check_sample_options(method, sample_options)
    check_steps(steps, "steps")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if shape is None or num_classes is None:
        s, c = model_info(net)
        shape = s if shape is None else shape
        num_classes = c if num_classes is None else num_classes
    outs = []
    own = not isinstance(progress, NetProgress)
    batches = math.ceil(max(stop - start, 0) / batch_size)
    with (NetProgress(net, batches, progress=progress, steps=steps) if own
          else contextlib.nullcontext(progress)) as bar:
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            e = noise_for(lo, hi, shape, seed).to(device)
            y = labels_for(lo, hi, num_classes, class_label, seed)
            y = None if y is None else y.to(device)
            kw = generation_kwargs(net, hi - lo, device)
            extra = {} if kw is None else {"net_kwargs": kw}
            gen = SampleNoise(lo, hi, seed)
            x = method.sample(net, e, y, steps=steps, generator=gen, **extra, **options)
            outs.append(x.float().cpu())
            bar.batch_done()
    return torch.cat(outs) if outs else torch.empty((0, *shape))


def generate_uint8(method, net: nn.Module, n: int, steps: int = 1, seed: int = 0, batch_size: int = 256,
                   class_label=None, device: str | torch.device = "cpu",
                   rows: tuple[int, int] | None = None, sample_options: dict | None = None,
                   decode=None, progress: bool | None = None) -> np.ndarray:
    """`n` seeded samples quantised to uint8 [N, H, W, C] (see `generate`, `to_uint8`; `sample_options`
    as there). A latent model needs `decode`: latents [B, C, h, w] -> images [B, 3, H, W] in [-1, 1]
    (e.g. the VAE of `meanflow.latent.vae.decode_latents`), applied batch by batch.

    `rows=(start, stop)` returns only samples [start, stop) of the n (one rank's shard); sample i
    depends only on (seed, i), so the shards of all ranks concatenate to the full set. Samples of
    exploded weights are refused (`refuse_exploded`). `progress`: as for `generate`, one bar for all.
    """
    from meanflow.utils.progress import NetProgress

    start, stop = (0, n) if rows is None else rows
    shape, _ = model_info(net)
    if len(shape) != 3:
        raise UserError(f"uint8 images need an image model, this one generates shape {shape}")
    if getattr(net, "meanflow_is_latent", False) and decode is None:
        raise UserError("this model generates latents, not images: decode them with the VAE first")
    out = []
    batches = math.ceil(max(stop - start, 0) / batch_size)
    with NetProgress(net, batches, progress=progress, steps=steps) as bar:
        for lo in range(start, stop, batch_size) if decode is not None else [start]:
            hi = min(lo + batch_size, stop) if decode is not None else stop
            x = generate(method, net, lo, hi, steps=steps, seed=seed, batch_size=batch_size,
                         class_label=class_label, device=device, sample_options=sample_options, progress=bar)
            x = decode(x) if decode is not None else x
            refuse_exploded(x, images=True)
            out.append(to_uint8(x))
    return np.concatenate(out) if out else to_uint8(torch.empty(0, *shape))


def refuse_exploded(x: torch.Tensor, images: bool) -> None:
    """A UserError when generated samples `x` [N, ...] show that the weights, though finite, exploded:
    a sample holding NaN or infinite values; or (`images`, in [-1, 1]) every value of every sample
    outside [-1, 1], which quantises to saturated black / white images; or (other data) every value
    beyond 1e6 in magnitude."""
    if x.numel() == 0:
        return
    flat = x.detach().flatten(1).float()
    bad = int((~torch.isfinite(flat)).any(1).sum())
    hint = "the run diverged (e.g. training.lr too high); nothing was written"
    if bad:
        raise UserError(f"{bad} of {len(x)} samples hold NaN or infinite values although the weights are "
                        f"finite: {hint}")
    low = float(flat.abs().min())
    if low > (1.0 if images else 1e6):
        what = "pixel" if images else "value"
        raise UserError(f"every {what} of all {len(x)} samples is at least {low:.3g} in magnitude (outside "
                        f"the data range{' [-1, 1]: saturated black / white images' if images else ''}): "
                        f"{hint}")
