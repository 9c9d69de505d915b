"""Measured quality: MeanFlow against its peers, same network, data, batch and optimizer steps.

Every method of `RUNS` (MeanFlow, flow matching, consistency training CT and iCT, consistency
distillation CD from the flow-matching run, shortcut models) is trained from scratch on the same preset
(network, data, batch, optimizer, learning rate, EMA, number of optimizer steps) and sampled at 1 and 2
steps plus its own multistep count. A method is added by adding a `Run`, not a branch. Two parts, each
written into its own section of ``docs/results.md`` (everything outside the section markers is kept):

* ``toy``: the 2-D checkerboard and 8 gaussians (preset ``toy-2d``: MLP 256x4, batch 512). Sliced
  Wasserstein-2 and energy distance between generated samples and held-out points (the dataset's
  ``test`` draw), with a noise floor (a second fresh draw of data against the same held-out points).
* ``mnist``: the ``mnist`` preset (class-conditional small U-Net, batch 64) trained on the 60,000
  training images only, for a number of optimizer steps given by ``--steps`` or chosen from
  ``--minutes`` of MeanFlow training (a short timing of MeanFlow steps; every method gets the same
  number of steps). FID and KID of ``--num-samples`` generated images (uint8, FID Inception-v3 pool3)
  against the statistics of the MNIST test set (computed once and cached), with a 100-image grid per row.

A method with a teacher (CD) is trained after its teacher's run (the flow-matching run of the same
table); the teacher's own training is listed in the training table and is not counted in the
student's steps.

Everything is cached under ``--out`` (default ``runs/quality``) and an interrupted invocation resumes:
finished training runs are reused, unfinished ones continue from their last checkpoint, the
reference features are written in chunks, and each evaluated row is stored as JSON.

Usage::

    python benchmarks/quality.py --part toy                    # 2-D table (~1.5 h on 2 cores)
    python benchmarks/quality.py --part toy --methods meanflow,shortcut    # a subset of RUNS
    python benchmarks/quality.py --part mnist --ref-only       # MNIST test-set statistics (~30 min)
    python benchmarks/quality.py --part mnist --minutes 30     # train all, evaluate (hours on 2 cores)
    python benchmarks/quality.py --part mnist --eval-only RUN_DIR [RUN_DIR ...]   # re-evaluate runs
    # tiny end-to-end check of the MNIST plumbing (a few minutes):
    python benchmarks/quality.py --part mnist --steps 100 --num-samples 200 --ref-images 500 \\
        --out /tmp/quality-tiny --results /tmp/quality-tiny/results.md --grid-dir /tmp/quality-tiny/grids
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
_BESIDE = REPO.parent / "shared" / "data"  # CI and sessions check out the repo next to shared/
SHARED = _BESIDE if _BESIDE.is_dir() else Path("/work/shared/data")
SHARED_MNIST = SHARED / "mnist"
SHARED_INCEPTION = SHARED / "inception" / "pt_inception-2015-12-05-pool3only-fcNaN.pth"
REF_CHUNK = 500  # reference images per cached feature chunk


@dataclass(frozen=True)
class Run:
    """One method of the tables: trained on the part's preset with `overrides`, sampled at the steps
    of the part.

    Attributes:
        name: key of the run: its folder, its rows, `--methods`.
        method: registry name of the method (`meanflow train --method NAME`).
        label: name in the tables.
        toy_steps: sampling steps of the 2-D rows.
        mnist_steps: sampling steps of the MNIST rows.
        overrides: extra `--set` overrides of this run (its method kwargs), both parts.
        toy_overrides: extra `--set` overrides of the 2-D runs only.
        teacher: name of the run whose finished weights (first EMA) are this run's teacher.
        init_from: name of the run whose finished weights start this run (`training.init_from`).
        pairs_from: name of the run whose model writes the (noise, sample) pairs this run trains on
            (`meanflow reflow-pairs`, cached per source run).
        share: this run's optimizer steps as a fraction of the table's budget; a chain of stages
            (`init_from` / `pairs_from` / `teacher`) is stated with its total.
        row: False for a stage that only feeds other runs (listed in the training table, no rows).
        trained_as: rows sampled from the training of another run (no training of its own), e.g. the
            same Score SDE model sampled with the probability-flow ODE.
        sample_kwargs: method options replaced at sampling time, as (name, value) pairs.
    """

    name: str
    method: str
    label: str
    toy_steps: tuple[int, ...]
    mnist_steps: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    toy_overrides: tuple[str, ...] = ()
    teacher: str | None = None
    init_from: str | None = None
    pairs_from: str | None = None
    share: float = 1.0
    row: bool = True
    trained_as: str | None = None
    sample_kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def upstream(self) -> tuple[str, ...]:
        """Runs that must be finished before this one starts (or whose training it reuses)."""
        names = (self.teacher, self.init_from, self.pairs_from, self.trained_as)
        return tuple(dict.fromkeys(n for n in names if n is not None))


# Flow matching gets MeanFlow's time sampler of the two presets (logit-normal(-0.4, 1)), so that the
# two differ only in the objective; the other methods keep their papers' own noise-level samplers.
# Consistency models: sigma_data is the data's standard deviation (EDM's definition): 0.5 for images
# in [-1, 1] (the papers' value), 1.0 for the 2-D toys (std 1.0). Two published settings are tuned for
# runs ~100x longer than these and fail at this budget (measured in the learning tests, 1,500-2,500
# steps): CT's curriculum s1 = 150 (1-step sliced W2 0.92 vs 0.23 with s1 = 20) and the shortcut
# model's target EMA 0.999 (0.16-0.18 vs 0.09 with 0.99); the rows use the short-run values, stated
# in the training table. `--set`-style overrides of a run are its `overrides`.
_TOY_CM = ("method.kwargs.sigma_data=1.0",)
RUNS: tuple[Run, ...] = (
    Run("meanflow", "meanflow", "MeanFlow", (1, 2), (1, 2)),
    Run("flow_matching", "flow_matching", "flow matching (Euler)", (1, 2, 10, 100), (1, 2, 10, 50),
        overrides=("method.kwargs.t_mean=-0.4",)),
    Run("ct", "ct", "consistency training (CT)", (1, 2), (1, 2), overrides=("method.kwargs.s1=20",),
        toy_overrides=_TOY_CM),
    Run("ict", "ict", "improved CT (iCT)", (1, 2), (1, 2), toy_overrides=_TOY_CM),
    Run("cd", "cd", "consistency distillation (CD, Heun)", (1, 2), (1, 2), toy_overrides=_TOY_CM,
        teacher="flow_matching"),
    Run("shortcut", "shortcut", "shortcut model", (1, 2, 4, 128), (1, 2, 128),
        overrides=("method.kwargs.target_ema=0.99",)),
    # Improved MeanFlow (its official code's defaults); on MNIST also sampled with guidance w = 2 over the
    # whole interval (chosen at sampling time: the same training).
    Run("imf", "imf", "improved MeanFlow (iMF)", (1, 2), (1, 2)),
    Run("imf_cfg", "imf", "iMF, guidance w = 2 at sampling", (), (1, 2), trained_as="imf",
        sample_kwargs=(("sample_omega", 2.0),)),
    # Score SDE (VP, the reference's settings): one training, three samplers.
    Run("score_sde", "score_sde", "Score SDE (VP), Euler-Maruyama", (10, 100, 1000), (100, 1000),
        overrides=("logging.sample_steps=100",)),  # the grids drawn during training: 100, not 1000 NFE
    Run("score_sde_ode", "score_sde", "Score SDE (VP), PF-ODE Heun", (5, 25, 100), (25, 100),
        trained_as="score_sde", sample_kwargs=(("sampler", "ode"), ("ode_solver", "heun"))),
    Run("score_sde_rk45", "score_sde", "Score SDE (VP), PF-ODE RK45 (tol 1e-5)", (1,), (1,),
        trained_as="score_sde", sample_kwargs=(("sampler", "ode"), ("ode_solver", "rk45"))),
    # Rectified flow (Liu et al.): 1-RF = flow matching with uniform t for half the budget; 2-RF = reflow
    # on its pairs for the other half; distillation = 1-RF (1/2) -> 2-RF (1/4) -> one-step map (1/4).
    Run("rf1", "flow_matching", "1-rectified flow (stage)", (1, 2, 10, 100), (1, 2, 10, 50),
        overrides=("method.kwargs.time_dist=uniform",), share=0.5, row=False),
    Run("reflow", "reflow", "2-rectified flow (reflow)", (1, 2, 10, 100), (1, 2, 10, 50),
        init_from="rf1", pairs_from="rf1", share=0.5),
    Run("reflow_half", "reflow", "2-rectified flow (stage)", (1,), (1,), init_from="rf1", pairs_from="rf1",
        share=0.25, row=False),
    Run("distill", "distill", "2-RF + one-step distillation", (1,), (1,), init_from="reflow_half",
        pairs_from="reflow_half", share=0.25),
    # MeanFlow fine-tuned from the 1-RF stage (a flow-matching model, h = 0) for the other half.
    Run("meanflow_ft", "meanflow", "MeanFlow from flow matching (1/2 + 1/2)", (1, 2), (1, 2), init_from="rf1",
        share=0.5),
)
LABEL = {r.name: r.label for r in RUNS}


def select_runs(names: str | None) -> list[Run]:
    """The runs named in `--methods` (comma-separated; default all) with their upstream runs, in the
    order of `RUNS`."""
    by_name = {r.name: r for r in RUNS}
    wanted = list(by_name) if not names else [s.strip() for s in names.split(",") if s.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    todo = list(wanted)
    while todo:  # upstream runs (teacher, first stage, pairs source, shared training) are added
        for u in by_name[todo.pop()].upstream:
            if u not in wanted:
                wanted.append(u)
                todo.append(u)
    return [by_name[n] for n in by_name if n in wanted]


def with_steps(runs: list[Run], specs: list[str], part: str) -> list[Run]:
    """Apply `--sample-steps NAME=1,2,4` overrides to the sampling steps of `part`."""
    field = f"{part}_steps"
    out = {r.name: r for r in runs}
    for spec in specs:
        name, _, steps = spec.partition("=")
        if name not in out or not steps:
            raise SystemExit(f"--sample-steps expects NAME=LIST with NAME one of {', '.join(out)}, "
                             f"got {spec!r}")
        out[name] = dataclasses.replace(out[name], **{field: tuple(int_list(steps))})
    return list(out.values())


# ---------------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (src/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores visible{gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def fmt_s(sec: float | None) -> str:
    if sec is None:
        return "-"
    return f"{sec:.0f} s" if sec < 120 else f"{sec / 60:.1f} min"


def command_line() -> str:
    return "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def update_section(results: Path, part: str, body: str) -> None:
    """Replace the text between the markers of `part` in `results` (appended when missing)."""
    begin, end = f"<!-- quality:{part}:begin -->", f"<!-- quality:{part}:end -->"
    text = results.read_text() if results.is_file() else (
        "# Measured quality\n\nWritten by `benchmarks/quality.py`; text between the `quality:*` "
        "markers is regenerated, everything else is kept.\n\n")
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_name(f".{results.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, results)


# ---------------------------------------------------------------------------------------------------
# training (one run per method; finished runs are reused, unfinished ones resumed)


def latest_run(parent: Path) -> Path | None:
    """Newest numbered run folder under `parent` that has a checkpoint."""
    from meanflow.training.checkpoint import list_checkpoints

    if not parent.is_dir():
        return None
    runs = sorted(p for p in parent.iterdir() if p.is_dir() and re.match(r"^\d{5,}-", p.name))
    runs = [p for p in runs if list_checkpoints(p)]
    return runs[-1] if runs else None


def train_one(preset: str, overrides: list[str], parent: str, threads: int, progress: bool) -> dict:
    """Train (or resume, or reuse) one run; returns {run_dir, steps, train_wall_s, reused}.

    Runs in a worker process when training in parallel, so it imports what it needs itself.
    """
    from meanflow.training.checkpoint import Checkpoint
    from meanflow.training.loop import train
    from meanflow.training.presets import resolve_config

    torch.set_num_threads(threads)
    parent_p = Path(parent)
    cfg = resolve_config(preset, overrides=[*overrides, f"logging.out_dir={parent}",
                                            f"logging.progress={'true' if progress else 'false'}",
                                            f"training.num_threads={threads}", "logging.tensorboard=false"])
    total = cfg.training.steps
    run = latest_run(parent_p)
    record_path = None if run is None else run / "quality_train.json"
    record = (read_json(record_path) if record_path else None) or {"segments": []}
    if run is not None and Checkpoint(run).step >= total:
        log(f"reusing finished run {run}")
        return {"run_dir": str(run), "steps": total, "train_wall_s": sum(record["segments"]), "reused": True}
    if run is not None:
        log(f"resuming {run} from step {Checkpoint(run).step}")
    t0 = time.perf_counter()
    run = train(cfg, resume=run, echo=log)
    record["segments"].append(time.perf_counter() - t0)
    record["device"] = device_name(cfg.training.device)
    if Checkpoint(run).step < total:
        write_json(run / "quality_train.json", record)
        raise SystemExit(f"training of {run} stopped early; run the same command again to resume")
    record["steps"] = total
    write_json(run / "quality_train.json", record)
    return {"run_dir": str(run), "steps": total, "train_wall_s": sum(record["segments"]), "reused": False}


def train_runs(preset: str, base: list[str], out: Path, runs: list[Run], jobs: int, threads: int,
               part: str, budget: int, pairs: dict) -> dict[str, dict]:
    """Train every run of `runs` on the same config (`jobs` at a time), each for `share x budget` steps.

    A run starts once its upstream runs are finished: it gets `training.teacher=` / `training.init_from=`
    their folders, and trains on the pairs written by its `pairs_from` run's model (`make_pairs`, with
    the options in `pairs`). A `trained_as` run reuses another run's training.
    """
    done: dict[str, dict] = {}
    pending = [r for r in runs if r.trained_as is None]
    while pending:
        wave = [r for r in pending if all(u in done for u in r.upstream)]
        if not wave:
            raise SystemExit(f"upstream run(s) missing for {', '.join(r.name for r in pending)}")
        specs = {}
        for r in wave:
            extra = [f"training.steps={steps_of(r, budget)}", *(r.toy_overrides if part == "toy" else ())]
            if r.teacher is not None:
                extra.append(f"training.teacher={done[r.teacher]['run_dir']}")
            if r.init_from is not None:
                extra.append(f"training.init_from={done[r.init_from]['run_dir']}")
            if r.pairs_from is not None and not finished(out / r.name, steps_of(r, budget)):
                source = Path(done[r.pairs_from]["run_dir"])
                folder = make_pairs(source, out / "pairs" / r.pairs_from, **pairs)
                extra += pairs_overrides(folder)
            specs[r.name] = (preset, [*base, f"method.name={r.method}", *r.overrides, *extra],
                             str(out / r.name), threads, jobs == 1)
        if jobs == 1:
            done.update({n: train_one(*s) for n, s in specs.items()})
        else:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                futures = {n: pool.submit(train_one, *s) for n, s in specs.items()}
                done.update({n: f.result() for n, f in futures.items()})
        pending = [r for r in pending if r.name not in done]
    by_name = {r.name: r for r in runs}
    for r in runs:
        if r.trained_as is not None:
            done[r.name] = {**done[r.trained_as], "reused": True}
        done[r.name]["upstream"] = [u for u in r.upstream if u != r.trained_as]
        done[r.name]["total_steps"] = chain_steps(r.trained_as or r.name, by_name, budget)
    for r in runs:
        if r.teacher is not None:
            done[r.name]["teacher"] = r.teacher
    return done


def finished(parent: Path, steps: int) -> bool:
    """Whether the newest run under `parent` has trained `steps` steps (it needs no inputs any more,
    e.g. pairs: a run trained elsewhere and copied into the cache is reused as it is)."""
    from meanflow.training.checkpoint import Checkpoint

    run = latest_run(parent)
    return run is not None and Checkpoint(run).step >= steps


def steps_of(run: Run, budget: int) -> int:
    """Optimizer steps of one run: its share of the table's budget."""
    return max(1, round(run.share * budget))


def chain_steps(name: str, by_name: dict[str, Run], budget: int) -> int:
    """Optimizer steps of a run plus those of every run upstream of it (each counted once)."""
    seen, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += [u for u in by_name[n].upstream]
    return sum(steps_of(by_name[n], budget) for n in seen if by_name[n].trained_as is None)


def make_pairs(run_dir: Path, folder: Path, n: int, seed: int, solver: str, threads: int, batch: int,
               device: str = "cpu") -> Path:
    """(noise, sample) pairs of the finished run `run_dir` (`meanflow reflow-pairs`; resumes)."""
    cmd = [sys.executable, "-m", "meanflow.cli", "reflow-pairs", str(run_dir), "-n", str(n), "--out",
           str(folder), "--seed", str(seed), "--solver", solver, "--batch-size", str(batch),
           "--device", device]
    log("pairs: " + " ".join(shlex.quote(c) for c in cmd[1:]))
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"reflow-pairs failed: {(res.stderr or res.stdout).strip()[-2000:]}")
    info = read_json(folder / "pairs_time.json") or {}
    if "wall_s" not in info:
        write_json(folder / "pairs_time.json", {"wall_s": time.perf_counter() - t0, "n": n, "solver": solver})
    return folder


def pairs_overrides(folder: Path) -> list[str]:
    """Config overrides that make a run train on the pairs in `folder`."""
    return ["data.name=pairs", f"data.data_dir={folder}"]


def run_info(run_dir: Path) -> dict:
    """Steps, training wall time and seconds per step (from the run's log) of a finished run."""
    from meanflow.training.checkpoint import Checkpoint

    rec = read_json(run_dir / "quality_train.json") or {}
    per_step = []
    log_path = run_dir / "log.jsonl"
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            r = json.loads(line)
            if "sec_per_step" in r:
                per_step.append(r["sec_per_step"])
    wall = sum(rec["segments"]) if rec.get("segments") else None
    return {"steps": Checkpoint(run_dir).step, "train_wall_s": wall,
            "sec_per_step": float(np.median(per_step)) if per_step else None}


def training_record(r: Run, trained: dict) -> dict:
    """One line of the training table: the run, its settings, its stage chain, its cost and where it
    trained."""
    run = Path(trained["run_dir"])
    device = (read_json(run / "quality_train.json") or {}).get("device") or "cpu"
    return {"method": r.name, "run_dir": str(run), "teacher": trained.get("teacher"),
            "upstream": trained.get("upstream", []), "total_steps": trained.get("total_steps"),
            "settings": method_settings(run), "device": device, **run_info(run)}


def device_name(device: str) -> str:
    """'cpu', or the GPU's name where training runs on CUDA."""
    if device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name(0)


class CountCalls(torch.nn.Module):
    """Wraps a network and counts its forward calls (the NFE of a sampler, per batch)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)

    def __getattr__(self, name: str):
        # What the samplers read off a network (meanflow_shape, augment_dim, ...) comes from the wrapped one.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.net, name)


def adaptive(r: Run) -> bool:
    """Whether the run's sampler picks its own steps (the NFE is then the measured figure)."""
    return dict(r.sample_kwargs).get("ode_solver") == "rk45"


def section_suffix(args) -> str:
    return f"-{args.section}" if args.section else ""


def method_settings(run_dir: Path) -> str:
    """The method kwargs of a run that differ from the method's defaults (read from its saved config),
    e.g. "t_mean=-0.4"; "defaults" when none do."""
    from meanflow.methods import METHODS

    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    m = cfg["method"]
    kwargs = m.get("kwargs", {k: v for k, v in m.items() if k != "name"})
    cls = METHODS.get(m["name"])
    defaults = {} if cls is None else {f.name: f.default for f in dataclasses.fields(cls)
                                       if f.default is not dataclasses.MISSING}
    diff = [f"{k}={v}" for k, v in kwargs.items() if k != "num_classes" and defaults.get(k, object()) != v
            and not (isinstance(v, list) and tuple(v) == defaults.get(k))]
    return ", ".join(diff) if diff else "defaults"


# ---------------------------------------------------------------------------------------------------
# part 1: 2-D toys


def toy_part(args) -> None:
    from meanflow.data import build_dataset
    from meanflow.evaluation.toy_metrics import energy_distance, sliced_wasserstein
    from meanflow.sampling import generate
    from meanflow.training.load import load_generator
    from meanflow.training.presets import resolve_config
    from meanflow.utils.images import save_points

    out = Path(args.out) / "toy"
    t_start = time.perf_counter()
    load0, commit0 = load_average(), git_commit()
    n = args.toy_samples
    runs_wanted = with_steps(select_runs(args.methods), args.sample_steps, "toy")
    datasets = [s.strip() for s in args.toy_datasets.split(",") if s.strip()]
    rows, trainings = [], []
    budget = args.toy_steps or resolve_config("toy-2d").training.steps
    for name in datasets:
        base = [f"data.name={name}", f"training.seed={args.seed}", *device_overrides(args)]
        if args.toy_points:
            base.append(f"data.num_points={args.toy_points}")
        pairs = {"n": args.pairs or args.toy_points or resolve_config("toy-2d").data.num_points,
                 "seed": args.seed, "solver": args.pairs_solver, "threads": args.eval_threads, "batch": 4096,
                 "device": pairs_device(args)}
        runs = train_runs("toy-2d", base, out / name, runs_wanted, args.jobs, args.train_threads, "toy",
                          budget, pairs)
        torch.set_num_threads(args.eval_threads)
        held = build_dataset(name, split="test", n=n, seed=args.seed).x
        floor = build_dataset(name, split="test", n=n, seed=args.seed + 1).x
        rows.append({"dataset": name, "method": "data", "steps": None,
                     "sw": sliced_wasserstein(floor, held), "energy": energy_distance(floor, held)})
        for r in runs_wanted:
            run = Path(runs[r.name]["run_dir"])
            if r.trained_as is None:
                trainings.append({"dataset": name, **training_record(r, runs[r.name])})
            if not r.row:
                continue
            method, net, cfg = load_generator(run)
            method = dataclasses.replace(method, **dict(r.sample_kwargs))
            net = CountCalls(net)
            for k in r.toy_steps:
                t0, net.calls = time.perf_counter(), 0
                x = generate(method, net, 0, n, steps=k, seed=args.seed + 2, batch_size=n, shape=(2,),
                             num_classes=0)
                gen_s = time.perf_counter() - t0
                rows.append({"dataset": name, "method": r.name, "steps": k, "nfe": net.calls,
                             "adaptive": adaptive(r),
                             "sw": sliced_wasserstein(x, held), "energy": energy_distance(x, held),
                             "sample_s": gen_s})
                save_points(x, run / "quality" / f"samples-{r.name}-{k}step.png", reference=held)
                log(f"{name} {r.name} {k} step(s): SW {rows[-1]['sw']:.4f}, energy {rows[-1]['energy']:.4f}")
    result = {"rows": rows, "trainings": trainings, "n": n, "seed": args.seed, "command": command_line(),
              "commit": commit0, "commit_end": git_commit(), "hardware": hardware(), "load_start": load0,
              "load_end": load_average(), "wall_s": time.perf_counter() - t_start, "jobs": args.jobs,
              "train_threads": args.train_threads, "date": datetime.date.today().isoformat(),
              "preset": run_setup(trainings)}
    write_json(out / f"results{section_suffix(args)}.json", result)
    update_section(Path(args.results), "toy" + section_suffix(args), toy_markdown(result))
    log(f"toy table written to {args.results}")


def run_setup(trainings: list[dict]) -> dict:
    """Setup shared by the runs, read from the first run's saved config (not from today's preset)."""
    cfg = json.loads((Path(trainings[0]["run_dir"]) / "config.json").read_text())
    d, n, t = cfg["data"], cfg["network"], cfg["training"]
    return {"preset": cfg.get("preset"), "network": f"{n['name']} {n['kwargs']}", "batch": t["batch_size"],
            "lr": t["lr"], "ema": t["ema_decays"][0] if t["ema_decays"] else None,
            "num_points": d.get("num_points"), "split": d.get("split")}


def commit_text(res: dict) -> str:
    end = res.get("commit_end")
    if end and end != res["commit"]:
        return f"{res['commit']} at start, {end} at the end: other commits landed during the run"
    return res["commit"]


def label(name: str) -> str:
    return LABEL.get(name, name)


def methods_table(trainings: list[dict], per_step: str) -> list[str]:
    """Training table: one line per run (and dataset), with its method settings, its upstream runs
    (teacher, first stage, pairs source) and its steps with and without them."""
    has_ds = any("dataset" in t for t in trainings)
    head = (("| dataset " if has_ds else "") + "| method | settings (beyond the defaults) | steps "
            "| steps with upstream runs | wall time | s/step (median of logged intervals) |")
    lines = [head, "|---" * (7 if has_ds else 6) + "|"]
    for t in trainings:
        sps = "-" if t["sec_per_step"] is None else (f"{t['sec_per_step'] * 1000:.1f} ms" if per_step == "ms"
                                                     else f"{t['sec_per_step']:.3f} s")
        ups = t.get("upstream") or ([t["teacher"]] if t.get("teacher") else [])
        after = f" (after: {', '.join(label(u) for u in ups)})" if ups else ""
        ds = f"| {t['dataset']} " if has_ds else ""
        total = t.get("total_steps") or t["steps"]
        lines.append(f"{ds}| {label(t['method'])}{after} | {t.get('settings', '-')} | {t['steps']} | {total} "
                     f"| {fmt_s(t['train_wall_s'])} | {sps} |")
    return lines


def steps_text(r: dict) -> str:
    """"k" for a k-step row, "k (NFE)" where the sampler's NFE differs from its steps."""
    if r["steps"] is None:
        return "-"
    nfe = r.get("nfe")
    if r.get("adaptive"):
        return f"adaptive ({nfe:g})"
    return str(r["steps"]) if nfe is None or round(nfe) == r["steps"] else f"{r['steps']} ({nfe:g})"


def trained_elsewhere(trainings: list[dict]) -> list[str]:
    """A line naming the GPU(s) the runs trained on (in float32, copied back with `--train-only`), if any;
    their wall times are that device's."""
    gpus = sorted({t.get("device", "cpu") for t in trainings} - {"cpu"})
    if not gpus:
        return []
    return [f"Training ran on {', '.join(gpus)} (float32, `--device cuda --train-only`, the run folders "
            "then evaluated here): the wall times and s/step of the training table are that GPU's.", ""]


def toy_markdown(res: dict) -> str:
    p = res["preset"]
    lines = [
        "## 2-D toy distributions: distance to held-out data",
        "",
        f"Command: `{res['command']}` (git {commit_text(res)}, {res['date']}).  ",
        f"Hardware: {res['hardware']}; training {res['jobs']} run(s) at a time, "
        f"{res['train_threads']} thread(s) each; load average at start {res['load_start']} "
        f"(1/5/15 min; the machine was shared). Total wall time {fmt_s(res['wall_s'])}.",
        "",
        f"Every method: preset `toy-2d`, network {p['network']}, batch {p['batch']}, Adam lr {p['lr']}, "
        f"the optimizer steps of the training table (the same total for every row of a dataset) on "
        f"{p['num_points']:,} training points, seed {res['seed']}, samples "
        f"from the EMA {p['ema']} weights; each method's own hyper-parameters are its defaults "
        "(`meanflow methods`) except the settings listed in the training table. Distances between "
        f"{res['n']:,} samples and {res['n']:,} held-out points (the dataset's `test` draw): sliced "
        "Wasserstein-2 (256 fixed directions) and energy distance. The `data` row is a second fresh draw "
        "of the distribution against the same held-out points: the noise floor at this sample size.",
        "",
        "| dataset | sampler | steps (NFE) | sliced W2 | energy distance |",
        "|---|---|---:|---:|---:|",
    ]
    for r in res["rows"]:
        name = "data (noise floor)" if r["method"] == "data" else label(r["method"])
        lines.append(f"| {r['dataset']} | {name} | {steps_text(r)} | {r['sw']:.4f} | {r['energy']:.4f} |")
    lines += ["", "Training (the same total steps for every row of a dataset, upstream stages counted):", "",
              *methods_table(res["trainings"], "ms"), "", comparison(res["rows"], "sw", "sliced W2")]
    return "\n".join(lines) + "\n"


def comparison(rows: list[dict], key: str, what: str) -> str:
    """One sentence per dataset: MeanFlow at 1 step against every other method at 1 step and at its
    best step count."""
    out = []
    for ds in dict.fromkeys(r.get("dataset", "MNIST") for r in rows):
        get = {(r["method"], r["steps"]): r[key] for r in rows
               if r.get("dataset", "MNIST") == ds and r.get(key) is not None and r["method"] != "data"}
        if ("meanflow", 1) not in get:
            continue
        mf1 = get[("meanflow", 1)]
        parts = []
        for m in dict.fromkeys(m for m, _ in get):
            if m == "meanflow":
                continue
            txt = label(m)
            if (m, 1) in get:
                txt += f" 1 step {get[(m, 1)]:.4g} ({get[(m, 1)] / mf1:.2f}x MeanFlow's)"
            best = min((s for mm, s in get if mm == m), key=lambda s: get[(m, s)])
            if best != 1:
                txt += f", best {get[(m, best)]:.4g} at {best} steps"
            parts.append(txt)
        out.append(f"{ds}: {what} MeanFlow 1 step {mf1:.4g}; " + "; ".join(parts) + ".")
    return "  \n".join(out)


# ---------------------------------------------------------------------------------------------------
# part 2: MNIST FID


def inception(args):
    from meanflow.evaluation import load_inception

    torch.set_num_threads(args.eval_threads)
    weights = args.inception_weights
    if weights is None and SHARED_INCEPTION.is_file() and not os.environ.get("MEANFLOW_INCEPTION_WEIGHTS"):
        weights = str(SHARED_INCEPTION)
    return load_inception(weights)


def ref_path(args) -> Path:
    if args.ref:
        return Path(args.ref)
    tag = "all" if args.ref_images is None else str(args.ref_images)
    return Path(args.out) / "ref" / f"mnist-{args.ref_split}-{tag}.npz"


def reference_stats(args, model=None):
    """Inception statistics of the MNIST `--ref-split` set (first `--ref-images`), cached.

    Features are computed in chunks of REF_CHUNK images saved as .npy files beside the cache, so an
    interrupted computation resumes; the final .npz is written atomically.
    """
    from meanflow.evaluation import RefStats, dataset_images, extract_features, load_stats, save_stats
    from meanflow.evaluation.fid import feature_statistics

    path = ref_path(args)
    if path.is_file():
        log(f"reference statistics: {path} (cached)")
        return load_stats(path)
    images = dataset_images("mnist", split=args.ref_split, data_dir=args.mnist_dir)
    if args.ref_images is not None:
        images = images[: args.ref_images]
    model = model or inception(args)
    chunks = path.with_name(path.stem + ".chunks")
    chunks.mkdir(parents=True, exist_ok=True)
    feats, t0 = [], time.perf_counter()
    n = len(images)
    log(f"reference statistics of {n} MNIST {args.ref_split} images -> {path}")
    for i in range(0, n, REF_CHUNK):
        f = chunks / f"{i:06d}-{min(i + REF_CHUNK, n):06d}.npy"
        if not f.is_file():
            c0 = time.perf_counter()
            arr = extract_features(images[i: i + REF_CHUNK], model, batch_size=50, progress=False)
            tmp = f.with_name(f".{f.name}.tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, f)
            dt = time.perf_counter() - c0
            done = min(i + REF_CHUNK, n)
            log(f"reference {done}/{n} images ({dt / len(arr):.3f} s/image, "
                f"ETA {fmt_s(dt / len(arr) * (n - done))})")
        feats.append(np.load(f))
    feats = np.concatenate(feats)
    mu, sigma = feature_statistics(feats)
    stats = RefStats(mu, sigma, len(feats), feats.astype(np.float32), tuple(images.shape[1:]),
                     f"mnist {args.ref_split} ({n} images)")
    save_stats(path, stats)
    write_json(path.with_suffix(".json"), {"n": n, "wall_s": time.perf_counter() - t0, "hardware": hardware(),
                                           "load_end": load_average()})
    for f in chunks.iterdir():
        f.unlink()
    chunks.rmdir()
    log(f"reference statistics written: {path} ({fmt_s(time.perf_counter() - t0)})")
    return load_stats(path)


def mnist_steps(args, base: list[str], out: Path) -> int:
    """Optimizer steps of every MNIST run: --steps, or from --minutes of MeanFlow training (the plan
    is saved so that a resumed invocation trains every method to the same step)."""
    plan_path = out / "plan.json"
    plan = read_json(plan_path)
    if plan is not None:
        if args.steps is not None and args.steps != plan["steps"]:
            raise SystemExit(f"{plan_path} fixes {plan['steps']} steps; use another --out for "
                             f"--steps {args.steps}")
        return int(plan["steps"])
    if args.steps is not None:
        write_json(plan_path, {"steps": args.steps, "how": "--steps"})
        return args.steps
    sec = time_meanflow_step(base, args.train_threads)
    steps = max(50, int(args.minutes * 60 / sec) // 50 * 50)
    write_json(plan_path, {"steps": steps, "how": f"--minutes {args.minutes}", "meanflow_sec_per_step": sec,
                           "load": load_average()})
    log(f"MeanFlow step {sec:.3f} s -> {steps} steps for {args.minutes} min")
    return steps


def time_meanflow_step(base: list[str], threads: int, n: int = 20) -> float:
    """Median seconds of a MeanFlow training step (forward, JVP, backward, Adam) on the mnist preset."""
    from meanflow.training.loop import build_parts
    from meanflow.training.presets import resolve_config

    torch.set_num_threads(threads)
    cfg = resolve_config("mnist", overrides=base)
    parts = build_parts(cfg)
    opt = torch.optim.Adam(parts.net.parameters(), lr=cfg.training.lr)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(n + 3):
        idx = torch.randint(0, len(parts.data), (cfg.training.batch_size,), generator=g)
        t0 = time.perf_counter()
        out = parts.method.loss(parts.net, parts.data.x[idx], parts.data.y[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def evaluate_row(args, run: Path, steps: int, ref, model, grid_dir: Path, r: Run) -> dict:
    """FID/KID of `--num-samples` images from `run` at `steps` steps (cached as JSON in the run)."""
    from meanflow.evaluation import evaluate_images
    from meanflow.sampling import generate_uint8
    from meanflow.training.load import load_generator
    from meanflow.utils.images import make_grid, save_png

    n, key = args.num_samples, r.name
    sampler = "" if r.trained_as is None else f"{key}-"
    cache = run / "quality" / f"fid-{sampler}{steps}step-n{n}-seed{args.seed}-{ref_path(args).stem}.json"
    cached = read_json(cache)
    method, net, cfg = load_generator(run)
    method = dataclasses.replace(method, **dict(r.sample_kwargs))
    net = CountCalls(net)
    grid = grid_dir / f"mnist-{key}-{steps}step.png"
    if cached is not None and grid.is_file():
        log(f"{run.name} {steps} step(s): FID {cached['fid']:.2f} (cached)")
        return cached
    torch.set_num_threads(args.eval_threads)
    t0 = time.perf_counter()
    images = generate_uint8(method, net, n, steps=steps, seed=args.seed, batch_size=250)
    gen_s, nfe = time.perf_counter() - t0, net.calls / -(-n // 250)
    # 10 x 10 grid: sample i has class i % 10, so each column is one digit class.
    save_png(make_grid(images[:100], ncol=10), grid)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    res = evaluate_images(images, ref, model, batch_size=50, progress=False,
                          kid_subset_size=min(1000, n), seed=args.seed, fid_method="eigh")
    res.pop("_features")
    row = {"method": key, "steps": steps, "nfe": nfe, "adaptive": adaptive(r), **res, "sample_s": gen_s,
           "inception_s": time.perf_counter() - t0, "run_dir": str(run), "grid": str(grid),
           "ema": cfg.training.ema_decays[0] if cfg.training.ema_decays else None}
    write_json(cache, row)
    log(f"{run.name} {steps} step(s): FID {row['fid']:.2f}, KID {row['kid']:.4f} "
        f"(sampling {gen_s:.1f} s, Inception {row['inception_s']:.0f} s)")
    return row


def mnist_part(args) -> None:
    out = Path(args.out) / "mnist"
    t_start = time.perf_counter()
    load0, commit0 = load_average(), git_commit()
    if args.ref_only:
        reference_stats(args)
        return
    base = ["data.split=train", f"training.seed={args.seed}", *device_overrides(args)]
    if args.mnist_dir:
        base.append(f"data.data_dir={args.mnist_dir}")
    plan = None
    wanted = with_steps(select_runs(args.methods), args.sample_steps, "mnist")
    if args.eval_only:
        from meanflow.training.checkpoint import Checkpoint

        runs = {}
        for r in args.eval_only:
            cfg = Checkpoint(r).config
            key = next((w.name for w in wanted if w.method == cfg["method"]["name"] and w.name not in runs),
                       cfg["method"]["name"])
            runs[key] = {"run_dir": str(r), "teacher": None}
        wanted = [r for r in wanted if r.name in runs]
    else:
        steps = mnist_steps(args, base, out)
        plan = read_json(out / "plan.json")
        log(f"training {', '.join(r.name for r in wanted)}: budget {steps} steps")
        pairs = {"n": args.pairs or 60000, "seed": args.seed, "solver": args.pairs_solver,
                 "threads": args.eval_threads, "batch": 500, "device": pairs_device(args)}
        runs = train_runs("mnist", base, out, wanted, args.jobs, args.train_threads, "mnist", steps, pairs)
        if args.train_only:
            log(f"trained {', '.join(runs[r.name]['run_dir'] for r in wanted)}; --train-only: no rows")
            return
    model = inception(args)
    ref = reference_stats(args, model)
    grid_dir = Path(args.grid_dir)
    rows, trainings = [], []
    for r in wanted:
        run = Path(runs[r.name]["run_dir"])
        if r.trained_as is None:
            trainings.append(training_record(r, runs[r.name]))
        if not r.row:
            continue
        for k in r.mnist_steps:
            rows.append(evaluate_row(args, run, k, ref, model, grid_dir, r))
    result = {"rows": rows, "trainings": trainings, "plan": plan, "n": args.num_samples,
              "ref": {"path": str(ref_path(args)), "n": ref.n, "source": ref.source},
              "command": command_line(), "commit": commit0, "commit_end": git_commit(),
              "hardware": hardware(), "load_start": load0, "load_end": load_average(),
              "wall_s": time.perf_counter() - t_start,
              "jobs": args.jobs, "train_threads": args.train_threads, "eval_threads": args.eval_threads,
              "date": datetime.date.today().isoformat(), "grid_dir": str(grid_dir),
              "preset": run_setup(trainings)}
    write_json(out / f"results{section_suffix(args)}.json", result)
    update_section(Path(args.results), "mnist" + section_suffix(args), mnist_markdown(result))
    log(f"MNIST table written to {args.results}")


def mnist_markdown(res: dict) -> str:
    p, ref = res["preset"], res["ref"]
    steps = {t.get("total_steps") or t["steps"] for t in res["trainings"] if t["method"] == "meanflow"} or {
        t["steps"] for t in res["trainings"]}
    plan = res.get("plan") or {}
    how = plan.get("how", "given run folders (--eval-only)")
    if "meanflow_sec_per_step" in plan:
        how += f" (MeanFlow timed at {plan['meanflow_sec_per_step']:.3f} s/step before training)"
    lines = [
        "## MNIST: FID of class-conditional generation",
        "",
        f"Command: `{res['command']}` (git {commit_text(res)}, {res['date']}).  ",
        f"Hardware: {res['hardware']}; training {res['jobs']} run(s) at a time, {res['train_threads']} "
        f"thread(s) each; Inception on {res['eval_threads']} thread(s); load average at start "
        f"{res['load_start']}. Total wall time of this command {fmt_s(res['wall_s'])}.",
        *trained_elsewhere(res["trainings"]),
        "",
        f"Every method: preset `mnist` trained on the 60,000 training images only (`data.split=train`), "
        f"network {p['network']}, batch {p['batch']}, Adam lr {p['lr']}, "
        f"{', '.join(str(s) for s in sorted(steps))} optimizer steps per row, stages of a chain counted "
        f"(chosen by {how}); samples from the EMA "
        f"{p['ema']} weights, class labels i % 10 (balanced), no guidance at sampling. Each method's own "
        "hyper-parameters are its defaults (`meanflow methods`) except the settings in the training table.",
        "",
        f"FID and KID of {res['n']:,} generated images (uint8, FID Inception-v3 pool3, 28x28 resized to "
        f"299) against the statistics of {ref['source']} (`{Path(ref['path']).name}`). "
        f"**FID from {res['n']:,} samples is biased upward** (the bias falls roughly like 1/N; values at "
        "50k samples are lower): compare rows with each other, not with published FIDs. KID is unbiased "
        "in the number of samples.",
        "",
        "| method | steps (NFE) | FID | KID x 1000 | sampling time | grid |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        kid = "-" if r["kid"] is None else f"{r['kid'] * 1000:.2f} +- {r['kid_std'] * 1000:.2f}"
        grid = Path(r["grid"])
        try:
            link = os.path.relpath(grid, REPO / "docs") if grid.resolve().is_relative_to(REPO) else str(grid)
        except ValueError:
            link = str(grid)
        lines.append(f"| {label(r['method'])} | {steps_text(r)} | {r['fid']:.2f} | {kid} | "
                     f"{r['sample_s']:.1f} s | [{grid.name}]({link}) |")
    lines += ["", "Training:", "", *methods_table(res["trainings"], "s"), "",
              comparison(res["rows"], "fid", "FID")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("toy", "mnist", "all"), default="all")
    p.add_argument("--out", default=str(REPO / "runs" / "quality"), help="cache of runs and statistics")
    p.add_argument("--results", default=str(REPO / "docs" / "results.md"), help="markdown file to update")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="training runs at a time (separate processes; default: 2 on >= 2 cores)")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads per training run")
    p.add_argument("--eval-threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads for sampling and Inception")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(r.name for r in RUNS)} (default: all; a "
                        "teacher's run is added when needed)")
    p.add_argument("--sample-steps", action="append", default=[], metavar="NAME=LIST",
                   help="sampling steps of one method's rows, e.g. flow_matching=1,2,10 (repeatable)")
    g = p.add_argument_group("toy")
    g.add_argument("--toy-datasets", default="checkerboard,8gaussians")
    g.add_argument("--toy-steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    g.add_argument("--toy-points", type=int, default=None, help="training points (default: the preset's)")
    g.add_argument("--toy-samples", type=int, default=4096, help="samples and held-out points per row")
    g = p.add_argument_group("mnist")
    g.add_argument("--minutes", type=float, default=30.0,
                   help="MeanFlow training budget; sets the steps of every method (unless --steps)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps of every method")
    g.add_argument("--num-samples", type=int, default=2000, help="generated images per row")
    g.add_argument("--mnist-dir", default=str(SHARED_MNIST) if SHARED_MNIST.is_dir() else None)
    g.add_argument("--ref-split", default="test")
    g.add_argument("--ref-images", type=int, default=None, help="first N reference images (default: all)")
    g.add_argument("--ref", default=None, help="reference statistics .npz (default: cached under --out)")
    g.add_argument("--ref-only", action="store_true", help="only compute the reference statistics")
    g.add_argument("--eval-only", nargs="+", metavar="RUN_DIR", default=None,
                   help="evaluate these finished runs instead of training")
    g.add_argument("--inception-weights", default=None)
    p.add_argument("--section", default=None,
                   help="write the tables into their own section (markers quality:PART-SECTION) and "
                        "results-SECTION.json, e.g. for a subset of --methods beside an earlier table")
    p.add_argument("--pairs", type=int, default=None,
                   help="reflow pairs per source run (default: the training set size)")
    p.add_argument("--pairs-solver", default="rk45", help="ODE solver of `meanflow reflow-pairs`")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where training and reflow pairs run (default auto: CUDA when available); every "
                        "run trains in float32 (training.precision=fp32) whatever the device, so that "
                        "rows from a GPU and from a CPU follow the same protocol")
    p.add_argument("--train-only", action="store_true",
                   help="train the runs (and their pairs) and stop: no Inception, no rows. Copy the "
                        "--out folder to another machine and run the same command there without it to "
                        "evaluate (finished runs are reused)")
    p.add_argument("--render", action="store_true",
                   help="only rewrite the markdown section(s) of --part from the cached results.json")
    g.add_argument("--grid-dir", default=str(REPO / "docs" / "quality"), help="where the sample grids go")
    return p.parse_args(argv)


def device_overrides(args) -> list[str]:
    """Config overrides of every training run: the device, and float32 on any device."""
    return [f"training.device={args.device}", "training.precision=fp32"]


def pairs_device(args) -> str:
    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return args.device


def render(args) -> None:
    for part, fn in (("toy", toy_markdown), ("mnist", mnist_markdown)):
        res = read_json(Path(args.out) / part / f"results{section_suffix(args)}.json")
        if args.part in (part, "all") and res is not None:
            res["preset"] = run_setup(res["trainings"])
            update_section(Path(args.results), part + section_suffix(args), fn(res))
            log(f"{part} section of {args.results} rewritten from the cached results")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render:
        render(args)
        return
    if args.part in ("toy", "all") and not (args.ref_only or args.eval_only):
        toy_part(args)
    if args.part in ("mnist", "all"):
        mnist_part(args)


if __name__ == "__main__":
    main()
