"""A lent GPU's minutes, prepared: train the MNIST suites there, measure them there, bring the records home.

A lease (the ``device`` tool) gives one GPU machine for ~15 minutes in all; each call carries at most
64 MiB of files and the machine stays warm ~30 s between calls. The FID Inception weights (96 MB) do not
fit one call, so ``prepare`` compresses them (xz, ~80 MB: the pool3-only file's classifier is NaN) and
splits them in two; each of the two calls carries one half:

    python -m benchmarks.lease prepare        # here: .lease/a (MNIST, half 1, commit) and .lease/b (half 2)
    run(command="python3 -m benchmarks.lease start", carry=[".lease/a"], timeout_s=240)
    run(command="python3 -m benchmarks.lease finish --budget 450", carry=[".lease/b"], timeout_s=590)
    python -m benchmarks.lease collect /work/.device/<files_at>   # here: merge records, place runs
    python -m benchmarks.suite run mnist --measure-only --out runs/lease   # what came back unmeasured
    python -m benchmarks.suite report

A rehearsal on a CPU machine (a copy of the checkout, ``$OUT`` set): ``start --device cpu --suites smoke``,
then ``finish``.

``start`` (call 1) stashes its half under ``/tmp/meanflow-lease`` (with ``--step-cost-s``, times the
step costs on the GPU first), then starts ``--train-only`` runners of the MNIST suites
(``ORDER``) on the GPU in a new process session, which outlives the call while the machine is warm.
``finish`` (call 2) joins the weights (sha256 checked), runs ``--measure-only --eval-device cuda``
passes beside the training until it is done or ``--budget`` seconds have passed, stops the training
(a run cut off keeps only the checkpoints of the steps it reached, as a suite run writes no others), and
writes to ``$OUT``: ``lease-records.tar.gz`` (the records files, the
grids, the logs) and ``lease-runs-<i>.tar`` (runs whose owed steps were trained but not measured, and
the newest checkpoint of unfinished runs, as room allows). Records carry the commit ``prepare`` read,
the GPU as ``device`` and ``train_device``.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEASE = REPO / ".lease"
STASH = Path("/tmp/meanflow-lease")
RUNS = REPO / "runs" / "lease"
RESULTS = REPO / "docs" / "results"
ORDER = ("mnist", "mnist-curves", "mnist-guidance")  # trained and measured in this order
CARRY_LIMIT = 64 * 2**20
# What comes back from a call: at most 8 files, 16 MiB each, 64 MiB together. The records archive is
# ~1 MiB; the runs go in at most MAX_PARTS archives of PART_LIMIT bytes of files (plus tar headers).
PART_LIMIT = 14 * 2**20
MAX_PARTS = 4


def log(msg: str) -> None:
    print(f"[lease {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha256(path: Path) -> str:
    from meanflow.data.pairs import sha256_file

    return sha256_file(path)


def tree_bytes() -> int:
    """Bytes of the files a device call sends besides what it carries (tracked + untracked, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return sum((REPO / p).stat().st_size for p in out.decode().split("\0") if p and (REPO / p).is_file())


def prepare(weights: Path, mnist: Path) -> None:
    """Here: ``.lease/a`` = MNIST files, the first half of the xz-compressed weights, their sha256 and
    the commit; ``.lease/b`` = the second half. Refuses when a call would exceed the carry limit."""
    from benchmarks.suite import records

    if not weights.is_file() or not (mnist / "t10k-images-idx3-ubyte.gz").is_file():
        raise ValueError(f"need the Inception weights ({weights}) and the MNIST files ({mnist})")
    a, b = LEASE / "a", LEASE / "b"
    digest = sha256(weights)
    if (a / "inception.sha256").is_file() and (a / "inception.sha256").read_text().split()[0] == digest:
        log("weights already compressed for this file")
    else:
        shutil.rmtree(LEASE, ignore_errors=True)
        a.mkdir(parents=True), b.mkdir(parents=True)
        log(f"compressing {weights.name} (xz; a few minutes on one core)")
        data = lzma.compress(weights.read_bytes(), preset=6)
        half = len(data) // 2
        (a / "inception.xz.0").write_bytes(data[:half])
        (b / "inception.xz.1").write_bytes(data[half:])
        (a / "inception.sha256").write_text(f"{digest}  {weights.name}\n")
    shutil.copytree(mnist, a / "mnist", dirs_exist_ok=True)
    (a / "COMMIT").write_text(records.git_commit() + "\n")
    tree = tree_bytes()
    for name in ("a", "b"):
        size = tree + sum(p.stat().st_size for p in (LEASE / name).rglob("*") if p.is_file())
        log(f"call carrying .lease/{name}: {size / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f}")
        if size > CARRY_LIMIT:
            raise ValueError(f"a call carrying .lease/{name} would send {size / 2**20:.1f} MiB (limit 64)")


def _env() -> dict:
    """The environment of the suite commands there: the checkout importable, MNIST and the weights found
    in the stash, the commit the tree was copied from."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PYTHONUNBUFFERED": "1",
           "MEANFLOW_CACHE": str(STASH / "cache"), "MEANFLOW_INCEPTION_WEIGHTS": str(STASH / "inception.pth")}
    if (STASH / "COMMIT").is_file():
        env["MEANFLOW_SUITE_COMMIT"] = (STASH / "COMMIT").read_text().strip()
    return env


def _suite(name: str, *args: str) -> list[str]:
    from benchmarks.suite.suites import SUITES

    return [sys.executable, "-m", "benchmarks.suite", "run", name, *args, "--out", str(RUNS),
            "--results", str(RESULTS / SUITES[name].results)]


def start(jobs: int, step_cost_s: int, out: Path, device: str = "cuda", suites=ORDER) -> None:
    """Call 1, there: stash the carried half, time the GPU step costs, start the training runners
    (`device` and `suites` are for tests of the plumbing on a CPU)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device here: `start` runs on the lent GPU machine")
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    log(f"torch {torch.__version__}, {gpu}, python {sys.version.split()[0]}")
    src = LEASE / "a"
    if not (src / "inception.xz.0").is_file():
        raise ValueError("no .lease/a here: run `prepare` first and pass carry=['.lease/a']")
    (STASH / "cache").mkdir(parents=True, exist_ok=True)
    for f in ("inception.xz.0", "inception.sha256", "COMMIT"):
        shutil.copy2(src / f, STASH / f)
    shutil.copytree(src / "mnist", STASH / "cache" / "mnist", dirs_exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if step_cost_s > 0:
        cost = [sys.executable, "benchmarks/step_cost.py", "--device", device, "--batch", "64",
                "--iters", "20"]
        with open(out / "step_cost.txt", "w") as f:
            try:
                subprocess.run(cost, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                               timeout=step_cost_s)
            except subprocess.TimeoutExpired:
                f.write(f"\n(stopped after {step_cost_s} s)\n")
        print((out / "step_cost.txt").read_text()[-4000:])
    (STASH / "plan.json").write_text(json.dumps({"device": device, "suites": list(suites)}))
    queue = "; ".join(shlex.join(_suite(s, "--device", device, "--train-only", "--jobs", str(jobs)))
                      for s in suites)
    with open(STASH / "train.log", "w") as f:
        # a new process session: it outlives this call while the machine is warm
        proc = subprocess.Popen(["bash", "-c", queue], cwd=REPO, env=_env(), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (STASH / "trainer.pid").write_text(str(proc.pid))
    log(f"training started (pid {proc.pid}, {jobs} runs at a time): {', '.join(suites)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                          text=True).stdout.strip()[:1] not in ("Z", "")


def join_weights() -> Path:
    """The Inception weights from the stashed and the carried half, sha256 checked."""
    target = STASH / "inception.pth"
    half = LEASE / "b" / "inception.xz.1"
    if not (STASH / "inception.xz.0").is_file() or not half.is_file():
        raise ValueError("missing a half of the weights: run `start` (carry .lease/a), then `finish` "
                         "(carry .lease/b) while the machine is warm")
    data = (STASH / "inception.xz.0").read_bytes() + half.read_bytes()
    tmp = target.with_suffix(".tmp")
    try:
        tmp.write_bytes(lzma.decompress(data))
    except lzma.LZMAError as e:
        raise ValueError(f"the joined Inception weights are corrupt ({e})") from None
    want = (STASH / "inception.sha256").read_text().split()[0]
    if sha256(tmp) != want:
        raise ValueError("the joined Inception weights do not match their sha256")
    os.replace(tmp, target)
    return target


def finish(budget: float, jobs: int, out: Path) -> None:
    """Call 2, there: measure beside the training until it ends or `budget` s pass; then stop the
    training and pack, also when the weights or a measurement failed (the trained runs still come back)."""
    t0 = time.monotonic()
    pid = int((STASH / "trainer.pid").read_text()) if (STASH / "trainer.pid").is_file() else -1
    plan = json.loads((STASH / "plan.json").read_text()) if (STASH / "plan.json").is_file() else None
    if plan is None:
        raise ValueError("no lease started here: run `start` first (the machine may have been given back)")
    try:
        join_weights()
        log("weights joined and verified")
        _measure_beside(plan, pid, budget - (time.monotonic() - t0), jobs)
    except (ValueError, subprocess.SubprocessError, OSError) as e:
        log(f"measuring stopped: {e}")
    finally:
        if _alive(pid):
            os.killpg(pid, signal.SIGTERM)
            time.sleep(3)
            log("training stopped")
        pack(out, plan["suites"])


def _measure_beside(plan: dict, pid: int, budget: float, jobs: int) -> None:
    """Measure-only passes over `plan`'s suites until training (`pid`) is over and a pass finds nothing
    new, or `budget` seconds have passed."""
    from benchmarks.suite.suites import SUITES

    t0 = time.monotonic()
    with open(STASH / "measure.log", "a") as f:
        if any(SUITES[s].part == "mnist" for s in plan["suites"]):  # once, before parallel measurements
            code = f"from benchmarks.suite import mnist_eval; mnist_eval.reference(device={plan['device']!r})"
            subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), stdout=f,
                           stderr=subprocess.STDOUT, timeout=max(budget - 30, 1), check=True)
            log("reference statistics of the MNIST test set ready")
        measure = ("--measure-only", "--eval-device", plan["device"], "--jobs", str(jobs))
        while True:
            idle = not _alive(pid)
            before = _count_records()
            for s in plan["suites"]:
                left = budget - (time.monotonic() - t0)
                if left < 5:
                    break
                try:
                    subprocess.run(_suite(s, *measure), cwd=REPO, env=_env(), stdout=f,
                                   stderr=subprocess.STDOUT, timeout=left)
                except subprocess.TimeoutExpired:
                    break
            measured = _count_records() - before
            log(f"measure pass: {measured} record(s); training {'done' if idle else 'running'}")
            if (idle and measured == 0) or budget - (time.monotonic() - t0) < 5:
                return
            time.sleep(5 if measured == 0 else 0)


def _count_records() -> int:
    return sum(len(p.read_text().splitlines()) for p in RESULTS.glob("*.jsonl"))


def unmeasured_runs(suites=ORDER) -> list[tuple[Path, list[Path]]]:
    """``(run folder, checkpoints)`` to bring back: for each owed measurement whose checkpoint exists, that
    checkpoint; for each run not trained to its end, its newest checkpoint (to train on elsewhere)."""
    from benchmarks.suite import records
    from benchmarks.suite.jobs import expand
    from benchmarks.suite.runner import plan
    from benchmarks.suite.suites import SUITES
    from benchmarks.suite.train import latest_run
    from meanflow.training.checkpoint import Checkpoint, checkpoint_path, list_checkpoints

    have = {records.key_of(r) for r in records.load([RESULTS])}
    found: dict[Path, set[Path]] = {}
    for name in suites:
        jobs = expand(SUITES[name], RUNS)
        todo = plan(SUITES[name], jobs, have, train_only=False)
        for j in jobs:
            run = latest_run(Path(j.run_dir))
            if run is None or j.id not in todo:
                continue
            ckpts = {checkpoint_path(run, p) for p in todo[j.id] if checkpoint_path(run, p).is_file()}
            if Checkpoint(run).step < j.steps:
                ckpts.add(list_checkpoints(run)[-1])
            if ckpts:
                found.setdefault(run, set()).update(ckpts)
    return [(run, sorted(c)) for run, c in sorted(found.items())]


def pack(out: Path, suites=ORDER) -> None:
    """``$OUT/lease-records.tar.gz`` and up to ``MAX_PARTS`` ``lease-runs-<i>.tar`` of at most
    ``PART_LIMIT`` bytes (runs that do not fit are named in the log and left behind)."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "lease-records.tar.gz", "w:gz") as tar:
        for p in sorted(RESULTS.glob("*.jsonl")):
            tar.add(p, arcname=f"results/{p.name}")
        for p in sorted((REPO / "docs" / "quality" / "suite").glob("mnist-*.png")):
            tar.add(p, arcname=f"grids/{p.name}")
        for p in ("train.log", "measure.log"):
            if (STASH / p).is_file():
                tar.add(STASH / p, arcname=f"logs/{p}")
    parts: list[list[Path]] = []
    sizes: list[int] = []
    for run, ckpts in unmeasured_runs(suites):  # first fit, in suite order
        files = [p for p in run.iterdir() if p.is_file() and p.suffix in (".json", ".yaml", ".jsonl")] + ckpts
        size = sum(p.stat().st_size for p in files)
        slot = next((i for i, used in enumerate(sizes) if used + size <= PART_LIMIT), None)
        if slot is None and len(parts) < MAX_PARTS and size <= PART_LIMIT:
            parts.append([])
            sizes.append(0)
            slot = len(parts) - 1
        if slot is None:
            log(f"no room for {run.relative_to(RUNS)} ({len(ckpts)} checkpoint(s)): left behind")
            continue
        parts[slot] += files
        sizes[slot] += size
    for i, files in enumerate(parts):
        with tarfile.open(out / f"lease-runs-{i}.tar", "w") as tar:
            for p in files:
                tar.add(p, arcname=str(p.relative_to(RUNS)))
    log(f"packed the records and {sum(len(p) for p in parts)} run file(s) in {len(parts)} part(s)")


def collect(path: Path, results_dir: Path, grids: Path, runs: Path) -> None:
    """Here: merge the returned records, add the grids this checkout lacks, unpack the returned runs."""
    import tempfile

    from benchmarks.suite import records

    if not path.is_dir():
        raise ValueError(f"no such folder: {path}")
    found = sorted(path.rglob("lease-records.tar.gz"))
    if not found:
        raise ValueError(f"no lease-records.tar.gz under {path}")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(found[0]) as tar:
            tar.extractall(tmp, filter="data")
        returned = [Path(tmp) / "results"] if (Path(tmp) / "results").is_dir() else []
        for name, (new, old) in records.merge(returned, results_dir).items():
            log(f"{name}: {new} new record(s), {old} already here")
        grids.mkdir(parents=True, exist_ok=True)
        for png in sorted((Path(tmp) / "grids").glob("*.png")):
            if not (grids / png.name).exists():
                shutil.copy2(png, grids / png.name)
    for part in sorted(path.rglob("lease-runs-*.tar")):
        with tarfile.open(part) as tar:
            tar.extractall(runs, filter="data")
        log(f"{part.name} -> {runs}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lease", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="here: the two carried folders under .lease/")
    pr.add_argument("--weights", default=None, help="FID Inception weights (default: the shared copy)")
    pr.add_argument("--mnist", default=None, help="folder of the MNIST .gz files (default: the shared one)")
    st = sub.add_parser("start", help="device call 1: stash, GPU step costs, start training")
    st.add_argument("--jobs", type=int, default=6, help="training runs at a time on the GPU")
    st.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a rehearsal of the plumbing on a CPU machine (with e.g. --suites smoke)")
    st.add_argument("--suites", default=",".join(ORDER), help=f"comma-separated (default {','.join(ORDER)})")
    st.add_argument("--step-cost-s", type=int, default=0,
                    help="seconds for benchmarks/step_cost.py on the GPU first (default 0: skipped; "
                         "the README has H100 step costs)")
    fi = sub.add_parser("finish", help="device call 2: measure beside the training, pack into $OUT")
    fi.add_argument("--budget", type=float, default=450, help="seconds to measure before packing")
    fi.add_argument("--jobs", type=int, default=2, help="measurements at a time")
    co = sub.add_parser("collect", help="here: merge what a lease returned")
    co.add_argument("path", help="the folder the device tool put the files in")
    co.add_argument("--runs", default="runs/lease", help="where returned runs go (default runs/lease)")
    args = p.parse_args(argv)
    if str(REPO / "src") not in sys.path:  # a copy of the checkout where meanflow is not installed
        sys.path.insert(1, str(REPO / "src"))
    out = Path(os.environ.get("OUT") or RUNS / "out")
    if args.command == "prepare":
        from benchmarks.suite.mnist_eval import INCEPTION, SHARED

        prepare(Path(args.weights) if args.weights else INCEPTION,
                Path(args.mnist) if args.mnist else SHARED / "mnist")
    elif args.command == "start":
        from benchmarks.suite.suites import SUITES

        suites = tuple(x for x in args.suites.split(",") if x)
        unknown = [x for x in suites if x not in SUITES]
        if unknown or not suites:
            raise ValueError(f"unknown suite(s) {', '.join(unknown) or '(none)'}; "
                             f"choose from {', '.join(SUITES)}")
        start(args.jobs, args.step_cost_s, out, device=args.device, suites=suites)
    elif args.command == "finish":
        finish(args.budget, args.jobs, out)
    else:
        from benchmarks.suite import records
        from benchmarks.suite.mnist_eval import GRIDS

        try:
            collect(Path(args.path), records.RESULTS_DIR, GRIDS, REPO / args.runs)
        except tarfile.TarError as e:
            first = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
            raise ValueError(f"a returned archive is damaged ({first})") from None
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"python -m benchmarks.lease: error: {e}", file=sys.stderr)
        sys.exit(2)
