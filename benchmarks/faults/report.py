"""The fault-injection report: Markdown tables of the trials by phase, per trial, and of sampling."""

from benchmarks.faults.sampling import SampleResult
from benchmarks.faults.settings import CHECKS, PHASES
from benchmarks.faults.trials import TrialResult


def table(rows: list[list[str]], header: list[str]) -> str:
    cols = [header, *rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, rows)])


def phase_table(results: list[TrialResult]) -> str:
    rows = []
    for phase in PHASES + ("total",):
        rs = [r for r in results if phase == "total" or r.phase == phase]
        if not rs and phase != "total":
            continue
        fails = {c: sum(c in r.failures for r in rs) for c in CHECKS}
        rows.append([phase, str(len(rs)), str(sum(r.resumes > 0 and r.fresh == 0 for r in rs)),
                     str(sum(r.fresh > 0 for r in rs)), str(sum(r.spec.second is not None for r in rs)),
                     str(sum(r.ok for r in rs)), str(sum(not r.ok for r in rs)),
                     " ".join(f"{c}x{n}" for c, n in fails.items() if n) or "-"])
    return table(rows, ["phase killed in", "trials", "resumed", "fresh restart", "2nd kill", "pass", "fail",
                        "failed checks"])


def trial_lines(results: list[TrialResult]) -> str:
    rows = []
    for r in results:
        second = f"{r.spec.second} -> {r.second_phase}" if r.spec.second else "-"
        how = f"resume from {r.start_step}" if r.resumes and not r.fresh else f"fresh x{r.fresh}" + (
            f" + resume x{r.resumes}" if r.resumes else "")
        why = "; ".join(f"{c}: {m}" for c, m in r.failures.items()) or "ok"
        rows.append([str(r.spec.index), str(r.spec.first), f"{r.kill_s:.2f}", r.phase, second, how,
                     f"{r.seconds:.1f}", why + (f" [{'; '.join(r.notes)}]" if r.notes else "")])
    return table(rows, ["#", "kill", "at s", "phase", "2nd kill", "continued by", "s", "result"])


def sample_lines(results: list[SampleResult]) -> str:
    rows = [[str(r.index), r.mode, f"{r.kill_s:.2f}", r.state, str(r.temps),
             "; ".join(r.failures) or "ok"] for r in results]
    return table(rows, ["#", "kill", "at s", "left behind", "temps", "result"])
