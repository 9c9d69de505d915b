"""What a finished run must satisfy: bitwise the reference's final checkpoint, its log records once
each, no temp file left (see the checks in benchmarks/fault_injection.py's docstring)."""

from pathlib import Path

import torch

from benchmarks.faults.reference import Reference
from benchmarks.faults.run_files import checkpoints, ckpt_temps, is_eval, load_checkpoint, read_log, run_temps


def check_run(run_dir: Path | None, ref: Reference) -> dict[str, str]:
    """{check: why it failed} of a finished run against the reference (empty: all passed)."""
    fail: dict[str, str] = {}
    if run_dir is None:
        return {"final": "no run folder"}
    ck = checkpoints(run_dir)
    newest = max(ck, default=None)
    if newest != ref.total:
        fail["final"] = f"newest checkpoint is at step {newest}, not {ref.total}"
    if newest is not None:
        try:
            tensors, state = load_checkpoint(ck[newest])
        except Exception as e:  # a torn file under a final name is a failure, whatever the error
            fail["weights"] = f"checkpoint {ck[newest].name} unreadable: {type(e).__name__}: {e}"
        else:
            why = []
            if set(tensors) != set(ref.tensors):
                why.append(f"tensor names differ ({len(set(tensors) ^ set(ref.tensors))})")
            want = ref.tensors
            diff = [k for k in sorted(set(tensors) & set(want))
                    if tensors[k].dtype != want[k].dtype or not torch.equal(tensors[k], want[k])]
            if diff:
                why.append(f"{len(diff)} tensors differ (e.g. {diff[0]})")
            for key in ("step", "sampler"):
                if state.get(key) != ref.state.get(key):
                    why.append(f"state.{key} differs")
            if why:
                fail["weights"] = "; ".join(why)
    recs, bad = read_log(run_dir)
    steps = [r.get("step") for r in recs if not is_eval(r)]
    ref_recs = [r for r in ref.log if not is_eval(r)]
    why = []
    if bad:
        why.append(f"{bad} unreadable lines")
    dups = len(steps) - len(set(steps))
    if dups or any(b <= a for a, b in zip(steps, steps[1:])):
        why.append(f"steps not strictly increasing ({dups} duplicates)")
    if steps != [r["step"] for r in ref_recs]:
        why.append(f"steps differ from the reference's ({len(steps)} records vs {len(ref_recs)})")
    elif (n := sum(_strip(a) != _strip(b) for a, b in zip(recs_train(recs), ref_recs))):
        why.append(f"{n} records differ in value from the reference's")
    if why:
        fail["log"] = "; ".join(why)
    if t := ckpt_temps(run_dir):
        fail["tmp-ckpt"] = f"{len(t)} left in checkpoints/: {', '.join(t[:3])}"
    if t := run_temps(run_dir):
        fail["tmp-run"] = f"{len(t)} left in the run folder: {', '.join(t[:3])}"
    return fail


def recs_train(recs: list[dict]) -> list[dict]:
    return [r for r in recs if not is_eval(r)]


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "sec_per_step"}
