"""A suite expanded into jobs: one training run (or one re-sampling of another run) per (data set, entry,
variant, seed), with the records it owes and the jobs it waits for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.suite.spec import BY_NAME, DEFAULT, Entry, Suite, Variant

METRICS = {"toy": ("sliced_w2", "energy", "precision", "recall"), "mnist": ("fid", "kid")}


@dataclass(frozen=True)
class Job:
    """One run of a suite.

    Attributes:
        id: ``dataset/entry[@variant]/seed``.
        dataset, entry, variant, seed: what it trains (``variant`` "" is the default).
        overrides: the config overrides of the run (suite base, entry, variant, seed, steps).
        steps: optimizer steps of this run (its share of the budget).
        points: this run's steps at which it is measured (empty for a stage without rows).
        chain_offset: optimizer steps of its upstream stages (added to ``train_steps`` in records).
        upstream: ids of the jobs it waits for, with their role (``teacher``, ``init_from``,
            ``pairs_from``, ``trained_as``).
        run_dir: its run folder (for ``trained_as`` jobs, the other job's).
    """

    id: str
    dataset: str
    entry: str
    variant: str
    seed: int
    overrides: tuple[str, ...]
    steps: int
    points: tuple[int, ...]
    chain_offset: int
    upstream: tuple[tuple[str, str], ...]
    run_dir: str
    makes_pairs: bool = False

    @property
    def trains(self) -> bool:
        return not any(role == "trained_as" for role, _ in self.upstream)


def selected_entries(suite: Suite, names: list[str] | None) -> list[Entry]:
    """The suite's entries (or `names` of them), with their upstream entries, in the order of ENTRIES."""
    wanted = list(suite.entries) if not names else list(names)
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    todo = list(wanted)
    while todo:
        for u in BY_NAME[todo.pop()].upstream:
            if u not in wanted:
                wanted.append(u)
                todo.append(u)
    return [e for e in BY_NAME.values() if e.name in wanted]


def steps_of(entry: Entry, budget: int) -> int:
    return max(1, round(entry.share * budget))


def chain_offset(entry: Entry, budget: int) -> int:
    """Optimizer steps of the stages upstream of `entry` (each counted once; a teacher too)."""
    seen, todo = set(), [u for u in entry.upstream if u != entry.trained_as]
    if entry.trained_as:
        return chain_offset(BY_NAME[entry.trained_as], budget)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += [u for u in BY_NAME[n].upstream]
    return sum(steps_of(BY_NAME[n], budget) for n in seen if BY_NAME[n].trained_as is None)


def _job_id(dataset: str, entry: str, variant: str, seed: int) -> str:
    return f"{dataset}/{entry}{'@' + variant if variant else ''}/seed{seed}"


def expand(suite: Suite, out: Path, *, datasets=None, methods=None, variants=None, seeds=None,
           device: str = "cpu") -> list[Job]:
    """Jobs of `suite` (restricted to the given data sets, entries, variant names and seeds), each
    after its upstream jobs, ordered seed-major so that partial runs give complete seeds first."""
    for what, got, allowed in (("data set", datasets, suite.datasets),
                               ("variant", variants, [v.name for v in suite.variants])):
        bad = [g for g in (got or []) if g not in allowed and not (what == "variant" and g == "")]
        if bad:
            raise ValueError(f"unknown {what}(s) {', '.join(bad)} for suite {suite.name}; "
                             f"choose from {', '.join(a or 'default' for a in allowed)}")
    entries = selected_entries(suite, methods)
    vlist = [v for v in suite.variants if variants is None or v.name in variants]
    if any(v.name for v in vlist) and (variants is None or "" in variants):
        vlist = [DEFAULT, *[v for v in vlist if v.name]]
    jobs: dict[str, Job] = {}
    pair_sources = {e.pairs_from for e in entries if e.pairs_from}
    for seed in (seeds if seeds is not None else suite.seeds):
        for dataset in (datasets or suite.datasets):
            for v in vlist:
                for e in entries:
                    if v.name and e.name not in v.entries:
                        continue
                    _add(jobs, suite, out, dataset, e, v, seed, device, e.name in pair_sources)
    return list(jobs.values())


def _add(jobs: dict, suite: Suite, out: Path, dataset: str, e: Entry, v: Variant, seed: int, device: str,
         makes_pairs: bool) -> str:
    jid = _job_id(dataset, e.name, v.name, seed)
    if jid in jobs:
        return jid
    up = []
    for role in ("teacher", "init_from", "pairs_from", "trained_as"):
        name = getattr(e, role)
        if name is not None:
            uv = v if name in v.entries else DEFAULT
            up.append((role, _add(jobs, suite, out, dataset, BY_NAME[name], uv, seed, device, True)))
    steps = steps_of(e, suite.budget)
    name = f"{e.name}{'@' + v.name if v.name else ''}"
    folder = out / suite.setup / dataset / name / f"budget{suite.budget}"
    run_dir = str(folder / f"seed{seed}")
    if e.trained_as:
        run_dir = jobs[dict(up)["trained_as"]].run_dir
    # A run of the whole budget is measured at the suite's points; a chain's last stage at its own end and,
    # in a suite with several points, at those of them within its own steps (a fine-tuning curve: DMF's
    # 500, 1,000, ... steps after its flow-matching stage, recorded at the chain's total steps).
    points = (suite.eval_points if e.share == 1.0
              else tuple(p for p in suite.eval_points if p < steps) + (steps,))
    if not e.row:
        points = ()
    data = ([f"data.name={dataset}"] if suite.part == "toy" else [])
    # A checkpoint at the end (and at each measured step, where the runner stops the run) unless the
    # suite's base asks for more (MNIST: every 200 steps, so a run cut off by a session's end resumes).
    overrides = (f"training.checkpoint_every={steps}", *suite.base, *data, f"method.name={e.method}",
                 *e.settings(suite.part), *v.overrides, f"training.seed={seed}", f"training.steps={steps}",
                 f"training.device={device}", "training.precision=fp32", "training.keep_last=1000")
    jobs[jid] = Job(jid, dataset, e.name, v.name, seed, overrides, steps, points,
                    chain_offset(e, suite.budget), tuple(up), run_dir, makes_pairs)
    return jid


def owed_keys(suite: Suite, job: Job) -> dict[int, list[tuple]]:
    """Per measured step of `job`, the record keys it owes (see records.KEY)."""
    entry = BY_NAME[job.entry]
    out = {}
    for p in job.points:
        head = (suite.setup, job.dataset, job.entry, job.variant or None, suite.budget, p + job.chain_offset)
        out[p] = [(*head, job.seed, k, m) for k in entry.nfe(suite.part) for m in METRICS[suite.part]]
    return out
