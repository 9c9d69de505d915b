"""``python -m benchmarks.suite``: run a suite (or a slice of it), write the reports, list the suites.

    python -m benchmarks.suite list
    python -m benchmarks.suite run toy                      # the 2-D head-to-head (resumes)
    python -m benchmarks.suite run toy --datasets moons --methods meanflow,ict --seeds 0,1
    python -m benchmarks.suite run ablations --variants ratio0,ratio1 --jobs 2
    python -m benchmarks.suite run mnist --device cuda --train-only --jobs 4 --threads 2   # on a GPU
    python -m benchmarks.suite run mnist                    # then measure the copied runs here
    python -m benchmarks.suite run mnist --measure-only --eval-device cuda   # beside a --train-only one
    python -m benchmarks.suite merge lease/docs/results     # records measured elsewhere, added once
    python -m benchmarks.suite diagnose toy --datasets checkerboard   # k steps vs 1: errors per interval
    python -m benchmarks.suite report                       # docs/results.md, README tables, plots

Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.suite import records
from benchmarks.suite.suites import SUITES


def _names(text: str | None, keep_empty: bool = False) -> list[str] | None:
    """Comma-separated names (empty items dropped, or kept: ``--variants ""`` names the default)."""
    return None if text is None else [s.strip() for s in text.split(",") if keep_empty or s.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the suites, their sizes and result files")
    r = sub.add_parser("run", help="run what is missing of a suite (resumes)")
    r.add_argument("suite", help=f"one of {', '.join(SUITES)}")
    r.add_argument("--datasets", help="comma-separated subset of the suite's data sets")
    r.add_argument("--methods", help="comma-separated subset of its entries (upstream entries are added)")
    r.add_argument("--variants", help="comma-separated subset of its variants ('' or 'default' = default)")
    r.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    r.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    r.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    r.add_argument("--eval-threads", type=int, default=None, help="threads while measuring (MNIST Inception)")
    r.add_argument("--device", default="cpu", help="training device: cpu or cuda (measured on the CPU)")
    r.add_argument("--train-only", action="store_true", help="train (e.g. on a GPU); measure later")
    r.add_argument("--measure-only", action="store_true",
                   help="train nothing: measure the owed steps already trained (may run beside --train-only)")
    r.add_argument("--eval-device", default="cpu", help="where MNIST samples and Inception run: cpu or cuda")
    r.add_argument("--out", default="runs/suite", help="run folders (default runs/suite)")
    r.add_argument("--results", default=None, help="records file (default docs/results/<suite file>)")
    r.add_argument("--dry-run", action="store_true", help="list what would run")
    d = sub.add_parser("diagnose", help="error of MeanFlow's u per sampler interval against the exact flow")
    d.add_argument("suite", help="a 2-D suite whose MeanFlow runs exist under --out")
    d.add_argument("--datasets")
    d.add_argument("--variants")
    d.add_argument("--seeds")
    d.add_argument("--out", default="runs/suite")
    d.add_argument("--results", default=str(records.RESULTS_DIR / "diagnosis.jsonl"))
    m = sub.add_parser("merge", help="append records from other result files whose keys are not here yet")
    m.add_argument("sources", nargs="+", help="*.jsonl files or folders of them (each goes to the file "
                   "of the same name under --results-dir)")
    m.add_argument("--results-dir", default=str(records.RESULTS_DIR))
    rep = sub.add_parser("report", help="regenerate docs/results.md sections, README tables and plots")
    rep.add_argument("--results-dir", default=str(records.RESULTS_DIR))
    rep.add_argument("--markdown", default=str(records.REPO / "docs" / "results.md"))
    rep.add_argument("--readme", default=str(records.REPO / "README.md"))
    rep.add_argument("--plots", default=str(records.REPO / "docs" / "curves"))
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        from benchmarks.suite.jobs import expand

        for s in SUITES.values():
            n = len(expand(s, Path("runs/suite")))
            print(f"{s.name:15s} {n:4d} runs  docs/results/{s.results:20s} {s.description}")
        return 0
    if args.command == "report":
        from benchmarks.suite import report

        report.write_all(Path(args.results_dir), Path(args.markdown), Path(args.readme), Path(args.plots))
        return 0
    if args.command == "merge":
        merged = records.merge([Path(p) for p in args.sources], Path(args.results_dir))
        for name, (new, old) in merged.items():
            print(f"{name}: {new} new record(s), {old} already there")
        return 0
    if args.suite not in SUITES:
        raise ValueError(f"unknown suite {args.suite!r}; choose from {', '.join(SUITES)}")
    if args.command == "run" and (args.jobs < 1 or args.threads < 1):
        raise ValueError("--jobs and --threads must be >= 1")
    devices = (args.device, args.eval_device) if args.command == "run" else ()
    if any(d not in ("cpu", "cuda") for d in devices):
        raise ValueError(f"--device and --eval-device must be cpu or cuda, got {args.device!r}, "
                         f"{args.eval_device!r}")
    suite = SUITES[args.suite]
    if args.command == "diagnose" and suite.part != "toy":
        raise ValueError("diagnose needs a 2-D suite (its reference is the exact flow of the 2-D data)")
    variants = _names(args.variants, keep_empty=True)
    if variants is not None:
        variants = ["" if v == "default" else v for v in variants]
    try:
        seeds = None if args.seeds is None else [int(s) for s in _names(args.seeds)]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    if args.command == "diagnose":
        from benchmarks.suite.diagnose import diagnose

        out = Path(args.out)
        diagnose(suite, Path(args.results), out / "diagnosis", out, datasets=_names(args.datasets),
                 variants=variants, seeds=seeds)
        return 0
    results = Path(args.results) if args.results else records.RESULTS_DIR / suite.results
    from benchmarks.suite.runner import run_suite

    summary = run_suite(suite, out=Path(args.out), results=results, datasets=_names(args.datasets),
                        methods=_names(args.methods), variants=variants, seeds=seeds, jobs=args.jobs,
                        threads=args.threads, device=args.device, train_only=args.train_only,
                        dry_run=args.dry_run, eval_threads=args.eval_threads, eval_device=args.eval_device,
                        measure_only=args.measure_only)
    return 1 if summary.get("failed") else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"python -m benchmarks.suite: error: {e}", file=sys.stderr)
        sys.exit(2)
