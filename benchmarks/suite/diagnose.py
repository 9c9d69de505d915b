"""Why k MeanFlow steps can lose to one: the error of u(z, r, t) on the intervals the samplers use.

Reference (2-D data only): the exact flow of the data distribution, represented by ``N_REF`` points
``x_i``. Under ``z_t = (1 - t) x + t e`` the marginal velocity is ``v*(z, t) = (z - x_hat(z, t)) / t``
with ``x_hat = sum_i w_i x_i``, ``w = softmax_i(-|z - (1 - t) x_i|^2 / (2 t^2))`` (the posterior mean of
x). Its flow ``Phi(z, t -> r)`` is integrated by RK45 (rtol = atol = 1e-5) down to ``t = EPS`` and
finished with ``x_hat(z, EPS)``. The reference average velocity of an interval is
``u*(z, r, t) = (z - Phi(z, t -> r)) / (t - r)``. No trained model enters the reference.

For each trained model and each interval ``(r, t)`` of the 1-, 2- and 4-step samplers (uniform grids),
on ``B`` points ``z_t`` of the true marginal (held-out x, fixed noise):

* ``u_rmse[r,t]``: ``sqrt(mean |u_theta(z_t, r, t) - u*(z_t, r, t)|^2)``;
* ``disp_rmse[r,t]``: the same times ``t - r``: the error one sampler step adds to the sample;
* ``coupling_rmse`` (``nfe = k``): ``sqrt(mean |x_k(e) - Phi(e, 1 -> 0)|^2)`` of the k-step sample
  against the reference flow's endpoint for the same noise (errors of all steps, compounded).

And for the (t, r) sampler of the run's settings (no model): ``coverage[r,t]``, the probability that
one training pair lands within ``NEAR`` of the interval in both times (Monte Carlo, 4M pairs).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.suite import records
from benchmarks.suite.jobs import expand
from benchmarks.suite.spec import Suite
from benchmarks.suite.train import latest_run, log

INTERVALS = {1: ((0.0, 1.0),), 2: ((0.5, 1.0), (0.0, 0.5)),
             4: ((0.75, 1.0), (0.5, 0.75), (0.25, 0.5), (0.0, 0.25))}
N_REF, B, EPS, NEAR = 4096, 1024, 1e-3, 0.05
ENTRIES = ("meanflow", "meanflow_ft")


def posterior_mean(z: torch.Tensor, t: float, ref: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """``x_hat(z, t) = E[x | z_t = z]`` [B, D] under the empirical data ``ref`` [N, D] (float64)."""
    out = []
    for i in range(0, len(z), chunk):
        zc = z[i:i + chunk]
        logits = -torch.cdist(zc, (1 - t) * ref).square() / (2 * t * t)
        out.append(torch.softmax(logits, dim=1) @ ref)
    return torch.cat(out)


def reference_flow(z: torch.Tensor, t: float, r: float, ref: torch.Tensor) -> torch.Tensor:
    """``Phi(z, t -> r)`` [B, D]: the exact flow of the empirical data `ref` (RK45, then x_hat at EPS)."""
    from meanflow.methods.solvers import solve_ode

    def v(state, s):
        s = float(s)
        return (state - posterior_mean(state, s, ref)) / s

    end = max(r, EPS)
    out, _ = solve_ode(v, z.double(), torch.tensor([t, end], dtype=torch.float64), method="rk45",
                       rtol=1e-5, atol=1e-5)
    return posterior_mean(out, EPS, ref) if r < EPS else out


def reference_set(dataset: str, cache: Path) -> dict:
    """Marginal points and reference average velocities of every interval, plus the reference endpoint
    of the noise; cached per data set (the reference does not depend on any model)."""
    path = cache / f"{dataset}-ref.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    from benchmarks.suite.toy_eval import heldout

    ref = heldout(dataset, N_REF, seed=7).double()
    x = heldout(dataset, B).double()
    e = torch.randn(B, x.shape[1], generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    out = {"x": x, "e": e, "endpoint": reference_flow(e, 1.0, 0.0, ref)}
    for ivs in INTERVALS.values():
        for r, t in ivs:
            z = (1 - t) * x + t * e
            out[f"u[{r:g},{t:g}]"] = (z - reference_flow(z, t, r, ref)) / (t - r)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


@torch.no_grad()
def model_errors(ckpt, refset: dict) -> list[dict]:
    """Partial records (nfe, metric, value) of one checkpoint against the reference set."""
    from meanflow.training.load import load_generator

    method, net, _ = load_generator(ckpt)
    x, e = refset["x"].float(), refset["e"].float()
    out = []
    for k, ivs in INTERVALS.items():
        for r, t in ivs:
            if k > 1 and (r, t) == (0.0, 1.0):
                continue
            z = (1 - t) * x + t * e
            tt = torch.full((len(z),), t)
            u = net(z, tt, tt - r, None).double()
            err = (u - refset[f"u[{r:g},{t:g}]"]).square().sum(1).mean().sqrt().item()
            out.append({"nfe": k, "metric": f"u_rmse[{r:g},{t:g}]", "value": err})
            out.append({"nfe": k, "metric": f"disp_rmse[{r:g},{t:g}]", "value": err * (t - r)})
        xk = method.sample(net, e, None, steps=k).double()
        out.append({"nfe": k, "metric": "coupling_rmse",
                    "value": (xk - refset["endpoint"]).square().sum(1).mean().sqrt().item()})
    return out


def coverage(method_kwargs: dict, draws: int = 4_000_000) -> list[dict]:
    """Partial records ``coverage[r,t]``: P(|r' - r| <= NEAR and |t' - t| <= NEAR) for the run's sampler."""
    from meanflow.methods.time_sampling import sample_t_r

    keys = ("ratio", "time_dist", "t_mean", "t_std", "r_mean", "r_std")
    kw = {k: method_kwargs[k] for k in keys if k in method_kwargs}
    tr, rr = sample_t_r(draws, pairing=method_kwargs.get("time_pairing", "sort"), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0), **kw)
    out = []
    for k, ivs in INTERVALS.items():
        for r, t in ivs:
            if k > 1 and (r, t) == (0.0, 1.0):
                continue
            p = ((rr - r).abs() <= NEAR) & ((tr - t).abs() <= NEAR)
            out.append({"nfe": k, "metric": f"coverage[{r:g},{t:g}]", "value": float(p.double().mean())})
    return out


def diagnose(suite: Suite, results: Path, cache: Path, out: Path, **select) -> int:
    """Diagnose every finished MeanFlow-family checkpoint of `suite` at its measured steps; returns the
    number of checkpoints measured. Records already in `results` are not redone."""
    from meanflow.training.checkpoint import Checkpoint, checkpoint_path

    have = {records.key_of(r) for r in records.load([results])}
    done = 0
    for job in expand(suite, out, **select):
        if job.entry not in ENTRIES or not job.trains:
            continue
        run = latest_run(Path(job.run_dir))
        if run is None:
            continue
        refset = reference_set(job.dataset, cache)
        variant = job.variant or None
        base = {"setup": suite.setup, "dataset": job.dataset, "method": job.entry, "variant": variant,
                "run_steps": suite.budget, "commit": records.git_commit(), "device": records.device_name(),
                "train_device": None, "date": time.strftime("%Y-%m-%d"), "suite": f"diagnose-{suite.name}"}
        cov_key = (suite.setup, job.dataset, job.entry, variant, suite.budget, 0, 0, 1, "coverage[0,1]")
        if cov_key not in have:
            kwargs = Checkpoint(run).config["method"].get("kwargs", {})
            records.append(results, [{**base, "train_steps": 0, "seed": 0, "wall_s": 0.0, **p}
                                     for p in coverage(kwargs)])
            have.add(cov_key)
        for point in job.points:
            ckpt = checkpoint_path(run, point)
            key = (suite.setup, job.dataset, job.entry, job.variant or None, suite.budget,
                   point + job.chain_offset, job.seed, 1, "coupling_rmse")
            if key in have or not ckpt.is_file():
                continue
            t0 = time.perf_counter()
            recs = model_errors(ckpt, refset)
            records.append(results, [{**base, "train_steps": point + job.chain_offset, "seed": job.seed,
                                      "wall_s": 0.0, "eval_s": round(time.perf_counter() - t0, 2), **p}
                                     for p in recs])
            done += 1
            log(f"diagnosed {job.id} @ {point}: coupling 1/2/4 steps "
                + "/".join(f"{p['value']:.3f}" for p in recs if p["metric"] == "coupling_rmse"))
    return done
