"""What consistency training (CT), improved CT (iCT) and consistency distillation (CD) share.

Consistency models (Song, Dhariwal, Chen, Sutskever 2023) work in the variance-exploding (EDM)
parametrisation ``x_sigma = x + sigma e``, sigma in [sigma_min, sigma_max] = [0.002, 80]. This project
runs time from t = 0 (data) to t = 1 (noise) on ``z_t = (1 - t) x + t e``. Dividing by ``1 - t``:

    x_sigma = z_t / (1 - t),   sigma = t / (1 - t),   t = sigma / (1 + sigma),   z_t = x_sigma / (1 + sigma),

so both describe the same noisy point, only scaled. The consistency function maps any ``x_sigma``
on a probability-flow trajectory to the trajectory's start; it is parametrised so that the boundary
condition ``f(x, sigma_min) = x`` holds exactly for any network F:

    f(x_sigma, sigma) = c_skip(sigma) x_sigma + c_out(sigma) F(c_in(sigma) x_sigma, t(sigma), h=0, y)
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out  = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)

(the scalings of the reference code openai/consistency_models, ``get_scalings_for_boundary_condition``).
The reference feeds its U-Net ``250 ln(sigma)`` as the noise input; here F is a network of this
project, which embeds a time in [0, 1], so it gets ``t(sigma) = sigma / (1 + sigma)`` (0.002 ... 0.988)
and ``h = 0``. ``sigma_data`` is the data's standard deviation (0.5 for images in [-1, 1]; ~1 for
the project's 2-D toys).

Noise levels come from the Karras et al. (2022) grid with rho = 7, written ascending as in the CM
paper: ``sigma_i = (sigma_min^(1/rho) + (i - 1)/(N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``,
i = 1..N (the reference code indexes the same grid from sigma_max down).

Distances ``d(a, b)`` are per sample, over all non-batch dims: ``"l2"`` = ``||a - b||_2^2`` (summed,
the paper's definition and this project's convention; the reference code's "l2" is the *mean* over
dims, i.e. this divided by the dimension d, which only rescales the loss), ``"l1"`` = ``||a - b||_1``
and ``"pseudo_huber"`` = ``sqrt(||a - b||_2^2 + c^2) - c`` (iCT, c = 0.00054 sqrt(d) unless given).
``"lpips"``, the papers' best metric on images, needs weights the user supplies (``lpips_weights``, see
:mod:`meanflow.evaluation.lpips`); both images are resized to 224 x 224 first, as in the CM code.

Sampling (CM paper, Algorithm 1): one step is ``x = f(sigma_max e, sigma_max)`` with ``e`` the
project's standard-normal noise at t = 1. k steps alternate denoising and re-noising,
``x <- f(x + sqrt(tau^2 - sigma_min^2) z, tau)`` with ``z`` fresh noise, at k - 1 decreasing levels tau:

* given a ``schedule`` (a strictly decreasing t grid from 1 to 0, length k + 1), tau_i = sigma(t_i) for
  the interior points, clipped to [sigma_min, sigma_max] as the reference clips them;
* otherwise for k = 2, tau = ``two_step_sigma`` = 0.821 (the CIFAR-10 two-step noise level used with
  iCT; it is the default of the ECT code, locuslab/ect, which follows iCT. The CM reference code picks
  its midpoints as indices of the training grid by ternary search, e.g. index 22 of 40, sigma ~ 1.38,
  for CD on ImageNet-64);
* for k >= 3, the interior points of the project's uniform t grid, tau_i = sigma(1 - i/k).

Samples are not clipped (the reference clamps images to [-1, 1]; this project's data is not always
bounded).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import (
    Method,
    NoiseSource,
    check_override,
    expand_like,
    fresh_noise,
    resolve_schedule,
)

METRICS = ("l2", "l1", "pseudo_huber", "lpips")
HUBER_C_PER_SQRT_DIM = 0.00054
"""iCT's pseudo-Huber constant per sqrt(dimension): c = 0.00054 sqrt(d) (0.03 on CIFAR-10, d = 3072)."""
_NO_LPIPS_WEIGHTS = ("metric 'lpips' needs lpips_weights: the path of a .safetensors (or weights-only .pth) "
                     "file with the LPIPS VGG16 convs and lin layers (see meanflow.evaluation.lpips)")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float, device=None) -> Tensor:
    """The Karras et al. noise grid, ascending: float64 ``[n]`` from ``sigma_min`` to ``sigma_max``.

    ``sigma_i = (sigma_min^(1/rho) + (i - 1)/(n - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``,
    i = 1..n; the endpoints are set exactly (so ``f(x, sigma_1) = x`` holds bit for bit).
    """
    if int(n) != n or n < 2:
        raise UserError(f"the noise grid needs n >= 2 points, got {n}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    frac = torch.linspace(0.0, 1.0, int(n), dtype=torch.float64, device=device)
    s = (lo + frac * (hi - lo)) ** rho
    s[0], s[-1] = sigma_min, sigma_max
    return s


def sigma_to_t(sigma: Tensor) -> Tensor:
    """Project time of a VE noise level: ``t = sigma / (1 + sigma)``."""
    return sigma / (1 + sigma)


def t_to_sigma(t: Tensor) -> Tensor:
    """VE noise level of a project time t < 1: ``sigma = t / (1 - t)``."""
    return t / (1 - t)


def scalings(sigma: Tensor, sigma_data: float, sigma_min: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in)`` of the boundary-condition parametrisation, each shaped like ``sigma``.

    ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)``,
    ``c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)`` with
    ``sd = sigma_data``; ``c_skip(sigma_min) = 1``, ``c_out(sigma_min) = 0`` exactly.
    """
    d = sigma - sigma_min
    c_skip = sigma_data**2 / (d**2 + sigma_data**2)
    root = (sigma**2 + sigma_data**2).sqrt()
    return c_skip, d * sigma_data / root, 1 / root


def consistency_fn(net: nn.Module, x_sigma: Tensor, sigma: Tensor, y: Tensor | None, sigma_data: float,
                   sigma_min: float, net_kwargs: dict | None = None) -> Tensor:
    """``f(x_sigma, sigma) = c_skip x_sigma + c_out F(c_in x_sigma, t(sigma), 0, y)``.

    Args:
        net: Network ``net(z, t, h, y)``.
        x_sigma: Noisy data ``x + sigma e``, ``[B, *S]``.
        sigma: Noise levels ``[B]`` (in ``x_sigma``'s dtype for an exact boundary condition).
        y: Class ids ``[B]`` or ``None``.
        sigma_data: Data standard deviation of the scalings.
        sigma_min: Smallest noise level, where ``f`` is the identity.
        net_kwargs: Extra keyword inputs passed unchanged to the network.

    Returns:
        ``[B, *S]``, the estimate of the trajectory's start (the data point).
    """
    c_skip, c_out, c_in = (expand_like(c, x_sigma) for c in scalings(sigma, sigma_data, sigma_min))
    t = sigma_to_t(sigma)
    out = net(c_in * x_sigma, t, torch.zeros_like(t), y, **(net_kwargs or {}))
    return c_skip * x_sigma + c_out * out


def distance(a: Tensor, b: Tensor, metric: str, huber_c: float | None = None,
             lpips_weights: str | os.PathLike | None = None, lpips_resize: int | None = 224) -> Tensor:
    """Per-sample distance ``[B, *S] x [B, *S] -> [B]`` (float32 or wider).

    ``"l2"``: ``||a - b||^2``; ``"l1"``: ``||a - b||_1``; ``"pseudo_huber"``: ``sqrt(||a - b||^2 + c^2) - c``
    with ``c = huber_c`` or, when ``None``, ``0.00054 sqrt(d)``, d the number of elements per sample;
    ``"lpips"``: LPIPS-VGG of images ``[B, 1 or 3, H, W]`` in [-1, 1] with the weights file
    ``lpips_weights`` (loaded once per device), after resizing both to ``lpips_resize`` squared
    (``None``: native size); see :mod:`meanflow.evaluation.lpips`.
    """
    if metric == "lpips":
        if lpips_weights is None:
            raise UserError(_NO_LPIPS_WEIGHTS)
        from meanflow.evaluation.lpips import lpips_distance  # imported on use, only by LPIPS runs

        return lpips_distance(a, b, lpips_weights, lpips_resize)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    diff = (a.to(dtype) - b.to(dtype)).flatten(1)
    if metric == "l2":
        return diff.square().sum(dim=1)
    if metric == "l1":
        return diff.abs().sum(dim=1)
    if metric == "pseudo_huber":
        c = huber_c if huber_c is not None else HUBER_C_PER_SQRT_DIM * math.sqrt(diff.shape[1])
        return (diff.square().sum(dim=1) + c**2).sqrt() - c
    raise UserError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The global RNG state that dropout on ``device`` draws from (CPU, plus CUDA on a GPU)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    """Restore a state from :func:`rng_state`, so a second forward pass draws the same dropout masks."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass
class ConsistencyModel(Method):
    """Hyper-parameters and the sampler shared by CT, iCT and CD (not a method on its own).

    Attributes:
        sigma_min: Smallest noise level (f is the identity there).
        sigma_max: Largest noise level (one-step sampling starts at ``sigma_max * e``).
        rho: Exponent of the Karras noise grid.
        sigma_data: Data standard deviation in the scalings c_skip, c_out, c_in.
        metric: Distance ``"l2"``, ``"l1"``, ``"pseudo_huber"`` or ``"lpips"`` (see :func:`distance`).
        huber_c: Pseudo-Huber constant c; ``None`` = ``0.00054 sqrt(d)`` with d the data dimension.
        lpips_weights: Path of the LPIPS-VGG weights file, required by (and only used with) ``metric
            "lpips"``. Read on the first loss, not here (a run can be rebuilt for sampling without it).
        lpips_resize: Side images are bilinearly resized to before LPIPS (224 as in the CM code; at
            least 16); ``None``: native size.
        two_step_sigma: Re-noising level of two-step sampling when no schedule is given.
        share_dropout_rng: Replay the RNG state of the online pass in the target pass, so that both
            draw the same dropout masks (the reference code does; iCT finds it stabilises training).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    metric: str = "l2"
    huber_c: float | None = None
    lpips_weights: str | None = None
    lpips_resize: int | None = 224
    two_step_sigma: float = 0.821
    share_dropout_rng: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise UserError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if not self.rho > 0:
            raise UserError(f"rho must be > 0, got {self.rho}")
        if not self.sigma_data > 0:
            raise UserError(f"sigma_data must be > 0, got {self.sigma_data}")
        if self.metric not in METRICS:
            raise UserError(f"unknown metric {self.metric!r}; choose from {', '.join(METRICS)}")
        if isinstance(self.lpips_weights, os.PathLike):
            self.lpips_weights = os.fspath(self.lpips_weights)
        weights = self.lpips_weights
        if weights is not None and not (isinstance(weights, str) and weights):
            raise UserError(f"lpips_weights must be a file path or null, got {self.lpips_weights!r}")
        if self.metric == "lpips" and self.lpips_weights is None:
            raise UserError(_NO_LPIPS_WEIGHTS)
        if self.metric != "lpips" and self.lpips_weights is not None:
            raise UserError(f"lpips_weights is set but metric is {self.metric!r}; set metric=lpips to use it")
        if self.lpips_resize is not None and (isinstance(self.lpips_resize, bool) or not isinstance(
                self.lpips_resize, int) or self.lpips_resize < 16):
            raise UserError(f"lpips_resize must be an integer >= 16 or null, got {self.lpips_resize!r}")
        if self.huber_c is not None and not self.huber_c > 0:
            raise UserError(f"huber_c must be > 0 (or null for 0.00054 sqrt(d)), got {self.huber_c}")
        if not self.sigma_min < self.two_step_sigma < self.sigma_max:
            raise UserError(f"two_step_sigma must be in (sigma_min, sigma_max), got {self.two_step_sigma}")
        if not isinstance(self.share_dropout_rng, bool):
            raise UserError(f"share_dropout_rng must be true or false, got {self.share_dropout_rng!r}")

    # ------------------------------------------------------------------ pieces

    def sigmas(self, n: int, device=None) -> Tensor:
        """The Karras grid of ``n`` levels, ascending, float64 (see :func:`karras_sigmas`)."""
        return karras_sigmas(n, self.sigma_min, self.sigma_max, self.rho, device=device)

    def denoise(self, net: nn.Module, x_sigma: Tensor, sigma: Tensor, y: Tensor | None = None,
                net_kwargs: dict | None = None) -> Tensor:
        """The consistency function ``f(x_sigma, sigma)`` with this method's scalings; ``sigma``: ``[B]``."""
        return consistency_fn(net, x_sigma, sigma.to(x_sigma.dtype), y, self.sigma_data, self.sigma_min,
                              net_kwargs)

    def pair(self, net: nn.Module, target: nn.Module, x_hi: Tensor, hi: Tensor, x_lo: Tensor, lo: Tensor,
             y: Tensor | None = None, net_kwargs: dict | None = None) -> tuple[Tensor, Tensor]:
        """The two sides of a consistency loss: ``f_net(x_hi, hi)`` (with gradient) and
        ``f_target(x_lo, lo)`` (without), ``[B, *S]`` each; ``hi``, ``lo``: ``[B]``. With
        ``share_dropout_rng`` the target pass replays the RNG state of the online pass (same dropout
        masks), as the reference code does."""
        state = rng_state(x_hi.device) if self.share_dropout_rng else None
        online = self.denoise(net, x_hi, hi, y, net_kwargs)
        if state is not None:
            set_rng_state(state, x_hi.device)
        with torch.no_grad():
            tgt = self.denoise(target, x_lo, lo, y, net_kwargs)
        return online, tgt

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """``d(a, b)`` per sample ``[B]`` with this method's metric."""
        return distance(a, b, self.metric, self.huber_c, self.lpips_weights, self.lpips_resize)

    def adjacent_sigmas(self, n_scales: int, b: int, device, t: Tensor | None = None,
                        r: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Uniformly drawn neighbours ``(sigma_{n+1}, sigma_n)`` of the N-level grid, each float64 ``[B]``.

        ``n`` is uniform on 1..N-1 (the reference's ``randint(0, N - 1)`` from the top of the grid).
        ``t`` and ``r`` (given together, ``r < t``) override the draw with the levels
        ``sigma(t)`` (noisier, the online network's) and ``sigma(r)`` (the target's).
        """
        if t is not None or r is not None:
            return self.override_sigmas(b, t, r, device)
        grid = self.sigmas(n_scales, device=device)
        n = torch.randint(0, n_scales - 1, (b,), device=device)
        return grid[n + 1], grid[n]

    def override_sigmas(self, b: int, t: Tensor | None, r: Tensor | None, device) -> tuple[Tensor, Tensor]:
        """Validated ``(sigma(t), sigma(r))``, float64 ``[B]``, from the ``t``/``r`` loss overrides."""
        check_override("t", t, (b,))
        check_override("r", r, (b,))
        if t is None or r is None:
            raise UserError("consistency models take t and r together (the two noise levels of a pair)")
        hi = t_to_sigma(t.to(device, torch.float64))
        lo = t_to_sigma(r.to(device, torch.float64))
        tol = 1e-6
        inside = (lo >= self.sigma_min * (1 - tol)) & (hi <= self.sigma_max * (1 + tol))
        if not bool(((lo < hi) & inside).all()):
            raise UserError("need t(sigma_min) <= r < t <= t(sigma_max) for every sample, "
                            f"i.e. times in [{self.sigma_min / (1 + self.sigma_min):.6g}, "
                            f"{self.sigma_max / (1 + self.sigma_max):.6g}]")
        return hi.clamp(self.sigma_min, self.sigma_max), lo.clamp(self.sigma_min, self.sigma_max)

    # ------------------------------------------------------------------ sampling

    def sampling_sigmas(self, steps: int, schedule: Tensor | None, device=None) -> Tensor:
        """Noise levels the k-step sampler denoises at: float64 ``[k]``, ``sigma_max`` first, then the
        k - 1 re-noising levels (see the module docstring for the defaults)."""
        if schedule is None and int(steps) == steps and steps == 2:
            mids = torch.tensor([self.two_step_sigma], dtype=torch.float64, device=device)
        else:
            grid = resolve_schedule(steps, schedule, device)
            mids = t_to_sigma(grid[1:-1]).clamp(self.sigma_min, self.sigma_max)
        top = torch.tensor([self.sigma_max], dtype=torch.float64, device=device)
        return torch.cat([top, mids])

    @torch.no_grad()
    def sample(
        self,
        net: nn.Module,
        noise: Tensor,
        y: Tensor | None = None,
        steps: int = 1,
        schedule: Tensor | None = None,
        *,
        net_kwargs: dict | None = None,
        generator: NoiseSource = None,
    ) -> Tensor:
        """One- or multistep consistency sampling (CM paper, Algorithm 1).

        ``x = f(sigma_max e, sigma_max)``; then for each re-noising level tau,
        ``x <- f(x + sqrt(tau^2 - sigma_min^2) z, tau)`` with ``z = fresh_noise(x, generator)``.

        Args:
            net: Network.
            noise: ``e`` at t = 1, ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            steps: Number of network evaluations k >= 1.
            schedule: Optional decreasing t grid ``[k + 1]`` from 1 to 0; its interior points give the
                re-noising levels ``sigma = t / (1 - t)``.
            net_kwargs: Extra keyword inputs passed unchanged to every network call.
            generator: Source of the re-noising draws (see :func:`~meanflow.methods.base.fresh_noise`).

        Returns:
            Samples ``[B, *S]``.
        """
        levels = self.sampling_sigmas(steps, schedule, noise.device).to(noise.dtype)
        b = noise.shape[0]
        x = self.denoise(net, self.sigma_max * noise, levels[0].expand(b), y, net_kwargs)
        for tau in levels[1:]:
            z = fresh_noise(x, generator)
            x_tau = x + (tau**2 - self.sigma_min**2).clamp_min(0).sqrt() * z
            x = self.denoise(net, x_tau, tau.expand(b), y, net_kwargs)
        return x
