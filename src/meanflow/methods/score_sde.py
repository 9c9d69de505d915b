"""Score SDE (Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, ICLR 2021): denoising score matching
on a VP, sub-VP or VE diffusion, sampled by predictor-corrector or the probability-flow ODE.

Conventions (converted from the reference code, yang-song/score_sde_pytorch):

* Time runs as in the reference and the rest of this project: t = 0 data, t = 1 noise, with
  ``p(z_t | x) = N(alpha(t) x, sigma(t)^2 I)`` from :mod:`meanflow.methods.paths`.
* **Parametrisation**: the network predicts the noise, ``eps_hat(z_t, t) = net(z_t, t, 0, y)``, and
  ``score(z, t) = -eps_hat(z, t) / sigma(t)`` (the reference's continuous VP / sub-VP models; its VE
  models output the score directly). The network gets the project's t in [0, 1] with ``h = 0``, not
  the reference's ``999 t`` (VP) or ``sigma(t)`` (VE) as its time input.
* **Loss** (reference weighting): ``mean_i sum_d (sigma score + e)^2 = mean_i ||eps_hat - e||^2`` with
  ``z_t = alpha x + sigma e``, ``t ~ U(eps, 1)``; with ``likelihood_weighting`` each sample's term is
  multiplied by ``g(t)^2 / sigma(t)^2`` (the maximum-likelihood weighting of Song et al. 2021b).
  Trap: the reference reduces over the dimensions with ``reduce_mean``, which is ``False`` (half the
  *sum*, ``0.5 * sum_d``) in its base config but ``True`` (the *mean*) in its VP / sub-VP CIFAR-10
  configs; the loss here is always the full sum over dimensions (as for every method of this
  project), i.e. 2 times the half-sum or D times the mean (measured). With Adam that changes little
  except the effect of gradient clipping.
* **Sampling** starts from ``prior_std * noise`` at t = 1 and stops at ``sample_eps``.
  ``"pc"``: ``steps`` predictor steps at ``t_i = linspace(1, sample_eps, steps)``, each preceded by
  ``corrector_steps`` Langevin steps (NFE = steps (1 + corrector_steps)); Euler-Maruyama uses
  ``dt = 1 / steps`` and the reverse-diffusion predictor the chain of ``steps`` levels, as the
  reference does with its N. ``"ode"``: the probability-flow ODE
  ``dz/dt = f(z, t) - g(t)^2 / 2 score(z, t)`` by RK45 (``steps`` ignored) or ``steps`` Euler / Heun
  steps. With ``denoise`` (the reference's ``noise_removal``) PC returns the noise-free mean of its
  last predictor step and the ODE sampler adds one noise-free reverse-diffusion step at ``sample_eps``
  on the reference's 1000-level chain. With predictor ``"none"`` (corrector only) PC returns the last
  noisy Langevin sample even with ``denoise``, as the reference does (its ``NonePredictor`` returns
  ``(x, x)``, so ``x_mean`` is the corrector's noisy output, not its mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import LossOutput, Method, NoiseSource, check_override, fresh_noise, per_sample_sq
from meanflow.methods.paths import SDE_PATHS, SDEPath, VEPath
from meanflow.methods.solvers import (
    ODE_METHODS,
    euler_maruyama_step,
    langevin_step,
    reverse_diffusion_step,
    solve_ode,
)

SAMPLERS = ("pc", "ode")
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")
CORRECTORS = ("langevin", "none")
HUTCHINSON = ("rademacher", "gaussian")
DENOISE_LEVELS = 1000
"""Levels of the chain the ODE sampler's final denoising step uses (the reference's N)."""


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise UserError(f"unknown {name} {value!r}; choose from {', '.join(options)}")


@dataclass
class ScoreSDE(Method):
    """Score SDE: noise-prediction score matching on a VP / sub-VP / VE SDE; PC or PF-ODE sampling.

    Attributes:
        sde: ``"vp"``, ``"subvp"`` or ``"ve"``.
        beta_min: ``beta(0)`` of VP / sub-VP.
        beta_max: ``beta(1)`` of VP / sub-VP.
        sigma_min: Smallest noise level of VE.
        sigma_max: Largest noise level of VE (its prior std).
        eps: Smallest training time (``t ~ U(eps, 1)``) and the start of the likelihood ODE.
        sample_eps: Time at which sampling stops; None: 1e-3 for VP / sub-VP, 1e-5 for VE.
        likelihood_weighting: Weight each sample's loss by ``g(t)^2 / sigma(t)^2``.
        sampler: ``"pc"`` (predictor-corrector) or ``"ode"`` (probability-flow ODE).
        predictor: ``"euler_maruyama"``, ``"reverse_diffusion"`` or ``"none"``; None: Euler-Maruyama
            for VP / sub-VP, reverse diffusion for VE (the reference's choices).
        corrector: ``"langevin"`` or ``"none"``; None: Langevin for VE, none for VP / sub-VP.
        snr: Signal-to-noise ratio setting the Langevin step size (from batch-averaged norms, as in
            the reference: see :func:`meanflow.methods.solvers.langevin_step`).
        corrector_steps: Langevin steps before each predictor step.
        ode_solver: ``"rk45"`` (adaptive, ``steps`` ignored), ``"euler"`` or ``"heun"`` (``steps`` steps).
        rtol: Relative tolerance of the RK45 sampler.
        atol: Absolute tolerance of the RK45 sampler.
        denoise: Remove the noise of the last step (the reference's ``noise_removal``; no effect with
            predictor ``"none"``, as in the reference).
    """

    sde: str = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    eps: float = 1e-5
    sample_eps: float | None = None
    likelihood_weighting: bool = False
    sampler: str = "pc"
    predictor: str | None = None
    corrector: str | None = None
    snr: float = 0.16
    corrector_steps: int = 1
    ode_solver: str = "rk45"
    rtol: float = 1e-5
    atol: float = 1e-5
    denoise: bool = True

    default_steps: ClassVar[int] = 1000
    """The reference's N = 1000 predictor steps (PC) or Euler / Heun steps (ODE; RK45 ignores it).
    Pass fewer steps (``--steps``) for quick previews: SDE samplers degrade gracefully but slowly."""

    grid_steps: ClassVar[int] = 100
    """Steps of the sample grids drawn during and at the end of training (unless
    ``logging.sample_steps``): 1000 steps over a grid and a 4096-point 2-D report took most of a short
    run's time."""

    def __post_init__(self) -> None:
        _choice("sde", self.sde, SDE_PATHS)
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("ode_solver", self.ode_solver, ODE_METHODS)
        if self.predictor is not None:
            _choice("predictor", self.predictor, PREDICTORS)
        if self.corrector is not None:
            _choice("corrector", self.corrector, CORRECTORS)
        if self.predictor_name == "none" and self.corrector_name == "none":
            raise UserError("predictor and corrector cannot both be 'none'")
        if not 0 < self.eps < 1:
            raise UserError(f"eps must be in (0, 1), got {self.eps}")
        if self.sample_eps is not None and not 0 < self.sample_eps < 1:
            raise UserError(f"sample_eps must be in (0, 1), got {self.sample_eps}")
        if not self.snr > 0:
            raise UserError(f"snr must be > 0, got {self.snr}")
        if not (isinstance(self.corrector_steps, int) and self.corrector_steps >= 1):
            raise UserError(f"corrector_steps must be an integer >= 1, got {self.corrector_steps!r}")
        if not (self.rtol > 0 and self.atol > 0):
            raise UserError(f"rtol and atol must be > 0, got {self.rtol}, {self.atol}")
        _ = self.path  # building the path validates the beta / sigma ranges

    @property
    def path(self) -> SDEPath:
        """The SDE path named by :attr:`sde` with this method's coefficients."""
        if self.sde == "ve":
            return VEPath(self.sigma_min, self.sigma_max)
        return SDE_PATHS[self.sde](self.beta_min, self.beta_max)

    @property
    def predictor_name(self) -> str:
        """The predictor in use (``predictor`` or the per-SDE default)."""
        return self.predictor or ("reverse_diffusion" if self.sde == "ve" else "euler_maruyama")

    @property
    def corrector_name(self) -> str:
        """The corrector in use (``corrector`` or the per-SDE default)."""
        return self.corrector or ("langevin" if self.sde == "ve" else "none")

    @property
    def final_eps(self) -> float:
        """Time at which sampling stops (``sample_eps`` or the per-SDE default)."""
        if self.sample_eps is not None:
            return float(self.sample_eps)
        return 1e-5 if self.sde == "ve" else 1e-3

    def loss(
        self,
        net: nn.Module,
        x: Tensor,
        y: Tensor | None = None,
        *,
        noise: Tensor | None = None,
        t: Tensor | None = None,
        r: Tensor | None = None,
        net_kwargs: dict | None = None,
    ) -> LossOutput:
        """``mean_i w_i ||net(z_t, t, 0, y) - e||^2`` with ``z_t = alpha(t) x + sigma(t) e``.

        ``w = 1``, or ``g(t)^2 / sigma(t)^2`` with :attr:`likelihood_weighting`.

        Args:
            net: Network ``net(z, t, h, y)`` predicting the noise.
            x: Data ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            noise: Optional fixed noise ``e`` ``[B, *S]``.
            t: Optional fixed times ``[B]`` (default ``U(eps, 1)``).
            r: Ignored except for validation (must equal ``t`` if given): one time only.
            net_kwargs: Extra keyword inputs passed unchanged to the network call.

        Returns:
            :class:`LossOutput` with metrics ``loss`` and ``mse`` (the unweighted loss).
        """
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        check_override("t", t, (b,))
        check_override("r", r, (b,))
        if r is not None and t is not None and not torch.equal(r, t):
            raise UserError("score SDE has a single time: r must equal t (or be omitted)")
        if t is None and r is not None:
            t = r
        if t is None:  # U(eps, 1), as in the reference
            t = self.eps + (1 - self.eps) * torch.rand(b, device=x.device, dtype=x.dtype)
        t = t.to(x.device, x.dtype)
        e = torch.randn_like(x) if noise is None else noise.to(x.device, x.dtype)
        path = self.path
        pred = net(path.perturb(x, e, t), t, torch.zeros_like(t), y, **(net_kwargs or {}))
        err = per_sample_sq(pred.float() - e.float())
        mse = err.mean()
        if self.likelihood_weighting:
            loss = (err * (path.diffusion(t) / path.sigma(t)).float().square()).mean()
        else:
            loss = mse
        return LossOutput(loss=loss, metrics={"loss": loss.detach(), "mse": mse.detach()})

    def eps_hat(self, net: nn.Module, z: Tensor, t: Tensor, y: Tensor | None = None,
                net_kwargs: dict | None = None) -> Tensor:
        """Predicted noise ``net(z, t, 0, y)`` ``[B, *S]`` for a scalar time ``t`` (0-dim tensor)."""
        tb = t.to(z.dtype).expand(z.shape[0])
        return net(z, tb, torch.zeros_like(tb), y, **(net_kwargs or {})).to(z.dtype)

    def score(self, net: nn.Module, z: Tensor, t: Tensor, y: Tensor | None = None,
              net_kwargs: dict | None = None) -> Tensor:
        """``grad_z log p_t(z) = -eps_hat(z, t) / sigma(t)``, ``[B, *S]`` (t a 0-dim tensor)."""
        return -self.eps_hat(net, z, t, y, net_kwargs) / self.path.sigma(t.to(z.dtype))

    def velocity(self, net: nn.Module, z: Tensor, t: Tensor, y: Tensor | None = None,
                 net_kwargs: dict | None = None) -> Tensor:
        """Probability-flow ODE ``dz/dt = f(t) z - g(t)^2 / 2 score = f(t) z + g^2 eps_hat / (2 sigma)``.

        Args:
            net: Network.
            z: State ``[B, *S]``.
            t: 0-dim time tensor.
            y: Class ids ``[B]`` or ``None``.
            net_kwargs: Extra keyword inputs passed to the network.

        Returns:
            ``dz/dt`` ``[B, *S]``.
        """
        path, tz = self.path, t.to(z.dtype)
        coef = path.diffusion(tz) ** 2 / (2 * path.sigma(tz))
        return path.drift(z, tz) + coef * self.eps_hat(net, z, tz, y, net_kwargs)

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
        """Map standard normal ``noise`` ``[B, *S]`` to samples ``[B, *S]`` (see :meth:`sample_with_nfe`).

        ``schedule`` is not supported (the samplers use their own grid from 1 to ``sample_eps``).
        """
        if schedule is not None:
            raise UserError("score SDE samples on its own grid from 1 to sample_eps: give steps, no schedule")
        return self.sample_with_nfe(net, noise, y, steps, net_kwargs=net_kwargs, generator=generator)[0]

    @torch.no_grad()
    def sample_with_nfe(
        self,
        net: nn.Module,
        noise: Tensor,
        y: Tensor | None = None,
        steps: int = 1,
        *,
        net_kwargs: dict | None = None,
        generator: NoiseSource = None,
    ) -> tuple[Tensor, int]:
        """Samples and the number of network evaluations spent on them.

        Args:
            net: Network.
            noise: Standard normal ``[B, *S]``; the sampler starts from ``prior_std * noise`` at t = 1.
            y: Class ids ``[B]`` or ``None``.
            steps: Predictor steps (``"pc"``) or Euler / Heun steps (``"ode"``); ignored by RK45. The
                VP / sub-VP discrete chains (reverse-diffusion predictor on VP, Langevin on both) need
                ``steps > beta_max``.
            net_kwargs: Extra keyword inputs passed unchanged to every network call.
            generator: Source of the PC sampler's fresh noise (see ``base.fresh_noise``).

        Returns:
            ``(samples [B, *S], NFE)``.
        """
        if int(steps) != steps or steps < 1:
            raise UserError(f"steps must be an integer >= 1, got {steps!r}")
        steps = int(steps)
        z = noise * self.path.prior_std
        if self.sampler == "pc":
            return self._pc(net, z, y, steps, net_kwargs, generator)
        return self._ode(net, z, y, steps, net_kwargs)

    def _pc(self, net, z, y, n, net_kwargs, generator) -> tuple[Tensor, int]:
        path, nfe = self.path, 0
        grid = torch.linspace(1.0, self.final_eps, n, dtype=torch.float64, device=z.device).to(z.dtype)
        z_mean = z
        for t in grid:
            if self.corrector_name == "langevin":
                for _ in range(self.corrector_steps):
                    s = self.score(net, z, t, y, net_kwargs)
                    z, z_mean = langevin_step(z, s, self.snr, path.langevin_alpha(t, n), generator)
                    nfe += 1
            if self.predictor_name == "none":  # the reference's NonePredictor returns (x, x): the
                z_mean = z                      # last noisy sample, whatever `denoise` says
                continue
            s = self.score(net, z, t, y, net_kwargs)
            nfe += 1
            if self.predictor_name == "euler_maruyama":
                g = path.diffusion(t)
                z, z_mean = euler_maruyama_step(z, path.drift(z, t) - g**2 * s, g, -1.0 / n, generator)
            else:
                f, g = path.discretize(z, t, n)
                z, z_mean = reverse_diffusion_step(z, f, g, s, generator)
        return (z_mean if self.denoise else z), nfe

    def _ode(self, net, z, y, n, net_kwargs) -> tuple[Tensor, int]:
        end = self.final_eps
        if self.ode_solver == "rk45":
            times = torch.tensor([1.0, end], dtype=torch.float64)
        else:
            times = torch.linspace(1.0, end, n + 1, dtype=torch.float64)
        times = times.to(z.device, z.dtype)
        z, nfe = solve_ode(lambda zz, t: self.velocity(net, zz, t, y, net_kwargs), z, times,
                           method=self.ode_solver, rtol=self.rtol, atol=self.atol)
        if self.denoise:  # the mean of one reverse-diffusion step at sample_eps
            t = times[-1]
            f, g = self.path.discretize(z, t, DENOISE_LEVELS)
            z = z - f + g**2 * self.score(net, z, t, y, net_kwargs)
            nfe += 1
        return z, nfe

    def bits_per_dim(
        self,
        net: nn.Module,
        x: Tensor,
        y: Tensor | None = None,
        *,
        generator: NoiseSource = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        hutchinson: str = "rademacher",
        dequant_offset: float = 0.0,
        net_kwargs: dict | None = None,
    ) -> Tensor:
        """Negative log-likelihood of ``x`` in bits per dimension through the probability-flow ODE.

        The ODE is solved with RK45 from t = ``eps`` (``z = x``) to t = 1 together with
        ``d/dt delta = div v(z, t)``, the divergence estimated by Hutchinson's
        ``n^T (dv/dz) n`` with one probe ``n`` per sample drawn once for the whole solve (Rademacher
        or Gaussian, from ``generator``). Then ``log p(x) = log N(z_1; 0, prior_std^2 I) + delta_1``
        and ``bits/dim = -log p(x) / (D ln 2) + dequant_offset``.

        For 8-bit images scaled to [-1, 1] and uniformly dequantised (``x = (2 (k + u) / 256) - 1``,
        ``u ~ U(0, 1)``; the caller adds ``u``), the bits/dim of the discrete data is bounded with
        ``dequant_offset = 7`` (= log2(256 / 2), the reference's offset); use 8 for data in [0, 1].
        The divergence needs autograd through the network: it works under ``torch.no_grad`` but not
        under ``torch.inference_mode``.

        Args:
            net: Network.
            x: Points ``[B, *S]`` (probes and ODE in ``x``'s dtype).
            y: Class ids ``[B]`` or ``None``.
            generator: Source of the Hutchinson probes.
            rtol: RK45 relative tolerance.
            atol: RK45 absolute tolerance.
            hutchinson: ``"rademacher"`` (the reference's default) or ``"gaussian"``.
            dequant_offset: Added to the result (see above).
            net_kwargs: Extra keyword inputs passed to every network call.

        Returns:
            Bits per dimension ``[B]``.
        """
        _choice("hutchinson", hutchinson, HUTCHINSON)
        b, d = x.shape[0], x[0].numel()
        probe = fresh_noise(x, generator)
        if hutchinson == "rademacher":
            probe = torch.where(probe >= 0, 1.0, -1.0).to(x.dtype)

        def augmented(state: Tensor, t: Tensor) -> Tensor:
            with torch.enable_grad():
                z = state[:, :d].reshape(x.shape).detach().requires_grad_(True)
                v = self.velocity(net, z, t, y, net_kwargs)
                (jvp_probe,) = torch.autograd.grad((v * probe).sum(), z)
            div = (jvp_probe * probe).flatten(1).sum(1)
            return torch.cat([v.detach().flatten(1), div[:, None].to(state.dtype)], dim=1)

        start = torch.cat([x.detach().flatten(1), x.new_zeros(b, 1)], dim=1)
        times = torch.tensor([self.eps, 1.0], dtype=torch.float64)
        end, _ = solve_ode(augmented, start, times, method="rk45", rtol=rtol, atol=atol)
        logp = self.path.prior_logp(end[:, :d].reshape(x.shape)) + end[:, d]
        return -logp / (d * math.log(2)) + dequant_offset
